"""Destination identity: where a workdir's deliveries went.

A delivery is only "already done" for the destination it was made to: messages loaded into
the embedded local store were never sent to MemOS. So every ledger row is keyed by a
`Destination`: the target kind, the normalized base URL, and an account fingerprint —
`sha256(key)`, first 16 hex digits, for an API key (the key itself is never stored or
printed; 64 bits of a hash cannot be turned back into a real key), or the store's resolved
path for the embedded local target. Two loads that agree on all three are the same
destination; anything else is a new one, which receives every message.

This module only names destinations; the ledger (`pipeline.load.ledger`) records them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.core.config import API_KEY_ENV, BASE_URL_ENV, CLOUD_BASE_URL, LoadConfig
from pipeline.core.models import stable_id
from pipeline.core.workdir import local_db

EMBEDDED = "embedded"
"""`base_url` of the in-process local server (its port changes on every run)."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Scheme and host in lower case, default port and trailing slashes dropped."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def key_fingerprint(key: str | None) -> str:
    """First 16 hex digits of the key's sha256 ("" without a key); never the key."""
    if not key:
        return ""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Destination:
    """One place deliveries go: `(kind, base_url, account)`; `id` is what the ledger stores."""

    kind: str
    base_url: str
    account: str

    @property
    def id(self) -> str:
        """A stable 16-hex id of the three parts."""
        return stable_id(self.kind, self.base_url, self.account, length=16)

    def describe(self) -> str:
        """One line for people: kind, where, and whose (a fingerprint, never a key)."""
        if self.base_url == EMBEDDED:
            return f"{self.kind} (embedded store {self.account})"
        whose = f" (key {self.account})" if self.account else ""
        return f"{self.kind} {self.base_url}{whose}"


def local_default(workdir: Path, store: Path | None = None) -> Destination:
    """The embedded local target storing into `store` (default `<workdir>/local-memos.sqlite`)."""
    path = local_db(workdir, store)
    return Destination("local", EMBEDDED, str(path.expanduser().resolve()))


def destination_for(
    cfg: LoadConfig,
    workdir: Path,
    *,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Destination:
    """The destination a load with these settings delivers to (same rules as the loader's
    `open_target`: flag, then `load.base_url`, then `MEMOS_BASE_URL` for `memos`)."""
    env = os.environ if env is None else env
    url = base_url or cfg.base_url
    key = env.get(API_KEY_ENV) or None
    if cfg.target == "memos":
        where = url or env.get(BASE_URL_ENV) or CLOUD_BASE_URL
        return Destination("memos", normalize_url(where), key_fingerprint(key))
    if url:
        return Destination("local", normalize_url(url), key_fingerprint(key))
    return local_default(workdir, cfg.local_db)
