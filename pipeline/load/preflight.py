"""Preflight: one cheap authenticated request before a load, so a wrong host or key is
found in seconds instead of by failing every batch.

`POST /get/message` for a user and conversation that do not exist reads nothing and writes
nothing, yet goes through the service's authentication. The answer is classified with the
loader's own error table (`pipeline.load.policy`):
- no answer (DNS, refused, TLS, timeout) -> `UnreachableError`, exit 3, no batch touched;
- the key rejected (401/403, 40100/40130/40132) -> `AuthError`, exit 6;
- anything else (code 0, a validation error, even a 5xx or a rate limit) -> reachable and
  authenticated: the load's own retry policy deals with what comes next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from pipeline.core.errors import AuthError, LoadError, TransientLoadError, UnreachableError
from pipeline.core.memos_api import CLOUD_GET_MESSAGE_PATH, SERVER_HEALTH_PATH
from pipeline.load.policy import AmbiguousDeliveryError, error_from_exception, error_from_response
from pipeline.load.targets import Endpoint

PROBE_ID = "memos-etl-preflight"
"""user_id and conversation_id of the probe (nothing is stored under them)."""


@dataclass(frozen=True)
class PreflightResult:
    """What the probe found: the URL asked, the round trip, and any non-fatal note."""

    base_url: str
    latency_ms: float
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON form printed by `memos-etl check --json`."""
        return {
            "base_url": self.base_url,
            "reachable": True,
            "key_accepted": True,
            "latency_ms": round(self.latency_ms, 1),
            "note": self.note,
        }


def preflight(
    endpoint: Endpoint,
    *,
    server: bool = False,
    auth_scheme: str = "Token",
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PreflightResult:
    """Ask the destination once; raise `UnreachableError` or `AuthError`, else report.

    A self-hosted MemOS server (`server`) has no `get/message`: its probe is `GET /health`,
    which proves the URL reaches a MemOS server (its stock build has no auth to check).
    """
    if endpoint.in_process is not None and transport is None:
        # the embedded server answers in this process: there is no host or key to check
        return PreflightResult(endpoint.base_url, 0.0)
    headers = {"user-agent": "memos-etl", "content-type": "application/json"}
    if endpoint.api_key:
        headers["authorization"] = f"{auth_scheme} {endpoint.api_key}"
    body = {"user_id": PROBE_ID, "conversation_id": PROBE_ID, "message_limit_number": 1}
    path = SERVER_HEALTH_PATH if server else CLOUD_GET_MESSAGE_PATH
    started = clock()
    try:
        with httpx.Client(
            base_url=endpoint.base_url, headers=headers, timeout=timeout, transport=transport
        ) as client:
            response = client.get(path) if server else client.post(path, content=orjson.dumps(body))
    except httpx.HTTPError as exc:
        reason = error_from_exception(exc, secret=endpoint.api_key)
        raise UnreachableError(
            f"cannot reach {endpoint.base_url}: {reason}; check the URL "
            "(--base-url, load.base_url or MEMOS_BASE_URL) and the network"
        ) from None
    latency = (clock() - started) * 1000
    if response.status_code in (404, 405):
        raise UnreachableError(
            f"{endpoint.base_url} answered HTTP {response.status_code} to {path}: not a "
            "MemOS API at that URL; check --base-url, load.base_url or MEMOS_BASE_URL"
        )
    if server:
        if response.status_code in (401, 403):
            raise AuthError(
                f"{endpoint.base_url} rejected the API key (HTTP {response.status_code})"
            )
        return PreflightResult(endpoint.base_url, (clock() - started) * 1000)
    error = error_from_response(response, secret=endpoint.api_key)
    if error is None:
        return PreflightResult(endpoint.base_url, latency)
    if isinstance(error, AuthError):
        raise AuthError(f"{endpoint.base_url} rejected the API key ({error}); check MEMOS_API_KEY")
    if isinstance(error, AmbiguousDeliveryError):
        return PreflightResult(endpoint.base_url, latency, f"unreadable answer: {error}")
    if isinstance(error, (TransientLoadError, LoadError)):
        return PreflightResult(endpoint.base_url, latency, f"answered with an error: {error}")
    return PreflightResult(endpoint.base_url, latency)  # pragma: no cover - LoadError covers all
