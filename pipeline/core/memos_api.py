"""The MemOS wire contract: what we send to MemOS, and the limits we check it against.

Every field we send, every documented limit, every error code we handle and the vendored
official OpenAPI documents live here, so the chunker, the loader, the dry run and the local
server agree by construction:
- ids: at most `MAX_ID_CHARS`; longer ones become a deterministic short form (`api_id`);
- `chat_time`: ISO 8601 in UTC with a `Z` (`chat_time`);
- group chats: `user_id` as a list of at most `MAX_GROUP_IDS` participants, each message's
  speaker in `role_id` / `role_name` (`group_participants`);
- the cloud request body: a batch's body plus the load-time fields (`request_body`);
- the self-hosted server's body for `POST /product/add` (`server_request_body`), checked
  against `SERVER_ADD_SCHEMA`;
- the documented limits of MemOS Cloud (newest limits page) and of older plans, and the body
  codes of its error table;
- the newest spec (`pipeline/spec/memos-openapi-2026.json`), the documented extensions we
  add to it (`EXTENSIONS`), and validators of the resulting request schemas. The older
  document (`memos-openapi.json`) stays vendored for comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import orjson

from pipeline.core.models import excerpt, stable_id

if TYPE_CHECKING:  # imported where validators are built: commands that send nothing skip it
    from jsonschema import Draft202012Validator

MAX_ID_CHARS = 100
"""`user_id` / `conversation_id` length the API accepts (codes 40010 / 40011 beyond it)."""

SHORT_ID_PREFIX = 80
"""Characters of an over-long id kept before its hash in the short form."""

MAX_CALL_TOKENS = 40_000
"""Input tokens one `add/message` call may carry (newest limits page; older accounts were
documented at 4,000, 8,000 and 20,000)."""

TOKENS_PER_MINUTE = 400_000
"""Input tokens per minute per account, shared by all its projects and keys (newest limits
page); beyond it calls fail with code 40309."""

TOKEN_LIMIT_CODE = 40309
"""Business code of an answer refusing a call because the account's tokens per minute are
spent (back-pressure on the token budget, not on requests per second)."""

REQUESTS_PER_SECOND = 50
"""Recommended ceiling of requests per second per account (older plans: 10)."""

GET_MESSAGE_LIMIT = 50
"""Most messages `get/message` returns in one call (the loader's landed-check reads back at
most this many)."""

VISIBLE_ROLES = ("user", "assistant")
"""Roles `get/message` returns; only these can be checked after an uncertain send."""

MAX_GROUP_IDS = 20
"""Most ids `user_id` (or `agent_id`) may list in one group-chat request (group chat page)."""

CLOUD_ADD_PATH = "/add/message"
"""MemOS Cloud's add endpoint (relative to the API base URL)."""

CLOUD_GET_MESSAGE_PATH = "/get/message"
"""MemOS Cloud's read-back of a conversation's newest messages."""

SERVER_ADD_PATH = "/product/add"
"""The self-hosted MemOS server's add endpoint (`server_router.py`, prefix `/product`)."""

SERVER_HEALTH_PATH = "/health"
"""The self-hosted server's health check (`GET`, no auth): its cheapest request, used as the
preflight probe since the server has no `get/message` to ask."""

SERVER_OK_CODE = 200
"""Body `code` of a successful self-hosted answer (`BaseResponse.code`), with HTTP 200."""

SERVER_ASYNC_MODES = ("async", "sync")
"""`async_mode` values of the self-hosted `APIADDRequest` (a string, not a boolean)."""

SERVER_ADD_MODES = ("fast", "fine")
"""`mode` values of `APIADDRequest`; honoured only with `async_mode: sync`."""

SERVER_NAMED_ROLES = ("user", "system")
"""Roles whose messages carry a participant `name` in the self-hosted server's types."""

UNKNOWN_TOOL_CALL = "unknown"
"""`tool_call_id` given to a tool message that has none (the server requires one)."""

DEFAULT_SESSION = "default_session"
"""Where the self-hosted server files messages sent without a `session_id`."""

# Body codes of the cloud's error table (error codes page and add_message page).
CODES_OK = frozenset({0})
CODES_RATE_LIMITED = frozenset({40300, 40309})
"""40300: QPS ceiling; 40309: input tokens over the per-window limit ("lower concurrency")."""
CODES_TRANSIENT = frozenset({50000, 50002, 50004, 50143, 50144})
CODES_TOO_LARGE = frozenset({40305, 40013})
"""40305: input over the token limit; 40013: the `messages` list is too long (split)."""
CODES_AUTH = frozenset({40100, 40130, 40132})
CODES_QUOTA = frozenset({40304})

SPEC_RESOURCE = "spec/memos-openapi-2026.json"
"""The newest vendored official OpenAPI document, inside the `pipeline` package."""

OLDER_SPEC_RESOURCE = "spec/memos-openapi.json"
"""The previous official document, kept for comparison (it said 8k tokens per call)."""

GROUP_CHAT_PAGE = "https://memos-docs.openmem.net/memos_cloud/features/group_chat"
"""MemOS Cloud docs, Group Chat: `user_id`/`agent_id` lists of up to 20 ids, `role_id` and
`role_name` per message, and a QPS charge multiplied by the number of ids."""

LIMITS_PAGE = "https://memos-docs.openmem.net/memos_cloud/limit"
"""MemOS Cloud docs, Quotas and Limits: 40,000 input tokens per call, 400,000 per minute."""


def api_id(value: str) -> str:
    """`value` if it fits the API's 100 characters, else a deterministic short form."""
    if len(value) <= MAX_ID_CHARS:
        return value
    return f"{value[:SHORT_ID_PREFIX]}~{stable_id(value, length=16)}"


def chat_time(ts: datetime | None) -> str | None:
    """ISO 8601 UTC text for the API's `chat_time` (None when the time is unknown)."""
    if ts is None:
        return None
    ts = ts.astimezone(timezone.utc)
    spec = "microseconds" if ts.microsecond else "seconds"
    return ts.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def group_participants(speakers: Iterable[str]) -> tuple[list[str], int]:
    """The `user_id` list of a group chat and how many speakers it leaves out.

    `speakers` are the speaker ids of a conversation's messages, in order. The list holds
    the `MAX_GROUP_IDS` most active speakers, most messages first, ties broken by who spoke
    first, so the same messages always give the same list. Speakers left out still keep
    their `role_name` on each message (see docs/memos-targets.md).
    """
    counts: dict[str, int] = {}
    for speaker in speakers:
        counts[speaker] = counts.get(speaker, 0) + 1
    order = {s: i for i, s in enumerate(counts)}
    ranked = sorted(counts, key=lambda s: (-counts[s], order[s]))
    return ranked[:MAX_GROUP_IDS], max(0, len(ranked) - MAX_GROUP_IDS)


def id_count(body: Mapping[str, Any]) -> int:
    """The QPS weight of one request: the number of ids in `user_id` plus extra `agent_id`s.

    The group chat page: "passing 20 IDs applies a x20 factor"; a plain request counts 1.
    """
    users = body.get("user_id")
    agents = body.get("agent_id")
    n = len(users) if isinstance(users, list) else 1
    if isinstance(agents, list) and len(agents) > 1:
        n += len(agents) - 1
    return max(n, 1)


def request_body(
    batch_body: Mapping[str, Any],
    *,
    async_mode: bool,
    agent_id: str | None = None,
    app_id: str | None = None,
) -> dict[str, Any]:
    """The exact `/add/message` body: a batch's body plus the load-time fields, which may
    differ between loads of the same batch file."""
    body = dict(batch_body)
    body["async_mode"] = async_mode
    if agent_id:
        body["agent_id"] = agent_id
    if app_id:
        body["app_id"] = app_id
    return body


ServerAsync = Literal["async", "sync"]
ServerMode = Literal["fast", "fine"]


def server_request_body(
    batch_body: Mapping[str, Any],
    *,
    owner: str,
    cube_ids: Sequence[str] = (),
    async_mode: ServerAsync = "sync",
    mode: ServerMode | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """The self-hosted server's `/product/add` body for a batch (its cloud-shaped body).

    - the conversation goes in `session_id` (the server has no `conversation_id` field and
      silently drops one, filing everything under `default_session`);
    - memories go to `cube_ids`, or to the owner's own cube (the server's fallback);
    - `user_id` is the batch's owner: the server takes one string, so a group chat's
      participant list moves to `info.group_user_ids`, and a speaker's `role_name` becomes
      the `name` of a user or system message (the OpenAI-style participant name; the
      server's assistant and tool messages have no such field and would drop it, and
      `role_id` has no field at all);
    - a tool message gets `tool_call_id` `UNKNOWN_TOOL_CALL` when it has none: the
      server's tool message requires one (without it the whole request is refused);
    - `tags` become `custom_tags`; `info` is kept as is.
    """
    users = batch_body.get("user_id")
    info = dict(batch_body.get("info") or {})
    if isinstance(users, list):
        info["group_user_ids"] = list(users)
    messages = []
    for raw in batch_body["messages"]:
        message = {k: raw[k] for k in ("role", "content", "chat_time", "tool_call_id") if k in raw}
        name = raw.get("role_name")
        if isinstance(name, str) and name and raw.get("role") in SERVER_NAMED_ROLES:
            message["name"] = name
        if raw.get("role") == "tool" and not message.get("tool_call_id"):
            message["tool_call_id"] = UNKNOWN_TOOL_CALL
        messages.append(message)
    body: dict[str, Any] = {
        "user_id": owner,
        "session_id": batch_body["conversation_id"],
        "writable_cube_ids": list(cube_ids) or [owner],
        "async_mode": async_mode,
        "messages": messages,
    }
    if async_mode == "sync" and mode is not None:
        body["mode"] = mode
    if batch_body.get("tags"):
        body["custom_tags"] = list(batch_body["tags"])
    if info:
        body["info"] = info
    if task_id:
        body["task_id"] = task_id
    return body


SERVER_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["user_id", "session_id", "writable_cube_ids", "async_mode", "messages"],
    "properties": {
        "user_id": {"type": "string", "minLength": 1},
        "session_id": {"type": "string", "minLength": 1},
        "writable_cube_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "async_mode": {"enum": list(SERVER_ASYNC_MODES)},
        "mode": {"enum": list(SERVER_ADD_MODES)},
        "task_id": {"type": "string"},
        "custom_tags": {"type": "array", "items": {"type": "string"}},
        "info": {"type": "object"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["user", "assistant", "system", "tool"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array"}]},
                    "chat_time": {"type": "string"},
                    "name": {"type": "string"},
                    "tool_call_id": {"type": "string"},
                },
                "allOf": [
                    {
                        "if": {"properties": {"role": {"const": "tool"}}},
                        "then": {"required": ["tool_call_id"]},
                    },
                    {
                        "if": {"properties": {"role": {"enum": ["assistant", "tool"]}}},
                        "then": {"not": {"required": ["name"]}},
                    },
                ],
            },
        },
    },
}
"""What we send to `/product/add`: the fields of the server's `APIADDRequest`
(`memos/api/product_models.py`) that we use, and nothing else. The server's own model makes
`session_id` optional and ignores unknown fields, so a cloud-shaped body would be accepted
and misfiled; this schema requires `session_id` and forbids every other field, so such a
body fails here first."""


@dataclass(frozen=True)
class Extension:
    """One documented deviation of our request schema from the official OpenAPI document."""

    schema: str
    """Component schema changed (`#/components/schemas/<schema>`)."""
    field: str
    """Property added or widened."""
    definition: dict[str, Any]
    """Its definition in our schema (replacing the official one, if any)."""
    page: str
    """The documentation page that says so."""


_ID_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_GROUP_IDS}

EXTENSIONS: tuple[Extension, ...] = (
    Extension(
        "AddMessageRequest",
        "user_id",
        {"anyOf": [{"type": "string"}, _ID_LIST]},
        GROUP_CHAT_PAGE,
    ),
    Extension(
        "AddMessageRequest",
        "agent_id",
        {"anyOf": [{"type": "string"}, _ID_LIST]},
        GROUP_CHAT_PAGE,
    ),
    Extension("MessageInput", "role_id", {"type": "string"}, GROUP_CHAT_PAGE),
    Extension("MessageInput", "role_name", {"type": "string"}, GROUP_CHAT_PAGE),
)
"""The official document (2026) still types `user_id` as a string and knows no speaker
fields; the group chat page documents id lists of up to 20 and `role_id` / `role_name`.
(The token limit per call is a constant, `MAX_CALL_TOKENS`, pinned to `LIMITS_PAGE`.)"""


@functools.cache
def _spec_bytes(resource: str = SPEC_RESOURCE) -> bytes:
    return (resources.files("pipeline") / resource).read_bytes()


def load_spec(resource: str = SPEC_RESOURCE) -> dict[str, Any]:
    """A vendored MemOS OpenAPI document (a fresh copy the caller may change); the newest
    official one by default."""
    spec: dict[str, Any] = orjson.loads(_spec_bytes(resource))
    return spec


def extended_spec() -> dict[str, Any]:
    """The newest official document plus the documented `EXTENSIONS` (a fresh copy)."""
    spec = load_spec()
    components = spec["components"]["schemas"]
    for ext in EXTENSIONS:
        props = components[ext.schema].setdefault("properties", {})
        props[ext.field] = {**props.get(ext.field, {}), **ext.definition}
        if "anyOf" in ext.definition:
            props[ext.field].pop("type", None)
    return spec


def request_schema(schema_name: str, *, official: bool = False) -> dict[str, Any]:
    """`#/components/schemas/<schema_name>` with its local `$ref`s inlined: of our extended
    schema, or with `official=True` of the plain newest official document.

    The request schemas have no recursive references, so they are inlined once (about
    twice as fast per request as resolving `$ref`s through a registry).
    """
    spec = load_spec() if official else extended_spec()
    components = spec["components"]["schemas"]
    schema: dict[str, Any] = inline_refs(components[schema_name], components)
    return schema


def schema_validator(schema_name: str, *, official: bool = False) -> Draft202012Validator:
    """A jsonschema validator of one request schema (extended unless `official`)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(request_schema(schema_name, official=official))


def server_validator() -> Draft202012Validator:
    """A jsonschema validator of `SERVER_ADD_SCHEMA` (what we send to `/product/add`)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(SERVER_ADD_SCHEMA)


def fast_check(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A compiled yes/no check of an inlined request schema (fastjsonschema: about four times
    faster than jsonschema on a 4 KB addMessage body). The request schemas use only keywords
    that mean the same in draft 7 and 2020-12; any rejection is re-checked by jsonschema."""
    import fastjsonschema

    return fastjsonschema.compile({**schema, "$schema": "http://json-schema.org/draft-07/schema#"})


_VALUE_KEYWORDS = {
    "enum",
    "const",
    "pattern",
    "format",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
}
MAX_SHAPES = 4096
"""Shapes a `RequestValidator` remembers; beyond, it forgets them all (memory stays flat
even when constrained values, such as a self-hosted `session_id`, differ on every body)."""
_COUNT_KEYWORDS = {"minItems", "maxItems"}
_ARRAY_KEYWORDS = {"uniqueItems", "contains", "prefixItems"}


def _constrained_keys(
    schema: Any, found: set[str], counted: set[str], under: str | None = None
) -> bool:
    """Collect property names whose string values (`found`) or list lengths (`counted`) the
    schema constrains.

    Returns False when the schema uses an array keyword that makes validity depend on
    more than each item's shape and the list's length, or a length rule outside a named
    property; then shape caching is not sound.
    """
    if isinstance(schema, list):
        return all(_constrained_keys(s, found, counted, under) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _ARRAY_KEYWORDS & schema.keys() or (_COUNT_KEYWORDS & schema.keys() and under is None):
        return False
    ok = True
    for name, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict) and _mentions(sub, _VALUE_KEYWORDS):
            found.add(name)
        if isinstance(sub, dict) and _mentions(sub, _COUNT_KEYWORDS):
            counted.add(name)
        ok = _constrained_keys(sub, found, counted, name) and ok
    for key, sub in schema.items():
        if key != "properties" and isinstance(sub, (dict, list)):
            ok = _constrained_keys(sub, found, counted, under) and ok
    return ok


def _mentions(schema: Any, keywords: set[str]) -> bool:
    """True when `schema` or its oneOf/anyOf/allOf branches use any of `keywords` directly."""
    if not isinstance(schema, dict):
        return False
    if keywords & schema.keys():
        return True
    return any(
        _mentions(branch, keywords)
        for key in ("oneOf", "anyOf", "allOf")
        for branch in schema.get(key, [])
    )


def inline_refs(schema: Any, components: Mapping[str, Any], depth: int = 0) -> Any:
    """`schema` with local `#/components/schemas/...` refs replaced by their target."""
    if depth > 32:
        raise ValueError("spec $ref nesting too deep")
    if isinstance(schema, list):
        return [inline_refs(s, components, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        return inline_refs(components[ref.rsplit("/", 1)[1]], components, depth + 1)
    return {k: inline_refs(v, components, depth) for k, v in schema.items()}


class RequestValidator:
    """A request schema compiled once (the dry run's check): by default our extended
    `AddMessageRequest`; `SERVER_ADD_SCHEMA` for the self-hosted target.

    Validating a large body with jsonschema costs milliseconds, so results are memoized
    by the body's *shape*: the same structure with every string replaced by a marker,
    except strings under property names the schema constrains by value (`role`, ...), and
    with the length of lists under property names the schema constrains by item count
    (`user_id`). That is exact because the schema has no other array rules (checked when
    the validator is built; otherwise every body is validated in full).
    """

    def __init__(self, schema: Mapping[str, Any] | None = None) -> None:
        from jsonschema.validators import validator_for

        schema = dict(schema) if schema is not None else request_schema("AddMessageRequest")
        cls = validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
        cls.check_schema(schema)
        self._validator = cls(schema)
        self._keys: set[str] = set()
        self._counted: set[str] = set()
        self._cacheable = _constrained_keys(schema, self._keys, self._counted)
        self._cache: dict[Any, bool] = {}

    def _shape(self, value: Any, key: str | None = None) -> Any:
        """A hashable stand-in for `value` that validates exactly when `value` does.

        Dict keys keep their order (a different order only costs one more cache entry);
        a list becomes the set of its items' shapes, as the schema's `items` rules are the
        same for every item.
        """
        kind = type(value)
        if kind is str:
            return ("s", value) if key in self._keys else "s"
        if kind is dict:
            keys = self._keys
            return tuple(
                [
                    (k, (("s", v) if k in keys else "s") if type(v) is str else self._shape(v, k))
                    for k, v in value.items()
                ]
            )
        if kind is list:
            items = frozenset([self._shape(v, key) for v in value])
            return ("l", len(value), items) if key in self._counted else ("l", items)
        if kind is bool:
            return "b"
        if kind is int or kind is float:
            return ("n", value) if key in self._keys else "n"
        return kind.__name__

    def is_valid(self, body: Mapping[str, Any]) -> bool:
        """True when `body` validates against `AddMessageRequest`."""
        if not self._cacheable:
            return bool(self._validator.is_valid(body))
        shape = self._shape(body)
        result = self._cache.get(shape)
        if result is None:
            result = bool(self._validator.is_valid(body))
            if len(self._cache) >= MAX_SHAPES:
                self._cache.clear()
            self._cache[shape] = result
        return result

    def errors(
        self, body: Mapping[str, Any], limit: int = 3, clean: Callable[[str], str] = str
    ) -> list[str]:
        """Up to `limit` one-line schema errors, each with its JSON path; `clean` rewrites
        each message first (the dry run masks content that may be secret)."""
        out = []
        for err in self._validator.iter_errors(body):
            path = "/".join(str(p) for p in err.absolute_path) or "(body)"
            out.append(f"{path}: {excerpt(clean(err.message), 160)}")
            if len(out) >= limit:
                break
        return out
