"""Local MemOS-compatible API server: the embedded default target, and our tests' faulty peer.

It speaks the MemOS Cloud API as the vendored OpenAPI spec defines it (`POST /add/message`,
`/get/message`, `/search/memory`, `/get/status`; `{code, data, message}` bodies; errors as
HTTP 200 with a body code; `Authorization: Token <key>`), stores into SQLite
(`pipeline.server.store`) and answers `code: 0` only after the messages are committed.
Faults (latency, rate limits, transient failures, dropped connections, forced answers) come
from `pipeline.server.faults`, all off by default.

Group chats: `user_id` may list up to 20 ids (our extended schema, see
`pipeline.core.memos_api.EXTENSIONS`); the messages are then stored once for each listed
user, as MemOS writes the chat into every participant's memory, with each message's
`role_id` / `role_name` kept.

It also emulates the self-hosted MemOS server's `POST /product/add` (see
docs/memos-targets.md): the body must match `SERVER_ADD_SCHEMA` (so a body without
`session_id`, or with a cloud-style `conversation_id`, is refused with HTTP 422 instead of
being silently misfiled), messages are stored under (user_id, session_id), and answers use
that server's envelope: HTTP 200 `{"code": 200, "data": [memories...]}`, errors as HTTP
422/400/500 with the status mirrored in `code`.

Body codes (see docs/local-server.md):

    40000 body is not JSON / not a JSON object     40100 no `Authorization: Token` header
    40002 a required field is missing              40132 wrong token
    40003 a field has the wrong type or value      40300 rate limited (QPS ceiling)
    40010 user_id over 100 characters              40304 quota exhausted (forced only)
    40011 conversation_id over 100 characters      40305 input over the token limit
                                                   (40013 with too_long_code=40013)
                                                   40309 tokens per minute spent (tpm_limit)
    50000 internal error, 50004 unavailable (injected transient failures)

Library use: `with start_server(ServerConfig(db_path=p)) as server: ... server.url ...` runs
uvicorn in a background thread on a free port of 127.0.0.1.

Longer than most modules because every endpoint (MemOS Cloud's and the self-hosted
`/product/add`) shares one request path in `_Api` (auth, limits, faults, validation);
running the server, the store, limits and faults live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastjsonschema
import orjson
from jsonschema.exceptions import ValidationError, best_match
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pipeline.core.errors import ConfigError
from pipeline.core.memos_api import (
    MAX_CALL_TOKENS,
    MAX_ID_CHARS,
    SERVER_ADD_PATH,
    SERVER_HEALTH_PATH,
    SERVER_OK_CODE,
    RequestValidator,
    fast_check,
    schema_validator,
    server_validator,
)
from pipeline.core.tokens import count_tokens
from pipeline.server.faults import Decision, FaultConfig, FaultInjector, ForcedAnswer
from pipeline.server.limits import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    ServerLimits,
    read_body,
)
from pipeline.server.store import NewMessage, Store, Synchronous

__all__ = [
    "FaultConfig",
    "ForcedAnswer",
    "ServerConfig",
    "ServerLimits",
    "ServerStats",
    "create_app",
]

log = logging.getLogger("memos_etl.localapi")

MESSAGE_LIMIT_MAX = 50
MEMORY_LIMIT_MAX = 25
DEFAULT_LIMIT = 6
_NOT_JSON = object()

MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        0: "ok",
        40000: "invalid request body",
        40002: "missing required field",
        40003: "invalid field value",
        40010: f"user_id is longer than {MAX_ID_CHARS} characters",
        40011: f"conversation_id is longer than {MAX_ID_CHARS} characters",
        40100: "missing API key: send the header 'Authorization: Token <key>'",
        40132: "invalid API key",
        40300: "rate limit exceeded, retry later",
        40304: "quota exhausted",
        40305: "input too long",
        40013: "messages too long, split them",
        40309: "too many input tokens this minute",
        50000: "internal server error",
        50004: "service temporarily unavailable, retry later",
    }
)
"""Default message per body code."""

ENDPOINTS: Mapping[str, str] = MappingProxyType(
    {
        "/add/message": "AddMessageRequest",
        "/get/message": "GetMessageRequest",
        "/search/memory": "SearchMemoryRequest",
        "/get/status": "GetStatusRequest",
    }
)
"""Served cloud paths and the spec's request schema for each."""

SERVER_ENDPOINTS = (SERVER_ADD_PATH,)
"""Served paths of the self-hosted server's contract."""

_ADD_PATHS = frozenset({"/add/message", SERVER_ADD_PATH})
"""The paths that add messages: a loader's requests."""


@dataclass(frozen=True)
class ServerConfig:
    """How to run one server. `port=0` picks a free port; `token=None` turns auth off.

    `host` other than a loopback address requires a token. `synchronous` is SQLite's
    setting: NORMAL survives a killed server, FULL also a power loss. `limits` bound what
    one client can cost (body size, header and body time, connections).
    """

    db_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = field(default=None, repr=False)
    max_input_tokens: int = MAX_CALL_TOKENS
    too_long_code: int = 40305
    """Code answered above `max_input_tokens`: 40305 (older docs) or 40013 (newest)."""
    faults: FaultConfig = FaultConfig()
    synchronous: Synchronous = "NORMAL"
    limits: ServerLimits = field(default_factory=ServerLimits)

    def __post_init__(self) -> None:
        if self.token == "":
            raise ConfigError("the server token must not be empty (omit it to turn auth off)")
        if not _is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host} without a token: set "
                "MEMOS_ETL_SERVE_TOKEN (or --token), or bind 127.0.0.1"
            )
        if self.max_input_tokens < 1:
            raise ConfigError("max_input_tokens must be at least 1")
        if self.too_long_code not in (40305, 40013):
            raise ConfigError("too_long_code must be 40305 or 40013")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerStats:
    """Counters since start. `codes` counts every body code answered (0 = success);
    `http_status` every HTTP status sent; dropped connections are in neither."""

    requests: int
    ok: int
    codes: Mapping[int, int]
    http_status: Mapping[int, int]
    rate_limited: int
    token_limited: int
    injected_failures: int
    forced: int
    dropped_before: int
    dropped_after: int
    messages_stored: int
    injected_latency_ms: float
    body_bytes_read: int = 0
    """Request body bytes the app read (an unauthenticated or refused body adds none)."""
    bodies_too_large: int = 0
    body_timeouts: int = 0
    header_timeouts: int = 0
    headers_too_large: int = 0
    connections_refused: int = 0
    add_requests: int = 0
    """Requests to an add endpoint (`/add/message`, `/product/add`): what a loader counts as
    its requests, so `serve`'s totals and the loader's can be compared one to one."""


class Counters:
    """Thread-safe counters: the server thread writes, callers of `.stats` read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n: Counter[str] = Counter()
        self._codes: Counter[int] = Counter()
        self._status: Counter[int] = Counter()
        self._latency_ms = 0.0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._n[name] += n

    def answered(self, http_status: int, code: int) -> None:
        with self._lock:
            self._status[http_status] += 1
            self._codes[code] += 1

    def slept(self, ms: float) -> None:
        with self._lock:
            self._latency_ms += ms

    def snapshot(self) -> ServerStats:
        with self._lock:
            n = self._n
            return ServerStats(
                requests=n["requests"],
                ok=self._codes[0],
                codes=dict(self._codes),
                http_status=dict(self._status),
                rate_limited=n["rate_limited"],
                token_limited=n["token_limited"],
                injected_failures=n["fail"],
                forced=n["forced"],
                dropped_before=n["drop_before"],
                dropped_after=n["drop_after"],
                messages_stored=n["messages_stored"],
                injected_latency_ms=self._latency_ms,
                body_bytes_read=n["body_bytes"],
                bodies_too_large=n["bodies_too_large"],
                body_timeouts=n["body_timeouts"],
                header_timeouts=n["header_timeouts"],
                headers_too_large=n["headers_too_large"],
                connections_refused=n["connections_refused"],
                add_requests=n["add_requests"],
            )


class ApiError(Exception):
    """A request the server answers with an error body code (HTTP 200 unless stated)."""

    def __init__(self, code: int, message: str | None = None, http_status: int = 200) -> None:
        super().__init__(message or MESSAGES.get(code, "error"))
        self.code = code
        self.message = message or MESSAGES.get(code, "error")
        self.http_status = http_status


def _field_path(error: ValidationError, extra: str | None = None) -> str:
    out = ""
    for part in [*error.absolute_path, *([extra] if extra else [])]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _schema_error(error: ValidationError) -> ApiError:
    """Map a jsonschema error to 40002 (missing field) or 40003 (wrong type/value)."""
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next((f for f in error.validator_value if f not in error.instance), "?")
        return ApiError(40002, f"missing required field '{_field_path(error, missing)}'")
    where = _field_path(error)
    if error.validator == "type":
        expected = error.validator_value
        return ApiError(40003, f"field '{where}' must be of type {expected}")
    if error.validator == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return ApiError(40003, f"field '{where}' must be one of: {choices}")
    if error.validator == "oneOf" and where.endswith(".content"):
        return ApiError(40003, f"field '{where}' must be a string or a list of content parts")
    detail = error.message if len(error.message) <= 120 else error.message[:117] + "..."
    return ApiError(40003, f"field '{where}' is invalid: {detail}")


def _check_ids(payload: Mapping[str, Any]) -> None:
    user_ids = payload.get("user_id")
    for user_id in user_ids if isinstance(user_ids, list) else [user_ids]:
        if not isinstance(user_id, str):
            continue
        if not user_id:
            raise ApiError(40003, "field 'user_id' must not be empty")
        if len(user_id) > MAX_ID_CHARS:
            raise ApiError(
                40010,
                f"field 'user_id' is {len(user_id)} characters long, "
                f"over the limit of {MAX_ID_CHARS}",
            )
    conversation_id = payload.get("conversation_id")
    if isinstance(conversation_id, str):
        if not conversation_id:
            raise ApiError(40003, "field 'conversation_id' must not be empty")
        if len(conversation_id) > MAX_ID_CHARS:
            raise ApiError(
                40011,
                f"field 'conversation_id' is {len(conversation_id)} "
                f"characters long, over the limit of {MAX_ID_CHARS}",
            )


def _limit(payload: Mapping[str, Any], name: str, maximum: int) -> int:
    value = payload.get(name, DEFAULT_LIMIT)
    if not 1 <= value <= maximum:
        raise ApiError(40003, f"field '{name}' must be between 1 and {maximum}, got {value}")
    return int(value)


def _content_text(content: str | list[dict[str, Any]]) -> str:
    """Text of a message: the string, or its content parts flattened one per line."""
    if isinstance(content, str):
        return content
    lines = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            lines.append(str(part.get("text", "")))
        elif kind == "image_url":
            lines.append(f"[image] {part.get('image_url', {}).get('url', '')}".rstrip())
        else:
            lines.append(f"[{kind}]")
    return "\n".join(lines)


def _new_message(raw: Mapping[str, Any]) -> NewMessage:
    content = raw["content"]
    extra = {k: raw[k] for k in ("tool_calls", "tool_call_id", "role_id", "role_name") if k in raw}
    if "name" in raw:  # the self-hosted server's participant name
        extra["role_name"] = raw["name"]
    if not isinstance(content, str):
        extra["content"] = content
    return NewMessage(
        role=raw["role"],
        content=_content_text(content),
        chat_time=raw.get("chat_time"),
        extra=orjson.dumps(extra).decode() if extra else None,
    )


def _weight(payload: Any) -> int:
    """Requests a call costs against the QPS limit: one per user id it names."""
    users = payload.get("user_id") if isinstance(payload, dict) else None
    return max(1, len(users)) if isinstance(users, list) else 1


def _memory_key(content: str) -> str:
    first = content.strip().split("\n", 1)[0]
    return first if len(first) <= 60 else first[:59] + "…"


class _Api:
    """Request handling for one server: auth, faults, validation, then the store."""

    def __init__(
        self, config: ServerConfig, store: Store, injector: FaultInjector, counters: Counters
    ) -> None:
        self.config = config
        self.store = store
        self.injector = injector
        self.counters = counters
        self.validators = {path: schema_validator(name) for path, name in ENDPOINTS.items()}
        self.validators[SERVER_ADD_PATH] = server_validator()
        self.fast_checks = {path: fast_check(v.schema) for path, v in self.validators.items()}
        # the add paths carry every message: their bodies are checked once per shape
        self.shape_checks = {
            path: RequestValidator(self.validators[path].schema)
            for path in ("/add/message", SERVER_ADD_PATH)
        }
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "/add/message": self.add_message,
            "/get/message": self.get_message,
            "/search/memory": self.search_memory,
            "/get/status": self.get_status,
            SERVER_ADD_PATH: self.product_add,
        }
        self._token = config.token.encode() if config.token else None

    async def handle(self, request: Request) -> Response:
        """The endpoint of every route: answer, then log one line."""
        started = time.perf_counter()
        path = request.url.path
        self.counters.add("requests")
        if path in _ADD_PATHS:
            self.counters.add("add_requests")
        response = await self._respond(request, path)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s -> %s %.1fms",
                request.method,
                path,
                response.describe,
                (time.perf_counter() - started) * 1000,
            )
        return response

    async def _respond(self, request: Request, path: str) -> _Answer:
        # the token is checked before one byte of the body is read: an unauthenticated
        # client costs no memory whatever it sends (the connection is closed after)
        auth_error = self._check_auth(request.headers.get("authorization"))
        if auth_error is not None:
            return self._error(auth_error, _CLOSE)
        limits = self.config.limits
        try:
            body = await read_body(
                request.receive,
                request.headers.get("content-length"),
                limits,
                lambda n: self.counters.add("body_bytes", n),
            )
        except BodyTooLarge:
            self.counters.add("bodies_too_large")
            message = f"request body over {limits.max_body_bytes} bytes"
            return self._error(ApiError(40305, message, http_status=413), _CLOSE)
        except BodyTimeout:
            self.counters.add("body_timeouts")
            message = f"request body not received within {limits.body_timeout:g} s"
            return self._error(ApiError(40000, message, http_status=408), _CLOSE)
        except ClientGone:
            return self._error(ApiError(40000, "client disconnected"), _CLOSE)
        return await self.answer(path, body)

    async def answer_bytes(self, path: str, authorization: str | None, body: bytes) -> _Answer:
        """The answer to a request whose body is already in memory (the embedded target,
        `pipeline.server.embedded`): the same auth, size limit, faults, validation and store
        as over HTTP, without a socket."""
        self.counters.add("requests")
        auth_error = self._check_auth(authorization)
        if auth_error is not None:
            return self._error(auth_error, _CLOSE)
        limits = self.config.limits
        self.counters.add("body_bytes", len(body))
        if len(body) > limits.max_body_bytes:
            self.counters.add("bodies_too_large")
            message = f"request body over {limits.max_body_bytes} bytes"
            return self._error(ApiError(40305, message, http_status=413), _CLOSE)
        return await self.answer(path, body)

    async def answer(self, path: str, body: bytes) -> _Answer:
        """Faults, validation and the store for one request body of `path`."""
        if path not in self.handlers:
            return self._error(ApiError(40000, f"no such endpoint: {path}", http_status=404))
        payload: Any
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = _NOT_JSON
        server = path in SERVER_ENDPOINTS
        key = "session_id" if server else "conversation_id"
        conversation_id = payload.get(key) if isinstance(payload, dict) else None
        decision = self.injector.decide(
            path,
            conversation_id if isinstance(conversation_id, str) else None,
            weight=_weight(payload),
            tokens=self._input_tokens(path, payload),
        )
        if decision.delay_s > 0:
            self.counters.slept(decision.delay_s * 1000)
            await asyncio.sleep(decision.delay_s)
        if decision.kind in ("answer", "rate_limited", "token_limited", "fail"):
            return self._injected(decision, server=server)
        if decision.kind == "drop_before":
            self.counters.add("drop_before")
            return _Answer.dropped_before()
        try:
            data = self._handle(path, payload)
        except ApiError as exc:
            return self._server_error(exc) if server else self._error(exc)
        except sqlite3.Error as exc:
            # the store failed (disk full, locked, I/O): nothing was committed; say so like
            # the cloud's transient errors so a client retries
            log.error("store error on %s: %s", path, exc)
            error = ApiError(50000, f"store error: {exc}", http_status=500)
            return self._server_error(error) if server else self._error(error)
        ok_code = SERVER_OK_CODE if server else 0
        message = "Memory added successfully" if server else "ok"
        out = orjson.dumps({"code": ok_code, "data": data, "message": message})
        if decision.kind == "drop_after":
            self.counters.add("drop_after")
            return _Answer.dropped_after(out)
        self.counters.answered(200, ok_code)
        return _Answer(out, 200, f"code={ok_code}")

    def _input_tokens(self, path: str, payload: Any) -> int:
        """Input tokens of an add/message call, counted only when a tokens-per-minute limit
        needs them (a malformed body counts 0 and is rejected later by validation)."""
        if self.injector.config.tpm_limit is None or path != "/add/message":
            return 0
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if not isinstance(messages, list):
            return 0
        total = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and all(isinstance(p, dict) for p in content):
                total += count_tokens(_content_text(content))
            elif isinstance(content, str):
                total += count_tokens(content)
        return total

    def _check_auth(self, header: str | None) -> ApiError | None:
        if self._token is None:
            return None
        if not header:
            return ApiError(40100)
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "token" or not hmac.compare_digest(key.strip().encode(), self._token):
            return ApiError(40132)
        return None

    def _injected(self, decision: Decision, *, server: bool = False) -> _Answer:
        name = "forced" if decision.kind == "answer" else decision.kind
        self.counters.add(name)
        headers = {}
        if decision.retry_after is not None:
            headers["retry-after"] = f"{decision.retry_after:g}"
        status = decision.http_status
        if server and status == 200:
            # the self-hosted server speaks HTTP statuses: a forced code that is one is used
            kinds = {"rate_limited": 429, "fail": 503}
            code = decision.code
            status = kinds.get(decision.kind, code if 400 <= code <= 599 else 400)
        error = ApiError(decision.code, decision.message, status)
        if server:
            return self._server_error(error, headers)
        return self._error(error, headers)

    def _error(self, exc: ApiError, headers: Mapping[str, str] | None = None) -> _Answer:
        self.counters.answered(exc.http_status, exc.code)
        body = orjson.dumps({"code": exc.code, "message": exc.message})
        return _Answer(body, exc.http_status, f"code={exc.code}", headers)

    def _server_error(self, exc: ApiError, headers: Mapping[str, str] | None = None) -> _Answer:
        """The self-hosted server's error envelope: a real HTTP status, mirrored in `code`
        (validation 422, bad value 400, anything else 500)."""
        if exc.http_status != 200:
            status = exc.http_status
        elif exc.code in (40002, 40003, 40010, 40011, 40000):
            status = 422
        else:
            status = 400
        self.counters.answered(status, status)
        body = orjson.dumps({"code": status, "message": exc.message, "data": None})
        return _Answer(body, status, f"http={status}", headers)

    def _handle(self, path: str, payload: Any) -> Any:
        if payload is _NOT_JSON:
            raise ApiError(40000, "request body is not valid JSON")
        if not isinstance(payload, dict):
            raise ApiError(40000, "request body must be a JSON object")
        if not self._valid(path, payload):
            # jsonschema is the authority, and names the field precisely
            error = best_match(self.validators[path].iter_errors(payload))
            if error is not None:
                raise _schema_error(error) from None
        _check_ids(payload)
        return self.handlers[path](payload)

    def _valid(self, path: str, payload: dict[str, Any]) -> bool:
        """Whether the body validates: by its shape on the add paths (validating each body in
        full costs more than storing it), else by the compiled check."""
        shapes = self.shape_checks.get(path)
        if shapes is not None:
            return shapes.is_valid(payload)
        try:
            self.fast_checks[path](payload)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def add_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        messages = [_new_message(m) for m in payload["messages"]]
        limit = self.config.max_input_tokens
        # A token covers at least one UTF-8 byte, so under `limit` bytes needs no counting.
        nbytes = sum(len(m.content.encode("utf-8")) for m in messages)
        tokens = sum(count_tokens(m.content) for m in messages) if nbytes > limit else 0
        if tokens > limit:
            raise ApiError(
                self.config.too_long_code,
                f"input too long: {tokens} tokens, over the limit of {limit}",
            )
        users = payload["user_id"]
        agent_id = payload.get("agent_id")
        task_id = self.store.add_messages(
            users if isinstance(users, list) else [users],
            payload["conversation_id"],
            messages,
            tags=payload.get("tags", ()),
            info=payload.get("info"),
            agent_id=",".join(agent_id) if isinstance(agent_id, list) else agent_id,
            app_id=payload.get("app_id"),
        )
        self.counters.add("messages_stored", len(messages))
        return {"success": True, "task_id": task_id, "status": "completed"}

    def product_add(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """`/product/add` of the self-hosted server: stores under (user_id, session_id) and
        answers with one "memory" per message, as the server lists what it produced."""
        messages = [_new_message(m) for m in payload["messages"]]
        info = dict(payload.get("info") or {})
        info["writable_cube_ids"] = payload["writable_cube_ids"]
        task_id = self.store.add_messages(
            [payload["user_id"]],
            payload["session_id"],
            messages,
            tags=payload.get("custom_tags", ()),
            info=info,
            task_id=payload.get("task_id"),
        )
        self.counters.add("messages_stored", len(messages))
        cube = payload["writable_cube_ids"][0]
        return [
            {
                "memory": m.content,
                "memory_id": f"{task_id}-{i}",
                "memory_type": "LongTermMemory",
                "cube_id": cube,
            }
            for i, m in enumerate(messages)
        ]

    def get_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        limit = _limit(payload, "message_limit_number", MESSAGE_LIMIT_MAX)
        rows = self.store.latest_messages(
            payload["user_id"], payload["conversation_id"], limit, roles=("user", "assistant")
        )
        return {
            "message_detail_list": [
                {
                    "role": r["role"],
                    "content": r["content"],
                    "create_time": r["created_at"],
                    "update_time": r["created_at"],
                }
                for r in rows
            ]
        }

    def search_memory(self, payload: dict[str, Any]) -> dict[str, Any]:
        limit = _limit(payload, "memory_limit_number", MEMORY_LIMIT_MAX)
        rows = self.store.search(
            payload["user_id"], payload["query"], limit, payload.get("conversation_id")
        )
        data: dict[str, Any] = {"memory_detail_list": [_memory_detail(r) for r in rows]}
        if payload.get("include_preference", True):
            data["preference_detail_list"] = []
        if payload.get("include_tool_memory", False):
            data["tool_memory_detail_list"] = []
        return data

    def get_status(self, payload: dict[str, Any]) -> dict[str, Any]:
        status = self.store.task_status(payload["task_id"])
        if status is None:
            raise ApiError(40003, f"unknown task_id {payload['task_id'][:100]!r}")
        return {"status": status}


def _memory_detail(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "memory_key": _memory_key(row["content"]),
        "memory_value": row["content"],
        "memory_type": "LongTermMemory",
        "create_time": row["created_at"],
        "update_time": row["created_at"],
        "conversation_id": row["conversation_id"],
        "status": "activated",
        "confidence": 1.0,
        "relativity": round(row["relativity"], 6),
        "tags": row["tags"],
    }


class _Answer(Response):
    """A JSON response; or, when `sent` is set, a deliberately broken one.

    A broken answer declares the full body's Content-Length, sends only its first `sent`
    bytes and returns: the server then closes the connection and the client sees a
    protocol/read error, as when a network drops the answer.
    """

    def __init__(
        self,
        body: bytes,
        status: int,
        describe: str,
        headers: Mapping[str, str] | None = None,
        *,
        sent: int | None = None,
    ) -> None:
        super().__init__(body, status, dict(headers or {}), "application/json")
        self.describe = describe
        self.sent = sent

    @classmethod
    def dropped_before(cls) -> _Answer:
        """Nothing of the body arrives (the request was not handled)."""
        return cls(_DROPPED_PLACEHOLDER, 200, "dropped before storing", sent=0)

    @classmethod
    def dropped_after(cls, body: bytes) -> _Answer:
        """Half of the real success body arrives (the request was handled and committed)."""
        return cls(body, 200, "dropped after storing", sent=len(body) // 2)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.sent is None:
            await super().__call__(scope, receive, send)
            return
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send(start)
        await send(
            {"type": "http.response.body", "body": self.body[: self.sent], "more_body": True}
        )


_CLOSE: Mapping[str, str] = MappingProxyType({"connection": "close"})
"""Header of answers given before the body was read: the connection cannot be reused."""
_DROPPED_PLACEHOLDER = orjson.dumps({"code": 0, "data": {}, "message": "ok"})


INDEX_INTERVAL_S = 0.2
INDEX_BATCH_ROWS = 1000
"""The search index catches up every 0.2 s, at most 1000 messages (~30 ms) at a time."""


async def _index_forever(store: Store) -> None:
    """Keep the search index close behind the committed messages (searches catch up fully)."""
    while True:
        await asyncio.sleep(INDEX_INTERVAL_S)
        try:
            while store.index_pending(INDEX_BATCH_ROWS) == INDEX_BATCH_ROWS:
                await asyncio.sleep(0)  # let requests in between batches
        except sqlite3.Error as exc:
            log.error("search indexing failed (retrying): %s", exc)


def create_app(
    config: ServerConfig, store: Store, injector: FaultInjector, counters: Counters
) -> Starlette:
    """The ASGI app for one server (used by `LocalServer`; exposed for embedding).

    Its lifespan runs the background indexer; the store stays the caller's to close.
    """
    api = _Api(config, store, injector, counters)
    routes = [Route(path, api.handle, methods=["POST"]) for path in (*ENDPOINTS, *SERVER_ENDPOINTS)]

    async def health(request: Request) -> Response:
        # the self-hosted MemOS server's `GET /health`, which memos-server loads probe first
        body = {"status": "healthy", "service": "memos-etl serve"}
        return Response(orjson.dumps(body), media_type="application/json")

    routes.append(Route(SERVER_HEALTH_PATH, health, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        indexer = asyncio.create_task(_index_forever(store))
        try:
            yield
        finally:
            indexer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await indexer

    return Starlette(routes=routes, lifespan=lifespan)
