"""The local server inside the loader's process, without HTTP: the default `local` target.

Over HTTP through uvicorn, a request of a few messages costs the loader and the server
together about 2 ms of CPU (building, sending and parsing two HTTP messages), several times
what storing it costs. `EmbeddedServer` answers the same requests by calling the server's
request path (`pipeline.server.app._Api.answer_bytes`) directly: the same auth, body limit,
faults, validation, store and answers (`{code, data, message}` bodies with their HTTP
status), so a loader cannot tell the difference except by speed. A fault that drops an
answer raises the error a dropped connection raises (`httpx.RemoteProtocolError`), after
the store committed in the `drop_after` case, as over a socket.

`memos-etl serve` and the tests that need a real socket keep `LocalServer`
(`pipeline.server.runner`).

Usage: `with EmbeddedServer(ServerConfig(db_path=p)) as server: await server.post(...)`;
one thread and one event loop use it at a time (the store's connection is not shared).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from pipeline.core.tokens import count_tokens
from pipeline.server.app import Counters, ServerConfig, ServerStats, _Api
from pipeline.server.faults import FaultInjector, ForcedAnswer
from pipeline.server.store import Store

log = logging.getLogger("memos_etl.localapi")

EMBEDDED_URL = "embedded"
"""The base URL of the embedded server: none (it has no socket); as `Destination.base_url`."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as a client reads it (the parts of `httpx.Response` the loader uses),
    without building an HTTP response: that alone cost a tenth of an in-process request."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", errors="replace")


class EmbeddedServer:
    """The local MemOS-compatible API answered in this process. Context manager.

    `post(path, content=..., headers=...)` is what the loader calls instead of an HTTP
    client's; `stats` counts as `LocalServer.stats` does. On close the search index is
    caught up (searches would catch up anyway) and the store closed.
    """

    url = EMBEDDED_URL

    def __init__(
        self, config: ServerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        count_tokens("warm up")  # load the tokenizer now, not on the first request
        self._store = Store(config.db_path, config.synchronous)
        self._injector = FaultInjector(config.faults, clock)
        self._counters = Counters()
        self._api = _Api(config, self._store, self._injector, self._counters)
        self._closed = False
        log.info("local MemOS store %s (in this process)", config.db_path)

    async def post(
        self, url: str, *, content: bytes, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """Answer one POST of `content` to `url` (a path) as the HTTP server would."""
        if self._closed:
            raise httpx.ConnectError("the embedded server is closed")
        authorization = (headers or {}).get("authorization")
        answer = await self._api.answer_bytes(url, authorization, content)
        if answer.sent is not None:
            # a dropped answer: the client sees the connection break, as over a socket
            raise httpx.RemoteProtocolError(
                "server disconnected without sending a complete response"
            )
        return Answer(
            answer.status_code,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in answer.raw_headers},
            bytes(answer.body),
        )

    @property
    def stats(self) -> ServerStats:
        """Counters since start (a snapshot)."""
        return self._counters.snapshot()

    def force(self, answer: ForcedAnswer) -> None:
        """Queue a forced answer (see `pipeline.server.faults.ForcedAnswer`)."""
        self._injector.force(answer)

    def close(self) -> None:
        """Catch up the search index and close the store. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store.index_pending()
        except sqlite3.Error as exc:
            log.warning("could not finish the search index (next start will): %s", exc)
        self._store.close()

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EMBEDDED_URL", "Answer", "EmbeddedServer"]
