from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chunk import ChunkLimits, ChunkStats, api_id, chunk_table, chunk_workdir
from pipeline.core.batches import Batch, read_batches
from pipeline.core.config import SourceConfig
from pipeline.core.models import STAGING_SCHEMA, Message
from pipeline.core.tokens import MESSAGE_OVERHEAD, count_tokens
from pipeline.extract import extract_source
from tests.conftest import SAMPLES, schema_for

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _table(messages: list[Message]) -> pa.Table:
    return pa.Table.from_pylist([asdict(m) for m in messages], schema=STAGING_SCHEMA)


def _msg(
    i: int, conv: str = "c", user: str = "u", content: str = "hi", minutes: int | None = None
) -> Message:
    return Message(
        source="t",
        source_file="f",
        source_position=str(i),
        message_id=f"{conv}:{i}",
        conversation_id=conv,
        user_id=user,
        role="user",
        content=content,
        seq=i,
        created_at=None if minutes is None else T0 + timedelta(minutes=minutes),
    )


def _chunk(messages: list[Message], limits: ChunkLimits) -> list[Batch]:
    return list(chunk_table(_table(messages), limits, ChunkStats()))


_conversation = st.lists(
    st.tuples(st.text(min_size=1, max_size=400), st.one_of(st.none(), st.integers(0, 50))),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    conversations=st.lists(_conversation, min_size=1, max_size=4),
    max_tokens=st.integers(64, 400),
    max_messages=st.integers(1, 10),
)
def test_every_message_lands_once_in_order_within_limits(
    conversations: list[list[tuple[str, int | None]]], max_tokens: int, max_messages: int
) -> None:
    messages = [
        _msg(i, conv=f"c{n}", user=f"u{n % 2}", content=text, minutes=minute)
        for n, conv in enumerate(conversations)
        for i, (text, minute) in enumerate(conv)
    ]
    limits = ChunkLimits(max_tokens=max_tokens, max_messages=max_messages)
    batches = _chunk(messages, limits)

    for batch in batches:
        assert batch.message_count <= max_messages
        body_tokens = sum(
            count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in batch.body["messages"]
        )
        # exact, or (nothing in it tokenized) its byte bound, never above the budget
        assert body_tokens <= batch.tokens <= max_tokens
        assert {m["role"] for m in batch.body["messages"]} <= {"user"}

    content = {m.message_id: m.content for m in messages}
    for n, conv in enumerate(conversations):
        mine = [b for b in batches if b.conversation_id == f"c{n}"]
        assert [b.index for b in mine] == list(range(len(mine)))
        # lazy counting cuts exactly where counting every message would
        sent = list(dict.fromkeys(mid for b in mine for mid in b.message_ids))
        got = [("split", b.message_ids[0]) if b.part else list(b.message_ids) for b in mine]
        got = [g for k, g in enumerate(got) if k == 0 or g != got[k - 1] or g[0] != "split"]
        assert got == _eager_cuts(sent, content, limits)

        # reassemble: split parts concatenate back to the original message
        delivered: dict[str, str] = {}
        order: list[str] = []
        for batch in mine:
            for mid, m in zip(batch.message_ids, batch.body["messages"], strict=True):
                if mid not in delivered:
                    order.append(mid)
                    delivered[mid] = ""
                delivered[mid] += m["content"]
        expected = _expected_order([_msg(i, f"c{n}", minutes=mm) for i, (_, mm) in enumerate(conv)])
        assert order == expected
        assert [delivered[f"c{n}:{i}"] for i in range(len(conv))] == [t for t, _ in conv]


def _eager_cuts(order: list[str], content: dict[str, str], limits: ChunkLimits) -> list[Any]:
    """The cuts of the greedy rule with every message counted (the chunker before lazy counts)."""
    cuts: list[Any] = []
    pending: list[str] = []
    total = 0
    for mid in order:
        tokens = count_tokens(content[mid]) + MESSAGE_OVERHEAD
        if tokens > limits.max_tokens:
            if pending:
                cuts.append(pending)
                pending, total = [], 0
            cuts.append(("split", mid))
            continue
        if pending and (total + tokens > limits.max_tokens or len(pending) >= limits.max_messages):
            cuts.append(pending)
            pending, total = [], 0
        pending.append(mid)
        total += tokens
    if pending:
        cuts.append(pending)
    return cuts


def _expected_order(messages: list[Message]) -> list[str]:
    """Reference ordering: by time, a message without time inheriting its predecessor's."""
    last = next((m.created_at for m in messages if m.created_at), T0)
    keyed = []
    for m in messages:
        last = m.created_at or last
        keyed.append((last, m.seq, m.message_id))
    return [mid for _, _, mid in sorted(keyed)]


def test_oversized_message_is_split_into_marked_parts() -> None:
    big = " ".join(f"token{i}" for i in range(3000))
    batches = _chunk(
        [_msg(0, content="before"), _msg(1, content=big), _msg(2, content="after")],
        ChunkLimits(max_tokens=500),
    )
    parts = [b for b in batches if b.part]
    assert len(parts) >= 5
    assert [b.part for b in parts] == [(k, len(parts)) for k in range(1, len(parts) + 1)]
    assert "".join(b.body["messages"][0]["content"] for b in parts) == big
    assert all(b.body["info"]["split_message_id"] == "c:1" for b in parts)
    assert batches[0].body["messages"][0]["content"] == "before"
    assert batches[-1].body["messages"][0]["content"] == "after"


def test_long_ids_get_deterministic_short_form_with_original_in_info() -> None:
    long_conv, long_user = "c" * 150, "u" * 120
    (batch,) = _chunk([_msg(0, conv=long_conv, user=long_user)], ChunkLimits())
    assert len(batch.body["conversation_id"]) <= 100
    assert len(batch.body["user_id"]) <= 100
    assert batch.body["conversation_id"] == api_id(long_conv) != api_id("c" * 151)
    assert batch.body["info"]["source_conversation_id"] == long_conv
    assert batch.body["info"]["source_user_id"] == long_user
    assert api_id("short") == "short"


def test_batch_ids_are_deterministic_and_content_sensitive() -> None:
    msgs = [_msg(i, content=f"m{i}") for i in range(12)]
    first = [b.batch_id for b in _chunk(msgs, ChunkLimits(max_messages=5))]
    again = [b.batch_id for b in _chunk(list(reversed(msgs)), ChunkLimits(max_messages=5))]
    assert first == again and len(set(first)) == 3
    changed = [
        b.batch_id
        for b in _chunk([_msg(0, content="edited"), *msgs[1:]], ChunkLimits(max_messages=5))
    ]
    assert changed[0] != first[0] and changed[1:] == first[1:]


def test_excluded_ids_are_counted_and_left_out() -> None:
    stats = ChunkStats()
    msgs = [_msg(i) for i in range(5)]
    batches = list(chunk_table(_table(msgs), ChunkLimits(), stats, exclude_ids={"c:0", "c:1"}))
    assert [mid for b in batches for mid in b.message_ids] == ["c:2", "c:3", "c:4"]
    assert (stats.messages, stats.batched, stats.excluded) == (5, 3, 2)


def test_batch_bodies_validate_against_official_add_message_request(tmp_path: Path) -> None:
    extract_source(SourceConfig(kind="csv", path=SAMPLES / "support_chats.csv"), tmp_path)
    long_row = "conversation_id,user_id,role,content,timestamp\n" + (
        f"{'x' * 130},{'y' * 110},user,{'long text ' * 900},\n"
    )
    (tmp_path / "long.csv").write_text(long_row, encoding="utf-8")
    extract_source(SourceConfig(kind="csv", name="long", path=tmp_path / "long.csv"), tmp_path)
    stats = chunk_workdir(tmp_path, ChunkLimits(max_tokens=1000))
    validator = jsonschema.Draft202012Validator(schema_for("AddMessageRequest"))
    batches = list(read_batches(tmp_path))
    assert len(batches) == stats.batches > 5
    assert stats.split_messages == 1 and len(stats.shortened_ids) == 2
    for batch in batches:
        errors = [e.message for e in validator.iter_errors(batch.body)]
        assert errors == [], batch.batch_id


def test_official_schema_check_catches_a_bad_body() -> None:
    validator = jsonschema.Draft202012Validator(schema_for("AddMessageRequest"))
    bad = {
        "user_id": "u",
        "conversation_id": "c",
        "messages": [{"role": "robot", "content": "x"}],
        "info": {"nested": {"a": 1}},
    }
    assert len(list(validator.iter_errors(bad))) >= 2


def test_batches_carry_the_tags_of_their_sources() -> None:
    """One conversation staged by two sources gets both sources' tags, once each."""
    table = _table([_msg(i, conv="a" if i < 4 else "b", minutes=i) for i in range(6)])
    labels = ["second", "first", "second", "first", "plain", "plain"]
    table = table.append_column("label", pa.array(labels))
    tags = {"first": ["x", "shared"], "second": ["shared", "y"]}
    batches = list(chunk_table(table, ChunkLimits(max_messages=3), ChunkStats(), tags=tags))
    got = [(b.conversation_id, b.body.get("tags")) for b in batches]
    assert got == [
        ("a", ["x", "shared", "y"]),  # messages 0-2: both sources, in source-name order
        ("a", ["x", "shared"]),  # message 3 only: first
        ("b", None),  # a source without tags
    ]
    untagged = list(chunk_table(table, ChunkLimits(max_messages=3), ChunkStats()))
    assert [b.body for b in untagged if "tags" in b.body] == []
    assert [b.batch_id for b in untagged] == [b.batch_id for b in batches]


def test_lazy_counts_cut_where_exact_counts_would() -> None:
    """Messages of many bytes but few tokens: the byte bounds alone would cut far earlier."""
    text = "deploy the release " * 12  # 228 bytes, far fewer tokens
    messages = [_msg(i, content=text + str(i)) for i in range(40)]
    limits = ChunkLimits(max_tokens=400, max_messages=50)
    batches = _chunk(messages, limits)
    content = {m.message_id: m.content for m in messages}
    order = [mid for b in batches for mid in b.message_ids]
    assert [list(b.message_ids) for b in batches] == _eager_cuts(order, content, limits)
    assert len(batches[0].message_ids) > 400 // 228  # more than the bytes would allow
    small = _chunk(messages[:1], limits)  # fits in bytes: not tokenized, bounded by bytes
    assert small[0].tokens == len(messages[0].content.encode()) + MESSAGE_OVERHEAD


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40),
    max_messages=st.integers(1, 8),
)
def test_rows_with_times_go_by_time_then_seq_then_staging_order(
    rows: list[tuple[int, int]], max_messages: int
) -> None:
    """Every row timed (Arrow sorts them): ties on time and seq keep their staging order."""
    messages = [
        Message(
            source="t",
            source_file="f",
            source_position=str(k),
            message_id=f"m{k}",
            conversation_id="c",
            user_id="u",
            role="user",
            content=f"message {k}",
            seq=seq,
            created_at=T0 + timedelta(minutes=minute),
        )
        for k, (minute, seq) in enumerate(rows)
    ]
    batches = _chunk(messages, ChunkLimits(max_tokens=4000, max_messages=max_messages))
    sent = [mid for b in batches for mid in b.message_ids]
    expected = sorted(range(len(rows)), key=lambda k: rows[k])  # stable: staging order last
    assert sent == [f"m{k}" for k in expected]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.datetimes(timezones=st.just(timezone.utc))),
        min_size=1,
        max_size=30,
    )
)
def test_chat_times_are_the_apis_chat_time(times: list[datetime | None]) -> None:
    """The vectorized `chat_time` column is the text `memos_api.chat_time` gives each row."""
    from pipeline.chunk.batching import _chat_times
    from pipeline.core.memos_api import chat_time

    column = pa.array(times, pa.timestamp("us", tz="UTC"))
    assert _chat_times(column).to_pylist() == [chat_time(t) for t in times]


def test_windows_of_one_conversation_give_the_same_batches_and_counts(monkeypatch: Any) -> None:
    """Python objects are built a window of conversations at a time: with a window of one
    conversation, left-out, duplicated, masked and dropped rows land as with one window."""
    import pipeline.chunk.batching as batching
    from pipeline.core import redact

    messages = []
    for c in range(12):
        conv = f"conv{c}"
        for i in range(7):
            content = f"message {i} of {conv}"
            if (c + i) % 5 == 0:
                content += " mail me at someone@example.com"
            if (c * 7 + i) % 11 == 0:
                content += " AKIAABCDEFGHIJKLMNOP"  # an AWS key id: dropped below
            minutes = None if c % 4 == 0 and i == 3 else c * 10 + i
            messages.append(_msg(i, conv=conv, user=f"u{c % 3}", content=content, minutes=minutes))
    messages.append(messages[8])  # the same message staged twice: left out once
    policy = redact.Policy.build({"email": "mask", "aws_access_key": "drop-message"})
    excluded = {"conv2:1", "conv7:6", "conv11:0"}

    def run(window: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        monkeypatch.setattr(batching, "WINDOW_ROWS", window)
        stats = ChunkStats()
        batches = [
            b.to_json()
            for b in chunk_table(
                _table(messages), ChunkLimits(60, 3), stats, excluded, policy=policy
            )
        ]
        return batches, {**stats.to_json(), "examples": stats.dropped_examples}

    whole = run(10**6)
    counts = whole[1]
    assert counts["duplicates"] == 1 and counts["dropped"] > 0 and counts["excluded"] == 4
    assert counts["redacted"]["masked_messages"] > 0
    assert run(1) == whole
    assert run(9) == whole
