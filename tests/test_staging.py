from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.models import STAGING_SCHEMA, Distinct, Message, StagedPart
from pipeline.core.staging import PartWriter, StagingWriter, part_path, read_staging, staged_sources
from pipeline.core.staging_buckets import all_files


def _message(i: int, content: str = "hello", conversation: str = "c1") -> Message:
    return Message(
        source="csv",
        source_file="in.csv",
        source_position=f"line {i + 2}",
        message_id=f"m{i}",
        conversation_id=conversation,
        user_id="u1",
        role="user" if i % 2 == 0 else "assistant",
        content=content,
        seq=i,
        created_at=datetime(2025, 1, 1, 12, 0, i % 60, 123456, tzinfo=timezone.utc),
        author_id="a1",
        author_name="Ann",
        metadata='{"k": "v"}',
    )


def test_round_trip_preserves_every_column(
    tmp_path: Path, flat_parts: dict[str, dict[str, int]]
) -> None:
    messages = [_message(i, content=f"text {i} 你好 😀\nline two") for i in range(10)]
    with StagingWriter(tmp_path, "src", row_group_rows=3) as writer:
        for m in messages:
            writer.write(m)
    table = read_staging(tmp_path)
    assert table.schema.equals(STAGING_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["message_id"] for r in rows] == [m.message_id for m in messages]
    for row, message in zip(rows, messages, strict=True):
        for column in STAGING_SCHEMA.names:
            assert row[column] == getattr(message, column), column
    # streamed: several row groups, not one big buffer
    assert flat_parts["src"] == {"part-00000.parquet": 4}


def test_pandas_and_duckdb_open_staging_as_is(tmp_path: Path) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        for i in range(5):
            writer.write(_message(i))
    path = tmp_path / "staging" / "src" / "bucket=0000" / "part-00000.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == STAGING_SCHEMA.names
    assert str(frame["created_at"].dt.tz) == "UTC"
    glob = str(tmp_path / "staging" / "*" / "*" / "*.parquet")
    count = duckdb.sql(f"select count(*), min(seq), max(seq) from '{glob}'").fetchall()[0]
    assert count == (5, 0, 4)


def test_failed_extract_keeps_previous_staging(tmp_path: Path) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        writer.write(_message(0, "first run"))
    with pytest.raises(RuntimeError), StagingWriter(tmp_path, "src") as writer:
        writer.write(_message(0, "second run"))
        raise RuntimeError("crash mid-extract")
    assert read_staging(tmp_path).column("content").to_pylist() == ["first run"]
    assert staged_sources(tmp_path) == ["src"]


def test_lone_surrogates_are_replaced_not_fatal(tmp_path: Path) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        writer.write(_message(0, "broken \ud83d escape"))
    assert read_staging(tmp_path).column("content").to_pylist() == ["broken \ufffd escape"]


def test_empty_source_still_readable(tmp_path: Path) -> None:
    with StagingWriter(tmp_path, "empty"):
        pass
    assert read_staging(tmp_path).num_rows == 0
    assert staged_sources(tmp_path) == ["empty"]


def _batch(messages: list[Message]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([asdict(m) for m in messages], schema=STAGING_SCHEMA)


def test_parts_written_by_a_connector_are_adopted(
    tmp_path: Path, flat_parts: dict[str, dict[str, int]]
) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        writer.write(_message(0))
        first = PartWriter(part_path(writer.parts_dir, 0), row_group_rows=2)
        for i in range(1, 6):
            first.add(_batch([_message(i, conversation=f"c{i % 2}")]))
        part = first.close()
        assert part is not None and part.rows == 5
        assert sorted(part.distinct.pairs.to_pylist()) == ["2:u1:c0", "2:u1:c1"]
        assert part.distinct.users.to_pylist() == ["u1"]
        writer.adopt(part)
        assert PartWriter(part_path(writer.parts_dir, 1)).close() is None
    assert writer.rows_written == 6
    assert flat_parts["src"] == {"part-00000.parquet": 1, "part-00001.parquet": 3}
    ids = sorted(read_staging(tmp_path).column("message_id").to_pylist())
    assert ids == [f"m{i}" for i in range(6)]


def test_part_row_groups_stop_at_a_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long messages close a row group before its row count is reached (bounded memory)."""
    monkeypatch.setattr("pipeline.core.staging.PART_ROW_GROUP_BYTES", 10_000)
    writer = PartWriter(tmp_path / "part.parquet")  # 16,384 rows per group by count
    for i in range(8):
        writer.add(_batch([_message(i, content="x" * 4_000)]))
    part = writer.close()
    assert part is not None and part.rows == 8
    groups = pq.ParquetFile(part.path).metadata
    assert [groups.row_group(g).num_rows for g in range(groups.num_row_groups)] == [3, 3, 2]


def test_distinct_pairs_never_mix_up_user_and_conversation() -> None:
    """A separator inside an id cannot make two different pairs look alike."""
    users = pa.array(["a:b", "a", "a", "é", "é"])
    conversations = pa.array(["c", "b:c", "b:c", "x", "y"])
    first = Distinct.of(users, conversations)
    assert len(first.pairs) == 4 and sorted(first.users.to_pylist()) == ["a", "a:b", "é"]
    both = Distinct.merge([first, Distinct.of(pa.array(["a"]), pa.array(["z"]))])
    assert (len(both.pairs), len(both.users)) == (5, 3)
    assert len(Distinct.merge([]).pairs) == 0
    one_owner = Distinct.of(pa.array(["u", "u", "u"]), pa.array(["c", "c", "d"]))
    assert sorted(one_owner.pairs.to_pylist()) == ["1:u:c", "1:u:d"]
    assert one_owner.users.to_pylist() == ["u"]


def test_only_parts_means_no_empty_file(
    tmp_path: Path, flat_parts: dict[str, dict[str, int]]
) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        part = PartWriter(part_path(writer.parts_dir, 0))
        part.add(_batch([_message(1)]))
        writer.adopt(part.close())  # type: ignore[arg-type]
    assert list(flat_parts["src"]) == ["part-00001.parquet"]
    assert len(all_files(tmp_path / "staging" / "src")) == 1


def test_adopt_refuses_files_outside_the_parts_folder(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.parquet"
    pq.write_table(STAGING_SCHEMA.empty_table(), outside)
    with StagingWriter(tmp_path, "src") as writer, pytest.raises(ValueError, match="not in"):
        writer.adopt(StagedPart(str(outside), 0))
    with StagingWriter(tmp_path, "src") as writer, pytest.raises(ValueError, match="missing"):
        writer.adopt(StagedPart(str(part_path(writer.parts_dir, 7)), 1))
