"""A full disk is exit 7 with the path and the free space, never "a bug" or "N pending",
and no stage leaves a temp file behind. Writers are made to fail with ENOSPC / SQLITE_FULL
deterministically (no tmpfs needed)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.batches import Batch, write_batches
from pipeline.core.diskfull import is_disk_full
from pipeline.core.workdir import batches_dir, batches_path, staging_dir
from pipeline.load.ledger import Ledger
from pipeline.server.store import NewMessage, Store
from tests.conftest import SAMPLES
from tests.loader_fakes import make_batches

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _extract(runner: CliRunner, workdir: Path, name: str = "support") -> Any:
    args = ["extract", "--source", "csv", str(SAMPLES / "support_chats.csv"), "--name", name]
    return runner.invoke(main, [*args, "--workdir", str(workdir), "--user-id", "me", "-q"])


def test_load_stops_with_exit_7_when_the_ledger_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batches(tmp_path, make_batches({"a": 30, "b": 30, "c": 30}))
    original = Ledger.mark_sending
    calls = {"n": 0}

    def flaky(self: Ledger, batch_id: str) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise sqlite3.OperationalError("database or disk is full")
        original(self, batch_id)

    monkeypatch.setattr(Ledger, "mark_sending", flaky)
    result = CliRunner().invoke(main, ["load", "--workdir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 7, result.output
    line = _one_error_line(result.stderr)
    assert "disk full" in line and str(tmp_path) in line and "free there" in line
    assert "database or disk is full" in line
    assert "pending" not in result.output


def test_an_unexpected_worker_error_is_not_reported_as_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batches(tmp_path, make_batches({"a": 9, "b": 9}))

    def broken(self: Ledger, batch_id: str) -> None:
        raise RuntimeError("ledger exploded")

    monkeypatch.setattr(Ledger, "mark_sending", broken)
    result = CliRunner().invoke(main, ["load", "--workdir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "unexpected failure: RuntimeError: ledger exploded" in result.stderr
    assert "pending" not in result.output


def test_chunk_on_a_full_disk_exits_7_and_removes_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert _extract(runner, tmp_path).exit_code == 0
    first = runner.invoke(main, ["chunk", "--workdir", str(tmp_path), "-q"])
    assert first.exit_code == 0, first.output
    before = batches_path(tmp_path).read_bytes()
    original = Batch.to_json
    written = {"n": 0}

    def fill_up(self: Batch) -> dict[str, Any]:
        written["n"] += 1
        if written["n"] > 2:  # the temp file already holds two batches
            raise ENOSPC
        return original(self)

    monkeypatch.setattr(Batch, "to_json", fill_up)
    result = runner.invoke(main, ["chunk", "--workdir", str(tmp_path), "--max-messages", "1"])
    assert result.exit_code == 7, result.output
    line = _one_error_line(result.stderr)
    assert "disk full" in line and str(batches_dir(tmp_path)) in line
    assert sorted(p.name for p in batches_dir(tmp_path).iterdir()) == [
        "batches.jsonl",
        "manifest.json",
    ]
    assert batches_path(tmp_path).read_bytes() == before


def test_extract_on_a_full_disk_exits_7_and_keeps_the_old_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert _extract(runner, tmp_path).exit_code == 0
    old = sorted(p.name for p in (staging_dir(tmp_path) / "support").iterdir())

    def fill_up(self: pq.ParquetWriter, *args: Any, **kwargs: Any) -> None:
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", fill_up)
    result = _extract(runner, tmp_path)
    assert result.exit_code == 7, result.output
    line = _one_error_line(result.stderr)
    assert "disk full" in line and str(staging_dir(tmp_path)) in line
    assert sorted(p.name for p in staging_dir(tmp_path).iterdir()) == ["support"]
    assert sorted(p.name for p in (staging_dir(tmp_path) / "support").iterdir()) == old


def test_store_reports_the_full_disk_not_a_failed_rollback(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.add_messages("u", "c", [NewMessage("user", "small")])
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.add_messages("u", "c", [NewMessage("user", "word " * 200_000)])
    assert not store._conn.in_transaction
    store.add_messages("u", "c", [NewMessage("user", "fits again")])  # still usable
    store.close()


@pytest.mark.parametrize(
    ("exc", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError("Error writing bytes. Detail: [errno 28] No space left on device"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (ValueError("no space left on device"), False),
    ],
)
def test_is_disk_full(exc: BaseException, full: bool) -> None:
    assert is_disk_full(exc) is full
    try:
        try:
            raise exc
        except BaseException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer) is full
