"""Delivery ledger (real SQLite file), workdir lock, and the chunker's incremental options."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.chunk import ChunkLimits, ChunkStats, chunk_table
from pipeline.core.errors import LedgerError, LockError
from pipeline.core.lock import workdir_lock
from pipeline.core.workdir import ledger_path
from pipeline.incremental import delivered_message_hashes
from pipeline.load.ledger import (
    SCHEMA_VERSION,
    Ledger,
    completes_of,
    ledger_status,
)
from tests.loader_fakes import make_batches


def test_new_ledger_is_wal_and_versioned(tmp_path: Path) -> None:
    with Ledger.open(tmp_path):
        pass
    conn = sqlite3.connect(ledger_path(tmp_path))
    assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Ledger.open(tmp_path):
        pass
    conn = sqlite3.connect(ledger_path(tmp_path))
    conn.execute(f"pragma user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer memos-etl"):
        Ledger.open(tmp_path)


def test_sync_is_idempotent_and_keeps_state(tmp_path: Path) -> None:
    batches = make_batches({"a": 6, "b": 3})
    with Ledger.open(tmp_path) as ledger:
        ledger.sync(batches)
        ledger.mark_sending(batches[0].batch_id)
        ledger.mark_done(batches[0].batch_id, "task-1", completes_of(batches[0]))
        ledger.sync(batches)
        rows = ledger.rows(b.batch_id for b in batches)
        assert [rows[b.batch_id].status for b in batches] == ["done", "pending", "pending"]
        assert rows[batches[0].batch_id].attempts == 1
        assert rows[batches[0].batch_id].task_id == "task-1"
        counts = ledger.status_counts()
        assert counts["done"] == {"batches": 1, "messages": 3}
        assert counts["pending"]["batches"] == 2


def test_delivered_message_hashes_contract(tmp_path: Path) -> None:
    assert delivered_message_hashes(tmp_path) == {}
    batches = make_batches({"a": 3})
    with Ledger.open(tmp_path) as ledger:
        ledger.sync(batches)
        assert delivered_message_hashes(tmp_path) == {}
        ledger.mark_done(batches[0].batch_id, None, completes_of(batches[0]))
    expected = dict(zip(batches[0].message_ids, batches[0].content_hashes, strict=True))
    assert delivered_message_hashes(tmp_path) == expected


def test_part_batches_complete_only_with_last_part() -> None:
    from dataclasses import replace

    batch = make_batches({"a": 1})[0]
    assert completes_of(replace(batch, part=(1, 3))) == ()
    assert completes_of(replace(batch, part=(3, 3))) == (
        (batch.message_ids[0], batch.content_hashes[0]),
    )


def test_split_children_and_failures_in_status(tmp_path: Path) -> None:
    batches = make_batches({"a": 4}, per_batch=4)
    with Ledger.open(tmp_path) as ledger:
        ledger.sync(batches)
        row = ledger.get(batches[0].batch_id)
        assert row is not None
        body = batches[0].body
        children = ledger.mark_split(
            row,
            [
                ({**body, "messages": body["messages"][:2]}, 20, list(row.completes[:2])),
                ({**body, "messages": body["messages"][2:]}, 20, list(row.completes[2:])),
            ],
        )
        assert [c.batch_id for c in children] == [f"{row.batch_id}.1", f"{row.batch_id}.2"]
        assert children[0].body is not None and len(children[0].body["messages"]) == 2
        ledger.mark_failed(children[1].batch_id, 40001, "code 40001: bad field")
    info = ledger_status(tmp_path)
    assert info["batches"]["split"]["batches"] == 1
    assert info["failures"][0]["error"] == "code 40001: bad field"
    with Ledger.open(tmp_path) as ledger:
        assert ledger.retry_failed() == 1
        assert ledger.children(batches[0].batch_id)[1].status == "pending"


def test_lock_blocks_a_second_run(tmp_path: Path) -> None:
    with workdir_lock(tmp_path):
        code = (
            "import sys; from pathlib import Path; from pipeline.core.lock import workdir_lock\n"
            "from pipeline.core.errors import LockError\n"
            "try:\n    with workdir_lock(Path(sys.argv[1])): pass\n"
            "except LockError as e:\n    print(e); sys.exit(5)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert other.returncode == 5
        assert "another memos-etl run" in other.stdout
    with workdir_lock(tmp_path):  # released
        pass


def test_lock_is_not_reentrant_within_a_process(tmp_path: Path) -> None:
    with workdir_lock(tmp_path), pytest.raises(LockError), workdir_lock(tmp_path):
        pass


def _table(rows: list[tuple[str, str, datetime | None]]) -> pa.Table:
    return pa.table(
        {
            "source": ["s"] * len(rows),
            "message_id": [r[0] for r in rows],
            "conversation_id": ["c"] * len(rows),
            "user_id": ["u"] * len(rows),
            "role": ["user"] * len(rows),
            "content": [r[1] for r in rows],
            "created_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "seq": list(range(len(rows))),
        }
    )


def test_chunk_since_and_exclude_ids() -> None:
    t = lambda d: datetime(2026, 1, d, tzinfo=timezone.utc)  # noqa: E731
    table = _table(
        [("m1", "one", t(1)), ("m2", "two", t(5)), ("m3", "three", None), ("m4", "four", t(9))]
    )
    stats = ChunkStats()
    batches = list(chunk_table(table, ChunkLimits(), stats, exclude_ids={"m4"}, since=t(3)))
    assert [m for b in batches for m in b.message_ids] == ["m2", "m3"]
    assert stats.messages == stats.batched + stats.excluded == 4
    plain = list(chunk_table(table, ChunkLimits(), ChunkStats()))
    assert [m for b in plain for m in b.message_ids] == ["m1", "m2", "m3", "m4"]
