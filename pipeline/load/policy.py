"""The error policy: how each answer of the MemOS API is handled, in one table.

    kind          HTTP status            API code                         action
    ok            2xx                    0                                batch done
    rate_limited  429                    40300 40309                      retry after Retry-After
                                                                          (or backoff); cut rate
                                         40309 (tokens per minute)        the same; cut the
                                                                          token budget
    transient     5xx, network, timeout  50000 50002 50004 50143 50144    retry: exponential
                                                                          backoff, full jitter
    too_large     413                    40305 40013                      split in two, in order
    auth          401, 403               40100 40130 40132                stop the run at once
    quota         -                      40304                            stop; rest stays pending
    invalid       other 4xx (400, 422)   other 400xx, any unknown code    batch failed;
                                                                          conversation blocked

The codes come from the wire contract (`pipeline.core.memos_api.CODES_*`). A known `code`
in the body wins over the HTTP status; an unknown non-zero code is never success. A 2xx
answer without a readable code (cut or garbled body) counts as a lost answer: the loader
checks whether the batch landed before resending it.

The self-hosted MemOS server (`target: memos-server`) answers errors with real HTTP
statuses and mirrors the status in the body's `code` (`{"code": 422, ...}`), and success
as HTTP 200 with `code` 200. For it (`server=True`) the body code is read only to confirm
success; errors are classified by HTTP status alone, by the same table: 422 (validation)
and 400 (`ValueError`) are invalid, 500 is transient, 429 (the rate-limit overlay) is
rate-limited, 401/403 (the API-key overlay) stop the run.
`error_from_response` and `error_from_exception` are the only places where HTTP answers
and httpx exceptions become `pipeline.core.errors` types.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import orjson

from pipeline.core.errors import (
    AuthError,
    LoadError,
    PermanentLoadError,
    QuotaExhaustedError,
    TooLargeError,
    TransientLoadError,
)
from pipeline.core.memos_api import (
    CODES_AUTH,
    CODES_OK,
    CODES_QUOTA,
    CODES_RATE_LIMITED,
    CODES_TOO_LARGE,
    CODES_TRANSIENT,
    SERVER_OK_CODE,
)

Kind = Literal["ok", "rate_limited", "transient", "too_large", "auth", "quota", "invalid"]


@dataclass(frozen=True)
class Rule:
    """One row of the error table."""

    kind: Kind
    statuses: frozenset[int]
    codes: frozenset[int]
    action: str


ERROR_TABLE: tuple[Rule, ...] = (
    Rule("ok", frozenset(), CODES_OK, "batch done"),
    Rule(
        "rate_limited",
        frozenset({429}),
        CODES_RATE_LIMITED,
        "retry after Retry-After (or backoff); cut the client rate (40309: the token budget)",
    ),
    Rule(
        "transient",
        frozenset({500, 502, 503, 504}),
        CODES_TRANSIENT,
        "retry with exponential backoff and full jitter",
    ),
    Rule(
        "too_large",
        frozenset({413}),
        CODES_TOO_LARGE,
        "split the batch in two and send both halves in order",
    ),
    Rule(
        "auth",
        frozenset({401, 403}),
        CODES_AUTH,
        "stop the run at once: API key rejected",
    ),
    Rule("quota", frozenset(), CODES_QUOTA, "stop cleanly; the rest stays pending"),
    Rule("invalid", frozenset(), frozenset(), "mark the batch failed; block its conversation"),
)
_BY_CODE = {code: rule for rule in ERROR_TABLE for code in rule.codes}
_BY_STATUS = {status: rule for rule in ERROR_TABLE for status in rule.statuses}
_RULES = {rule.kind: rule for rule in ERROR_TABLE}


def classify(status: int, code: int | None) -> Rule:
    """The table row for an HTTP status and the body's API code (None: no readable code)."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return _RULES["transient"]
    return _RULES["invalid"]


class AmbiguousDeliveryError(TransientLoadError):
    """The request may have reached the server (lost answer): check before resending."""


REDACT_MIN_PIECE = 8
"""A run of at least this many characters of the key, anywhere in a text, is redacted too:
a proxy or debug page may echo the key cut short or split across lines."""
SERVER_TEXT_CHARS = 200
"""How much of a non-JSON error body is kept (after redaction) for logs and the ledger."""


def redact(text: str, secret: str | None) -> str:
    """`text` with `secret`, and every run of ≥ `REDACT_MIN_PIECE` of its characters, as `***`.

    Callers redact the whole text first and shorten it afterwards: cutting first could
    leave a key prefix that no longer matches the full key.
    """
    if not secret:
        return text
    text = text.replace(secret, "***")
    if len(secret) < REDACT_MIN_PIECE:
        return text
    hidden = bytearray(len(text))
    for start in range(len(secret) - REDACT_MIN_PIECE + 1):
        piece = secret[start : start + REDACT_MIN_PIECE]
        at = text.find(piece)
        while at != -1:
            hidden[at : at + REDACT_MIN_PIECE] = b"\x01" * REDACT_MIN_PIECE
            at = text.find(piece, at + 1)
    if not any(hidden):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append("***")
    return "".join(out)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None if absent.

    A value of 0, a date in the past or an unreadable header gives None, so the caller
    falls back to its normal backoff and never loops hot.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def cap_retry_after(seconds: float, cap: float) -> float:
    """A server-requested wait cut to `cap` (`load.max_retry_after`).

    A huge Retry-After (a day, a date in 2100, a client clock far behind) must not park
    the loader, which holds the workdir lock, for that long: it waits at most `cap`, then
    retries as usual, and the batch fails once its attempts are used up.
    """
    return min(seconds, cap)


class Answer(Protocol):
    """What `error_from_response` reads of an answer: an `httpx.Response`, or the embedded
    server's in-process answer (`pipeline.server.embedded.Answer`, no HTTP parsing)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    @property
    def is_success(self) -> bool: ...


def _body(response: Answer) -> dict[str, Any] | None:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def error_from_response(
    response: Answer,
    *,
    secret: str | None = None,
    now: float | None = None,
    server: bool = False,
) -> LoadError | None:
    """None when the API confirmed the request, else the error to handle.

    Confirmed means code 0 (cloud), or HTTP 2xx with code 200 (`server`: the self-hosted
    MemOS server). The error text is the server's own message (key redacted), prefixed with
    its code.
    """
    body = _body(response)
    raw_code = body.get("code") if body else None
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    data = body.get("data") if body else None
    success = data.get("success") if isinstance(data, dict) else None
    ok_code = SERVER_OK_CODE if server else 0
    if response.is_success and code == ok_code and success is not False:
        return None
    status = response.status_code
    label = f"HTTP {status}" if server or code is None else f"code {code}"
    # redact, then cut: a key straddling the cut must not leave its prefix behind
    raw = _server_text(body) if body else response.text[: SERVER_TEXT_CHARS + 2 * len(secret or "")]
    server_text = redact(raw, secret)[:SERVER_TEXT_CHARS]
    message = f"{label}: {server_text}".strip().rstrip(":")
    if response.is_success and (code is None or (server and code != ok_code)):
        # a 2xx whose body is cut or unreadable: the request may well have been stored
        return AmbiguousDeliveryError(f"{message} (unreadable answer)", status=status)
    if response.is_success and code == ok_code:
        return PermanentLoadError(f"{message} (success=false)", code=code, status=status)
    if server:
        code = None  # the body mirrors the HTTP status; the status decides
    rule = classify(status, code)
    if rule.kind == "rate_limited":
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return TransientLoadError(
            message, code=code, status=status, retry_after=retry_after, rate_limited=True
        )
    if rule.kind == "transient":
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return TransientLoadError(message, code=code, status=status, retry_after=retry_after)
    if rule.kind == "too_large":
        return TooLargeError(message, code=code, status=status)
    if rule.kind == "auth":
        return AuthError(
            f"API key rejected ({message}); check MEMOS_API_KEY", code=code, status=status
        )
    if rule.kind == "quota":
        return QuotaExhaustedError(
            f"quota exhausted ({message}); the rest stays pending: top up and run load again",
            code=code,
            status=status,
        )
    return PermanentLoadError(message, code=code, status=status)


def _server_text(body: dict[str, Any]) -> str:
    """The server's message, with the first validation problem when it sent `detail`."""
    text = str(body.get("message", ""))
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        text = f"{text} ({where}: {first.get('msg', '')})".strip()
    return text


def error_from_exception(exc: httpx.HTTPError, *, secret: str | None = None) -> LoadError:
    """Map an httpx exception to our tree: transient, and ambiguous when it may have landed.

    Connection failures (nothing was sent) are plainly transient; a write/read failure or a
    read timeout may have delivered the request, so the loader checks before resending.
    """
    text = redact(f"{type(exc).__name__}: {exc}".rstrip(": "), secret)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransientLoadError(f"network: {text}")
    if isinstance(exc, httpx.TransportError):
        return AmbiguousDeliveryError(f"network: {text}")
    return PermanentLoadError(f"http: {text}")
