"""The one rule for what is sent (`pipeline.incremental`) and destination identity."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chunk import ChunkLimits, ChunkStats, chunk_table
from pipeline.core.config import LoadConfig
from pipeline.core.destination import destination_for, key_fingerprint, normalize_url
from pipeline.incremental import filter_batches
from tests.loader_fakes import make_batches


def _messages(batches: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(b.conversation_id, m) for b in batches for m in b.message_ids]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    per_batch=st.integers(1, 5),
    delivered_mask=st.lists(st.booleans(), min_size=48, max_size=48),
    repeat=st.booleans(),
)
def test_filter_sends_each_undelivered_message_once_in_order(
    sizes: list[int], per_batch: int, delivered_mask: list[bool], repeat: bool
) -> None:
    batches = make_batches({f"c{i}": n for i, n in enumerate(sizes)}, per_batch=per_batch)
    every = [(m, h) for b in batches for m, h in zip(b.message_ids, b.content_hashes, strict=True)]
    delivered = {
        m: h for (m, h), hit in zip(every, delivered_mask[: len(every)], strict=False) if hit
    }
    plan = filter_batches(batches + batches if repeat else batches, delivered, False)
    sent = _messages(plan.batches)
    want = [(b.conversation_id, m) for b in batches for m in b.message_ids if m not in delivered]
    assert sorted(sent) == sorted(want) and len(set(sent)) == len(sent)
    for conv in {c for c, _ in want}:  # order inside a conversation is kept
        assert [m for c, m in sent if c == conv] == [m for c, m in want if c == conv]
    assert plan.already_messages == len(delivered) * (2 if repeat else 1)
    assert plan.duplicate_messages == (len(every) - len(delivered) if repeat else 0)
    for batch in plan.batches:  # a rebuilt batch's body carries exactly its messages
        assert len(batch.body["messages"]) == len(batch.message_ids)
        assert batch.body["info"]["batch_id"] == batch.batch_id if "info" in batch.body else True


def test_changed_content_is_reported_and_resent_only_when_asked() -> None:
    batches = make_batches({"a": 3}, per_batch=3)
    first = batches[0]
    delivered = {first.message_ids[0]: "old-hash", first.message_ids[1]: first.content_hashes[1]}
    kept = filter_batches(batches, delivered, resend_changed=False)
    assert kept.changed == [first.message_ids[0]]
    assert _messages(kept.batches) == [("a", first.message_ids[2])]
    resent = filter_batches(batches, delivered, resend_changed=True)
    assert _messages(resent.batches) == [("a", first.message_ids[0]), ("a", first.message_ids[2])]


def test_filter_keeps_the_chunkers_batch_ids_for_whole_batches(tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "source": ["csv"] * 4,
            "message_id": [f"m{i}" for i in range(4)],
            "conversation_id": ["c"] * 4,
            "user_id": ["u"] * 4,
            "role": ["user"] * 4,
            "content": [f"text {i}" for i in range(4)],
            "created_at": pa.array([None] * 4, pa.timestamp("us", tz="UTC")),
            "seq": list(range(4)),
        }
    )
    two = list(chunk_table(table, ChunkLimits(max_messages=2), ChunkStats()))
    four = list(chunk_table(table, ChunkLimits(max_messages=4), ChunkStats()))
    delivered = dict(zip(two[0].message_ids, two[0].content_hashes, strict=True))
    (rest,) = filter_batches(four, delivered, False).batches
    assert rest.batch_id == two[1].batch_id  # the id the chunker gives the same messages


def test_destination_identity() -> None:
    key = "sk-live-secret-key-value"
    cfg = LoadConfig(target="memos")
    env = {"MEMOS_API_KEY": key, "MEMOS_BASE_URL": "HTTPS://Api.Example.com:443/v1/"}
    dest = destination_for(cfg, Path("w"), env=env)
    assert dest.base_url == "https://api.example.com/v1"
    assert dest.account == key_fingerprint(key) and key not in repr(dest) + dest.describe()
    other_key = destination_for(cfg, Path("w"), env={**env, "MEMOS_API_KEY": "sk-other"})
    assert other_key.id != dest.id
    local = destination_for(LoadConfig(), Path("w"), env=env)
    assert local.kind == "local" and local.id != dest.id
    assert normalize_url("http://127.0.0.1:80/") == "http://127.0.0.1"
