"""Delivery ledger: SQLite (WAL) checkpoints in `<workdir>/ledger.sqlite`.

Contract other stages rely on (the loader owns the rest of this module):
`delivered_message_hashes(workdir)` returns `{message_id: content_hash}` for every staged
message the API has confirmed, and `{}` when no ledger exists yet. It never writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def ledger_path(workdir: Path) -> Path:
    """The ledger file of a workdir."""
    return workdir / "ledger.sqlite"


def delivered_message_hashes(workdir: Path) -> dict[str, str]:
    """Message ids already delivered, with the content hash that was sent (read-only)."""
    path = ledger_path(workdir)
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        has_table = conn.execute(
            "select 1 from sqlite_master where type='table' and name='delivered_messages'"
        ).fetchone()
        if not has_table:
            return {}
        return dict(conn.execute("select message_id, content_hash from delivered_messages"))
    finally:
        conn.close()
