"""Delivery targets: the MemOS cloud (or a self-hosted MemOS) and the embedded local server.

`memos` reads `MEMOS_BASE_URL` (default: the cloud) and `MEMOS_API_KEY` from the
environment; `memos-server` (a self-hosted MemOS server, `/product/add`) needs a base URL
(`base_url:` or `MEMOS_BASE_URL`) and sends `MEMOS_API_KEY` only when it is set (the stock
server has no auth); `local` answers with the embedded server inside this process (no
HTTP: the loader calls its request path directly), storing into `LoadConfig.local_db`
(default `<workdir>/local-memos.sqlite`), unless a URL (a running `memos-etl serve`) is given.
The key is never logged: `Endpoint.__repr__` hides it and error texts are redacted.

Where a key may go (see docs/security.md): `MEMOS_API_KEY` only to the `memos` target,
never to `local`; a `local` URL gets the serve token `MEMOS_ETL_SERVE_TOKEN` if set. No key
travels over plain `http://` to a host other than loopback unless
`load.allow_insecure_http` (`--allow-insecure-http`) says so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.core.config import API_KEY_ENV, BASE_URL_ENV, CLOUD_BASE_URL, LoadConfig
from pipeline.core.errors import ConfigError
from pipeline.core.workdir import local_db
from pipeline.load.policy import Answer


class Poster(Protocol):
    """What the loader sends through: an `httpx.AsyncClient`, or the embedded server
    answering in this process (`pipeline.server.embedded.EmbeddedServer`)."""

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> Answer: ...


@dataclass(frozen=True)
class Endpoint:
    """Where to send: API base URL and the key (never shown; redacted from errors)."""

    base_url: str
    api_key: str | None = None
    embedded: bool = False
    """The local server this process started: no account limits apply to it."""
    in_process: Poster | None = field(default=None, compare=False)
    """The embedded server itself, when it answers in this process (no HTTP)."""

    def __repr__(self) -> str:
        shown = "***" if self.api_key else None
        return f"Endpoint(base_url={self.base_url!r}, api_key={shown})"


SERVE_TOKEN_ENV = "MEMOS_ETL_SERVE_TOKEN"
"""The token of a `memos-etl serve` (its `--token`); the only key a `local` URL is sent."""


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def check_key_transport(url: str, key_name: str, *, allow_insecure_http: bool) -> None:
    """Refuse (`ConfigError`, exit 2) to send a key where it could be read on the way.

    A key goes over `https://`, or over plain `http://` to a loopback host (the traffic
    never leaves the machine); anything else needs `allow_insecure_http`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base URL {url!r} is not an http(s) URL with a host")
    if scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing to send {key_name} over plain http to {parts.hostname}: use https, "
            "or allow it with --allow-insecure-http (load.allow_insecure_http: true)"
        )


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
        url = (url or env.get(BASE_URL_ENV) or CLOUD_BASE_URL).rstrip("/")
        check_key_transport(url, API_KEY_ENV, allow_insecure_http=cfg.allow_insecure_http)
        yield Endpoint(url, key)
        return
    if cfg.target == "memos-server":
        server_url = url or env.get(BASE_URL_ENV)
        if not server_url:
            raise ConfigError(
                f"target memos-server needs the server's address: set {BASE_URL_ENV} "
                "(e.g. http://localhost:8001) or load.base_url"
            )
        server_url = server_url.rstrip("/")
        if key:
            check_key_transport(
                server_url, API_KEY_ENV, allow_insecure_http=cfg.allow_insecure_http
            )
        yield Endpoint(server_url, key)
        return
    if url:  # a running `memos-etl serve`: never the MemOS key, only its own token
        token = env.get(SERVE_TOKEN_ENV) or None
        if token:
            check_key_transport(url, SERVE_TOKEN_ENV, allow_insecure_http=cfg.allow_insecure_http)
        yield Endpoint(url.rstrip("/"), token)
        return
    from pipeline.server import EmbeddedServer, ServerConfig

    db = local_db_path(cfg, workdir)
    db.parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(ServerConfig(db_path=db)) as server:
        yield Endpoint(server.url, None, embedded=True, in_process=server)
