from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.models import STAGING_SCHEMA, Message
from pipeline.staging import StagingWriter, read_staging, staged_sources


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


def test_round_trip_preserves_every_column(tmp_path: Path) -> None:
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
    files = list((tmp_path / "staging" / "src").glob("*.parquet"))
    assert pq.ParquetFile(files[0]).num_row_groups == 4


def test_pandas_and_duckdb_open_staging_as_is(tmp_path: Path) -> None:
    with StagingWriter(tmp_path, "src") as writer:
        for i in range(5):
            writer.write(_message(i))
    path = tmp_path / "staging" / "src" / "part-00000.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == STAGING_SCHEMA.names
    assert str(frame["created_at"].dt.tz) == "UTC"
    glob = str(tmp_path / "staging" / "*" / "*.parquet")
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
