"""The error policy: how each answer of the MemOS API is handled, in one table.

    kind          HTTP status            API code                         action
    ok            2xx                    0                                batch done
    rate_limited  429                    40300                            retry after Retry-After
                                                                          (or backoff); cut rate
                                         40309 (tokens per minute)        the same; cut the
                                                                          token budget
    transient     5xx, network, timeout  50000 50002 50004 50143 50144    retry: exponential
                                                                          backoff, full jitter
    too_large     413                    40305 40013                      split in two, in order
    auth          401, 403               40100 40130 40132                stop the run at once
    quota         -                      40304                            stop; rest stays pending
    invalid       other 4xx              other 400xx, any unknown code    batch failed;
                                                                          conversation blocked

A known `code` in the body wins over the HTTP status; an unknown non-zero code is never
success. A 2xx answer without a readable code (cut or garbled body) counts as a lost
answer: the loader checks whether the batch landed before resending it.
`error_from_response` and `error_from_exception` are the only places where HTTP answers
and httpx exceptions become `pipeline.core.errors` types.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

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

Kind = Literal["ok", "rate_limited", "transient", "too_large", "auth", "quota", "invalid"]


@dataclass(frozen=True)
class Rule:
    """One row of the error table."""

    kind: Kind
    statuses: frozenset[int]
    codes: frozenset[int]
    action: str


ERROR_TABLE: tuple[Rule, ...] = (
    Rule("ok", frozenset(), frozenset({0}), "batch done"),
    Rule(
        "rate_limited",
        frozenset({429}),
        frozenset({40300, 40309}),
        "retry after Retry-After (or backoff); cut the client rate (40309: the token budget)",
    ),
    Rule(
        "transient",
        frozenset({500, 502, 503, 504}),
        frozenset({50000, 50002, 50004, 50143, 50144}),
        "retry with exponential backoff and full jitter",
    ),
    Rule(
        "too_large",
        frozenset({413}),
        frozenset({40305, 40013}),
        "split the batch in two and send both halves in order",
    ),
    Rule(
        "auth",
        frozenset({401, 403}),
        frozenset({40100, 40130, 40132}),
        "stop the run at once: API key rejected",
    ),
    Rule("quota", frozenset(), frozenset({40304}), "stop cleanly; the rest stays pending"),
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


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***`."""
    if secret:
        text = text.replace(secret, "***")
    return text


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


def _body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def error_from_response(
    response: httpx.Response, *, secret: str | None = None, now: float | None = None
) -> LoadError | None:
    """None when the API confirmed the request (code 0), else the error to handle.

    The error text is the server's own message (key redacted), prefixed with its code.
    """
    body = _body(response)
    raw_code = body.get("code") if body else None
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    data = body.get("data") if body else None
    success = data.get("success") if isinstance(data, dict) else None
    if response.is_success and code == 0 and success is not False:
        return None
    server_text = str(body.get("message", "")) if body else response.text[:200]
    label = f"code {code}" if code is not None else f"HTTP {response.status_code}"
    message = redact(f"{label}: {server_text}".strip().rstrip(":"), secret)
    status = response.status_code
    if response.is_success and code is None:
        # a 2xx whose body is cut or unreadable: the request may well have been stored
        return AmbiguousDeliveryError(f"{message} (unreadable answer)", status=status)
    if response.is_success and code == 0:
        return PermanentLoadError(f"{message} (success=false)", code=code, status=status)
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
