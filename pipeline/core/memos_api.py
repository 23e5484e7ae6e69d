"""The MemOS wire contract: what we send to `add/message`, and the limits we check it against.

Every field we send, every documented limit and the vendored official OpenAPI document live
here, so the chunker, the loader, the dry run and the local server agree by construction:
- ids: at most `MAX_ID_CHARS`; longer ones become a deterministic short form (`api_id`);
- `chat_time`: ISO 8601 in UTC with a `Z` (`chat_time`);
- the request body: a batch's body plus the load-time fields (`request_body`);
- the documented limits of MemOS Cloud (newest limits page) and of older plans;
- the spec (`pipeline/spec/memos-openapi.json`) and validators of its request schemas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator

from pipeline.core.models import excerpt, stable_id

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

SPEC_RESOURCE = "spec/memos-openapi.json"
"""The vendored official OpenAPI document, inside the `pipeline` package."""


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


def request_body(
    batch_body: Mapping[str, Any],
    *,
    async_mode: bool,
    agent_id: str | None = None,
    app_id: str | None = None,
) -> dict[str, Any]:
    """The exact `/add/message` body: a batch's body (from the chunker) plus the load-time
    fields, which may differ between loads of the same batch file."""
    body = dict(batch_body)
    body["async_mode"] = async_mode
    if agent_id:
        body["agent_id"] = agent_id
    if app_id:
        body["app_id"] = app_id
    return body


@functools.cache
def _spec_bytes() -> bytes:
    return (resources.files("pipeline") / SPEC_RESOURCE).read_bytes()


def load_spec() -> dict[str, Any]:
    """The vendored MemOS OpenAPI document (a fresh copy the caller may change)."""
    spec: dict[str, Any] = orjson.loads(_spec_bytes())
    return spec


def request_schema(schema_name: str) -> dict[str, Any]:
    """`#/components/schemas/<schema_name>` with its local `$ref`s inlined.

    The request schemas have no recursive references, so they are inlined once (about
    twice as fast per request as resolving `$ref`s through a registry).
    """
    components = load_spec()["components"]["schemas"]
    schema: dict[str, Any] = inline_refs(components[schema_name], components)
    return schema


def schema_validator(schema_name: str) -> Draft202012Validator:
    """A jsonschema validator of one request schema of the spec."""
    return Draft202012Validator(request_schema(schema_name))


def fast_check(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A compiled yes/no check of an inlined request schema (fastjsonschema: about four times
    faster than jsonschema on a 4 KB addMessage body). The request schemas use only keywords
    that mean the same in draft 7 and 2020-12; any rejection is re-checked by jsonschema."""
    return fastjsonschema.compile({**schema, "$schema": "http://json-schema.org/draft-07/schema#"})


_VALUE_KEYWORDS = {"enum", "const", "pattern", "format", "minLength", "maxLength"}
_ARRAY_KEYWORDS = {"minItems", "maxItems", "uniqueItems", "contains", "prefixItems"}


def _constrained_keys(schema: Any, found: set[str]) -> bool:
    """Collect property names whose string values the schema constrains.

    Returns False when the schema uses an array keyword that makes validity depend on
    more than each item's shape; then shape caching is not sound.
    """
    if isinstance(schema, list):
        return all(_constrained_keys(s, found) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _ARRAY_KEYWORDS & schema.keys():
        return False
    ok = True
    for name, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict) and _mentions(sub, _VALUE_KEYWORDS):
            found.add(name)
        ok = _constrained_keys(sub, found) and ok
    for key, sub in schema.items():
        if key != "properties" and isinstance(sub, (dict, list)):
            ok = _constrained_keys(sub, found) and ok
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
    """`AddMessageRequest` of the vendored OpenAPI spec, compiled once (the dry run's check).

    Validating a large body with jsonschema costs milliseconds, so results are memoized
    by the body's *shape*: the same structure with every string replaced by a marker,
    except strings under property names the schema constrains by value (`role`, ...).
    That is exact because the schema has no length, pattern or item-count rules (checked
    when the validator is built; otherwise every body is validated in full).
    """

    def __init__(self) -> None:
        from jsonschema.validators import validator_for

        schema = request_schema("AddMessageRequest")
        cls = validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
        cls.check_schema(schema)
        self._validator = cls(schema)
        self._keys: set[str] = set()
        self._cacheable = _constrained_keys(schema, self._keys)
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
            return ("l", frozenset([self._shape(v, key) for v in value]))
        if kind is bool:
            return "b"
        if kind is int or kind is float:
            return "n"
        return kind.__name__

    def is_valid(self, body: Mapping[str, Any]) -> bool:
        """True when `body` validates against `AddMessageRequest`."""
        if not self._cacheable:
            return bool(self._validator.is_valid(body))
        shape = self._shape(body)
        result = self._cache.get(shape)
        if result is None:
            result = bool(self._validator.is_valid(body))
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
