"""Running the local server: uvicorn in a thread of this process (`start_server`, the `local`
target and the tests) or in the foreground until a signal (`memos-etl serve`)."""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from types import FrameType

from pipeline.core.errors import ConfigError
from pipeline.core.tokens import count_tokens
from pipeline.server.app import Counters, ServerConfig, ServerStats, create_app
from pipeline.server.faults import FaultInjector, ForcedAnswer
from pipeline.server.limits import (
    guarded_protocol,
)
from pipeline.server.store import Store

log = logging.getLogger("memos_etl.localapi")


class _QuietDrops(logging.Filter):
    """Hides uvicorn's complaint about the responses we break on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


class LocalServer:
    """A running local API server (uvicorn in a background thread). Context manager.

    `url` is the API base (`url + "/add/message"`); `stats` a snapshot of its counters;
    `force(...)` queues a forced answer at run time; `stop()` shuts it down and closes the
    store. Pass `clock` to drive the QPS limiter in tests.
    """

    def __init__(
        self, config: ServerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        import uvicorn

        self.config = config
        count_tokens("warm up")  # load the tokenizer now, not on the first request
        self._store = Store(config.db_path, config.synchronous)
        self._injector = FaultInjector(config.faults, clock)
        self._counters = Counters()
        app = create_app(config, self._store, self._injector, self._counters)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((config.host, config.port))
        except OSError as exc:
            self._sock.close()
            self._store.close()
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
            ) from None
        self.port: int = self._sock.getsockname()[1]
        host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
        self.url = f"http://{host}:{self.port}"
        uv_config = uvicorn.Config(
            app,
            http=guarded_protocol(config.limits, self._counters.add),
            timeout_keep_alive=config.limits.keep_alive_timeout,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"memos-local-api:{self.port}",
            daemon=True,
        )
        self._filter = _QuietDrops()
        self._started = False
        self._stopped = False

    def start(self, timeout: float = 10.0) -> LocalServer:
        """Start serving; returns once the server accepts connections."""
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"local API server on {self.url} did not start")
            time.sleep(0.01)
        self._started = True
        log.info("local MemOS API listening on %s (store %s)", self.url, self.config.db_path)
        return self

    @property
    def stats(self) -> ServerStats:
        """Counters since start (a snapshot)."""
        return self._counters.snapshot()

    def force(self, answer: ForcedAnswer) -> None:
        """Queue a forced answer (see `pipeline.server.faults.ForcedAnswer`)."""
        self._injector.force(answer)

    def clear_forced(self) -> None:
        """Drop every forced answer still queued."""
        self._injector.clear_forced()

    def stop(self) -> None:
        """Finish in-flight requests, stop, close the store. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self._sock.close()
        try:
            self._store.index_pending()  # leave a complete search index behind
        except sqlite3.Error as exc:
            log.warning("could not finish the search index (next start will): %s", exc)
        self._store.close()
        logging.getLogger("uvicorn.error").removeFilter(self._filter)

    def __enter__(self) -> LocalServer:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    config: ServerConfig, *, clock: Callable[[], float] = time.monotonic
) -> LocalServer:
    """Start a server in a background thread (on a free port when `config.port` is 0)."""
    return LocalServer(config, clock=clock).start()


def run_until_signal(
    config: ServerConfig, on_ready: Callable[[LocalServer], None] | None = None
) -> ServerStats:
    """Serve until SIGINT or SIGTERM, then shut down cleanly and return the final counters.

    Must run in the main thread (it installs signal handlers, restored on return).
    """
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start_server(config)
        try:
            if on_ready is not None:
                on_ready(server)
            while not stop.wait(0.5):
                pass
            log.info("shutting down")
        finally:
            server.stop()
        return server.stats
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
