"""Delivery targets: the MemOS cloud (or a self-hosted MemOS) and the embedded local server.

`memos` reads `MEMOS_BASE_URL` (default: the cloud) and `MEMOS_API_KEY` from the
environment; `local` starts the embedded server on 127.0.0.1 in this process, storing into
`LoadConfig.local_db` (default `<workdir>/local-memos.sqlite`), unless a URL is given.
The key is never logged: `Endpoint.__repr__` hides it and error texts are redacted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import API_KEY_ENV, BASE_URL_ENV, CLOUD_BASE_URL, LoadConfig
from pipeline.core.errors import ConfigError
from pipeline.core.workdir import local_db


@dataclass(frozen=True)
class Endpoint:
    """Where to send: API base URL and the key (never shown; redacted from errors)."""

    base_url: str
    api_key: str | None = None
    embedded: bool = False
    """The local server this process started: no account limits apply to it."""

    def __repr__(self) -> str:
        shown = "***" if self.api_key else None
        return f"Endpoint(base_url={self.base_url!r}, api_key={shown})"


def local_db_path(cfg: LoadConfig, workdir: Path) -> Path:
    """The embedded target's SQLite store."""
    return local_db(workdir, cfg.local_db)


@contextlib.contextmanager
def open_target(
    cfg: LoadConfig,
    workdir: Path,
    *,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Endpoint]:
    """The endpoint for `cfg.target`, started (local) for the duration of the block."""
    env = os.environ if env is None else env
    url = base_url or cfg.base_url
    key = env.get(API_KEY_ENV) or None
    if cfg.target == "memos":
        if not key:
            raise ConfigError(
                f"{API_KEY_ENV} is not set: export your MemOS API key to load into MemOS"
            )
        yield Endpoint((url or env.get(BASE_URL_ENV) or CLOUD_BASE_URL).rstrip("/"), key)
        return
    if url:
        yield Endpoint(url.rstrip("/"), key)
        return
    from pipeline.server.app import ServerConfig, start_server

    db = local_db_path(cfg, workdir)
    db.parent.mkdir(parents=True, exist_ok=True)
    with start_server(ServerConfig(db_path=db)) as server:
        yield Endpoint(server.url, None, embedded=True)
