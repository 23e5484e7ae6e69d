"""Staging bucketed by conversation: whole conversations, every message once, readable by all."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.buckets import bucket_of
from pipeline.core.models import Message
from pipeline.core.staging import (
    StagingWriter,
    read_labeled,
    read_labeled_bucket,
    read_staging,
    staged_bucket_count,
)
from pipeline.core.staging_buckets import BUCKETS_FILE, read_layout


def _message(i: int, conversation: str, user: str = "u1") -> Message:
    return Message(
        source="csv",
        source_file="in.csv",
        source_position=str(i),
        message_id=f"m{i}",
        conversation_id=conversation,
        user_id=user,
        role="user",
        content=f"text {i}",
        seq=i,
        created_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
    )


def _stage(workdir: Path, name: str, messages: list[Message], buckets: int | None) -> None:
    with StagingWriter(workdir, name, row_group_rows=7, buckets=buckets) as writer:
        for m in messages:
            writer.write(m)


_messages = st.lists(
    st.tuples(st.sampled_from([f"c{n}" for n in range(12)] + ["", "é/ü", "C"]), st.booleans()),
    max_size=80,
)


@settings(max_examples=40, deadline=None)
@given(
    first=_messages,
    second=_messages,
    own=st.sampled_from([1, 2, 4, 8]),
    other=st.sampled_from([1, 2, 4]),
)
def test_buckets_keep_conversations_whole_and_every_message_once(
    first: list[tuple[str, bool]], second: list[tuple[str, bool]], own: int, other: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        a = [_message(i, conv, "u1" if flag else "u2") for i, (conv, flag) in enumerate(first)]
        b = [_message(1000 + i, conv) for i, (conv, _) in enumerate(second)]
        _stage(workdir, "a", a, own)
        _stage(workdir, "b", b, other)
        count = staged_bucket_count(workdir, ["a", "b"])
        assert count == max(own, other)
        seen: Counter[str] = Counter()
        home: dict[str, int] = {}
        columns = ["message_id", "conversation_id", "seq"]
        for bucket in range(count):
            table = read_labeled_bucket(workdir, ["a", "b"], columns, bucket, count)
            seen.update(table.column("message_id").to_pylist())
            for conv in table.column("conversation_id").to_pylist():
                assert home.setdefault(conv, bucket) == bucket  # one bucket per conversation
                assert bucket_of(conv, count) == bucket
            rows = list(
                zip(table.column("label").to_pylist(), table.column("seq").to_pylist(), strict=True)
            )
            for label in ("a", "b"):  # staged order kept inside a bucket
                seqs = [seq for name, seq in rows if name == label]
                assert seqs == sorted(seqs)
        assert seen == Counter(m.message_id for m in a + b)  # every message exactly once
        assert read_labeled(workdir, ["a", "b"], columns).num_rows == len(a) + len(b)


def test_layout_is_readable_by_pandas_pyarrow_and_duckdb(tmp_path: Path) -> None:
    messages = [_message(i, f"c{i % 10}") for i in range(50)]
    _stage(tmp_path, "src", messages, 4)
    source = tmp_path / "staging" / "src"
    assert (source / BUCKETS_FILE).is_file()
    assert sorted(p.name for p in source.iterdir() if p.is_dir()) == [
        f"bucket={b:04d}" for b in range(4)
    ]
    frame = pd.read_parquet(tmp_path / "staging")
    assert len(frame) == 50 and set(frame["bucket"].astype(int)) == {0, 1, 2, 3}
    for row in frame.itertuples():
        assert bucket_of(row.conversation_id, 4) == int(row.bucket)
    glob = str(tmp_path / "staging" / "*" / "*" / "*.parquet")
    assert duckdb.sql(f"select count(*) from '{glob}'").fetchall() == [(50,)]
    assert read_staging(tmp_path).num_rows == 50


def test_an_unbucketed_source_from_an_older_version_is_still_read(tmp_path: Path) -> None:
    _stage(tmp_path, "new", [_message(i, f"c{i % 5}") for i in range(20)], 4)
    _stage(tmp_path, "old", [_message(100 + i, f"c{i % 5}") for i in range(20)], 1)
    old = tmp_path / "staging" / "old"
    flat = pq.read_table(old / "bucket=0000" / "part-00000.parquet")
    for path in list(old.rglob("*.parquet")):
        path.unlink()
    (old / BUCKETS_FILE).unlink()
    (old / "bucket=0000").rmdir()
    pq.write_table(flat, old / "part-00000.parquet")  # the layout before bucketing
    assert read_layout(old).buckets == 1
    count = staged_bucket_count(tmp_path, ["new", "old"])
    assert count == 4
    ids: list[str] = []
    for bucket in range(count):
        table = read_labeled_bucket(tmp_path, ["new", "old"], ["message_id"], bucket, count)
        ids += table.column("message_id").to_pylist()
    assert sorted(ids) == sorted(read_staging(tmp_path).column("message_id").to_pylist())
    assert len(ids) == 40


def test_the_incremental_plan_bucket_by_bucket_equals_the_whole_table_plan(
    tmp_path: Path,
) -> None:
    from pipeline import incremental
    from pipeline.core.models import content_hash

    _stage(tmp_path, "a", [_message(i, f"c{i % 9}") for i in range(60)], 4)
    _stage(tmp_path, "b", [_message(100 + i, f"c{i % 3}") for i in range(10)], 1)
    delivered = {f"m{i}": content_hash(f"text {i}") for i in range(0, 60, 2)}
    delivered |= {"m1": "edited", "m105": "edited", "gone": "x"}
    for resend in (False, True):
        whole = incremental.plan(read_staging(tmp_path), delivered, resend)
        buckets = incremental.plan_workdir(tmp_path, ["a", "b"], delivered, resend)
        assert buckets.excluded == len(whole.exclude) >= 30
        asked = incremental.BucketPlan(
            tmp_path, ["a", "b"], incremental.DeliveredMap(delivered), resend
        )
        staged = read_staging(tmp_path).column("message_id").to_pylist()
        assert {m for m in reversed(staged) if m in asked} == whole.exclude  # any order
        assert sorted(buckets.changed_ids) == sorted(whole.changed_ids) == ["m1", "m105"]
        assert (buckets.staged_delivered, buckets.delivered_total) == (
            whole.staged_delivered,
            whole.delivered_total,
        )


def test_read_ahead_keeps_order_raises_where_the_items_raise_and_stops_early() -> None:
    import threading

    from pipeline.core.staging_buckets import _read_ahead

    def items(fail_at: int | None) -> Iterator[int]:
        for n in range(50):
            if n == fail_at:
                raise OSError("part unreadable")
            yield n

    assert list(_read_ahead(items(None))) == list(range(50))
    got: list[int] = []
    with pytest.raises(OSError, match="part unreadable"):
        for n in _read_ahead(items(7)):
            got.append(n)
    assert got == list(range(7))
    stream = _read_ahead(items(None), ahead=1)
    assert next(stream) == 0
    stream.close()  # a consumer that stops early leaves no thread behind
    assert not any(t.name == "bucket-read-ahead" for t in threading.enumerate())


def test_rows_keep_their_staged_order_inside_each_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many small read batches (read ahead in a thread) and buckets written two at a time:
    each bucket holds its rows in the order they were staged."""
    import pipeline.core.staging_buckets as sb

    monkeypatch.setattr(sb, "READ_ROWS", 5)
    messages = [_message(i, f"c{i % 13}") for i in range(400)]
    _stage(tmp_path, "csv", messages, 8)
    layout = read_layout(tmp_path / "staging" / "csv")
    seen = 0
    for files in layout.files.values():
        ids = [int(m[1:]) for f in files for m in pq.read_table(f).column("message_id").to_pylist()]
        assert ids == sorted(ids)
        seen += len(ids)
    assert seen == 400
