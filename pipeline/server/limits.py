"""What one client can cost the local server: bounded bytes, bounded time, bounded connections.

uvicorn bounds none of these by itself: it waits forever for a request's headers, lets the
app read a body of any size, and accepts connections until the process runs out of file
descriptors, which locks every other client out. Here:

- **connections**: at most `max_connections` open at once; one more is answered
  `503` and closed at once, so the server keeps its descriptors and stays up;
- **headers**: a request's line and headers must arrive within `header_timeout` seconds of
  its first byte (or of connecting) and fit in `max_header_bytes`; else the connection is
  closed (`408` / `431`);
- **idle keep-alive**: closed after `keep_alive_timeout` seconds (uvicorn's own timer);
- **bodies**: read only after the token check; a declared `Content-Length` over
  `max_body_bytes` is refused before one byte is read (HTTP 413, body code 40305), a
  chunked body as soon as it grows past it; the whole body must arrive within
  `body_timeout` seconds (HTTP 408, body code 40000).

The guard is a subclass of uvicorn's httptools protocol (`guarded_protocol`): it is the
only layer that sees a connection before its headers are complete.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import ConfigError

MiB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * MiB
DEFAULT_MAX_CONNECTIONS = 512
FD_RESERVE = 64
"""Descriptors kept free for the store, logs and the listening socket."""


def _default_max_connections() -> int:
    """512, but never so many that the process's open-file limit could be reached."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft - FD_RESERVE))


@dataclass(frozen=True)
class ServerLimits:
    """Per-client bounds of one server (see the module docstring for what each does)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_connections: int = field(default_factory=_default_max_connections)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server limit {name} must be at least 1")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"server limit {name} must be more than 0 seconds")


class BodyTooLarge(Exception):
    """The request body is (or declares to be) over `max_body_bytes`."""


class BodyTimeout(Exception):
    """The request body did not arrive within `body_timeout`."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def read_body(
    receive: Receive,
    declared: str | None,
    limits: ServerLimits,
    count: Callable[[int], None],
) -> bytes:
    """The request body, read within `limits` (raises `BodyTooLarge`, `BodyTimeout`).

    `declared` is the Content-Length header: when it is over the limit nothing is read.
    `count(n)` is told every chunk's size, so the server can report the bytes it read.
    """
    if declared is not None:
        try:
            if int(declared) > limits.max_body_bytes:
                raise BodyTooLarge
        except ValueError:
            pass  # uvicorn's parser has already rejected a malformed Content-Length

    async def read_all() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            count(len(chunk))
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        return await asyncio.wait_for(read_all(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise BodyTimeout from None


_CANNED = {
    408: b"request headers not received in time",
    431: b"request headers too large",
    503: b"too many connections, retry later",
}


def _canned(status: int) -> bytes:
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(
        status, b"Service Unavailable"
    )
    body = _CANNED[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


def guarded_protocol(limits: ServerLimits, count: Callable[[str], None]) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the connection, header-time and header-size limits.

    `count(name)` is told "connections_refused", "header_timeouts" and "headers_too_large".
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        """Refuses connections over the limit; times and sizes each request's headers."""

        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _in_headers = True
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                self._refused = True
                count("connections_refused")
                transport.write(_canned(503))
                transport.close()
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > limits.max_header_bytes:
                self._abort(431, "headers_too_large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # the next request's headers are timed from its first byte (on_message_begin);
            # until then uvicorn's keep-alive timer closes an idle connection
            self._in_headers = True
            self._header_bytes = 0

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(
                limits.header_timeout, self._abort, 408, "header_timeouts"
            )

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _abort(self, status: int, counter: str) -> None:
            self._disarm()
            if self.transport is None or self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered: its own limits apply
            count(counter)
            self.transport.write(_canned(status))
            self.transport.close()

    return GuardedProtocol
