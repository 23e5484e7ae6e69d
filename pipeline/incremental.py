"""The one rule for "what would be sent to a destination", shared by `run`, `load` and the dry run.

A staged message is left out of the next batches when the ledger records it as delivered.
A delivered message whose staged content has changed since (an edit in a newer export) is
left out too, and reported, unless `load.resend_changed` is set: then it is sent again.
Because `run` and `validate` both call `plan`, the dry run's "to send" is exactly what a
run sends.

"Content" means the content as sent: the ledger records the hash of the redacted content
(`pipeline.core.redact`), so `plan` redacts the staged content under the same policy
before comparing. A redaction policy change therefore shows up as "changed since
delivery" for the messages whose sent content it changes (a message the new policy drops
counts as changed too, and is never resent). See docs/redaction.md.

This module reads the ledger's `delivered_messages` table read-only (the table's writer is
`pipeline.load.ledger`); it imports nothing from the load stage, so the dry run can use it
without importing the loader.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.models import content_hash
from pipeline.core.redact import DEFAULT_POLICY, Policy, redact
from pipeline.core.workdir import ledger_path


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


@dataclass
class Delta:
    """Which staged rows an incremental run leaves out, and which delivered ones changed."""

    delivered_total: int
    """Messages the ledger records as delivered (staged now or not)."""
    staged_delivered: int
    """Staged rows that are already delivered."""
    changed: pa.Table
    """Staged rows (as given to `plan`) whose content differs from what was delivered."""
    exclude: set[str]
    """Message ids to leave out of the next batches."""

    @property
    def changed_ids(self) -> list[str]:
        """Ids of delivered messages whose content changed since."""
        return [str(m) for m in self.changed.column("message_id").to_pylist()]


def plan(
    table: pa.Table,
    delivered: Mapping[str, str],
    resend_changed: bool,
    *,
    policy: Policy = DEFAULT_POLICY,
) -> Delta:
    """Apply the rule to staged rows (`message_id` and `content` columns at least).

    `exclude` holds every delivered id, or only the unchanged ones with `resend_changed`.
    `policy` must be the redaction policy the next chunk uses (see the module docstring).
    """
    if not delivered or table.num_rows == 0:
        return Delta(len(delivered), 0, table.slice(0, 0), set())
    hit = table.filter(pc.is_in(table.column("message_id"), value_set=pa.array(list(delivered))))
    ids = hit.column("message_id").to_pylist()
    sent = redact(hit.column("content"), policy)
    contents = sent.content.to_pylist()
    changed_mask = [
        i in sent.dropped_by_row or content_hash(text) != delivered[mid]
        for i, (mid, text) in enumerate(zip(ids, contents, strict=True))
    ]
    changed = hit.filter(pa.array(changed_mask, type=pa.bool_()))
    exclude = {
        mid
        for mid, is_changed in zip(ids, changed_mask, strict=True)
        if not (is_changed and resend_changed)
    }
    return Delta(len(delivered), hit.num_rows, changed, exclude)
