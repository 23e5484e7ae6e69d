"""Loader core against a scripted in-memory MemOS (httpx.MockTransport), instant clock."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.batches import Batch
from pipeline.core.config import LoadConfig
from pipeline.core.errors import PermanentLoadError
from pipeline.incremental import delivered_message_hashes
from pipeline.load.ledger import Ledger
from pipeline.load.loader import Endpoint, load_batches
from pipeline.load.split import split_body
from pipeline.load.stats import LoadStats
from tests.loader_fakes import Fake, FakeTime, make_batches

KEY = "sk-secret-key-123"


def run_load(
    tmp_path: Path, fake: Fake, batches: list[Batch], retry_failed: bool = False, **cfg: object
) -> tuple[LoadStats, FakeTime]:
    ft = FakeTime()
    settings = {"rate": 1000.0, "max_in_flight": 4, "max_attempts": 5, **cfg}
    with Ledger.open(tmp_path) as ledger:
        stats = asyncio.run(
            load_batches(
                batches,
                ledger,
                Endpoint("http://memos.test/api", KEY),
                LoadConfig.model_validate(settings),
                transport=fake.transport(),
                clock=ft.clock,
                sleep=ft.sleep,
                rng=random.Random(1),
                retry_failed=retry_failed,
            )
        )
    return stats, ft


def expected_store(batches: list[Batch]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for b in batches:
        out.setdefault((b.user_id, b.conversation_id), []).extend(
            m["content"] for m in b.body["messages"]
        )
    return out


def statuses(tmp_path: Path, batches: list[Batch]) -> list[str]:
    with Ledger.open(tmp_path) as ledger:
        rows = ledger.rows(b.batch_id for b in batches)
    return [rows[b.batch_id].status for b in batches]


def test_delivers_every_batch_in_order_and_records_messages(tmp_path: Path) -> None:
    fake = Fake()
    batches = make_batches({"a": 10, "b": 7, "c": 1})
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete and stats.sent_batches == len(batches)
    assert dict(fake.store) == expected_store(batches)
    delivered = delivered_message_hashes(tmp_path)
    assert set(delivered) == {m for b in batches for m in b.message_ids}
    assert all(h["authorization"] == f"Token {KEY}" for h in fake.headers)
    assert all(b["async_mode"] is False for b in fake.bodies)


def test_rerun_sends_nothing(tmp_path: Path) -> None:
    fake = Fake()
    batches = make_batches({"a": 5, "b": 5})
    run_load(tmp_path, fake, batches)
    sent = len(fake.bodies)
    stats, _ = run_load(tmp_path, fake, batches)
    assert len(fake.bodies) == sent
    assert stats.already_batches == len(batches) and stats.sent_batches == 0 and stats.complete


@pytest.mark.parametrize(
    "status,code",
    [
        (500, None),
        (503, 50000),
        (200, 50002),
        (200, 50004),
        (200, 50143),
        (200, 50144),
        (502, None),
    ],
)
def test_transient_answers_are_retried_with_backoff(
    tmp_path: Path, status: int, code: int | None
) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", status, code, None)] * 2)
    batches = make_batches({"a": 4})
    stats, ft = run_load(tmp_path, fake, batches)
    assert stats.complete
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")]
    assert sum(stats.retries.values()) == 2
    assert len(ft.sleeps) >= 2  # waited between attempts


def test_network_error_before_sending_is_retried(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque(["drop_before", "drop_before"])
    batches = make_batches({"a": 3})
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete and stats.retries["lost_answer"] == 2
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")]


def test_lost_acknowledgement_is_checked_not_resent(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque(["drop_after"])
    batches = make_batches({"a": 6})
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete and stats.verified_landed == 1
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")]  # no duplicate
    assert ("get/message", "a") in fake.calls


def test_retries_exhausted_marks_failed_and_blocks_conversation(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", 503, None, None)] * 3)
    batches = make_batches({"a": 9, "b": 3})
    stats, _ = run_load(tmp_path, fake, batches, max_attempts=3)
    assert not stats.complete
    assert stats.failed == 1 and stats.blocked == 2
    assert statuses(tmp_path, batches)[:1] == ["failed"]
    assert ("u1", "a") not in fake.store  # nothing of "a" went past the failure
    assert fake.store[("u1", "b")] == expected_store(batches)[("u1", "b")]
    stats2, _ = run_load(tmp_path, fake, batches, retry_failed=True)
    assert stats2.complete
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")]


@pytest.mark.parametrize("status,code", [(429, None), (200, 40300)])
def test_rate_limit_honours_retry_after_and_cuts_rate(
    tmp_path: Path, status: int, code: int | None
) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", status, code, {"Retry-After": "7"})])
    batches = make_batches({"a": 3})
    stats, ft = run_load(tmp_path, fake, batches, rate=10.0)
    assert stats.complete and stats.retries["rate_limited"] == 1
    assert 7.0 in ft.sleeps


def test_rate_limit_without_retry_after_backs_off(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", 429, None, {"Retry-After": "0"})] * 3)
    batches = make_batches({"a": 3})
    stats, ft = run_load(tmp_path, fake, batches, rate=10.0)
    assert stats.complete and stats.retries["rate_limited"] == 3
    assert sum(ft.sleeps) > 0.1  # never a hot loop: limiter spacing plus backoff


@pytest.mark.parametrize("status,code", [(200, 40305), (413, None)])
def test_too_large_batch_is_split_in_order(tmp_path: Path, status: int, code: int | None) -> None:
    fake = Fake(max_messages=1)
    batches = make_batches({"a": 5, "b": 2}, per_batch=5)
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete and stats.split >= 2
    assert dict(fake.store) == expected_store(batches)
    assert set(delivered_message_hashes(tmp_path)) == {m for b in batches for m in b.message_ids}
    if status == 413:
        fake2 = Fake()
        fake2.script["a"] = deque([("answer", 413, None, None)])
        stats2, _ = run_load(tmp_path / "x", fake2, batches)
        assert stats2.complete and stats2.split == 1
        assert dict(fake2.store) == expected_store(batches)


def test_single_oversized_message_is_split_into_parts(tmp_path: Path) -> None:
    fake = Fake()
    long_text = " ".join(f"word{i}" for i in range(40))  # > 60 chars: the fake says too long
    batches = make_batches({"a": 1}, text=long_text)
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete
    assert "".join(fake.store[("u1", "a")]) == batches[0].body["messages"][0]["content"]
    assert len(fake.store[("u1", "a")]) > 1
    assert set(delivered_message_hashes(tmp_path)) == {"a-m0"}


def test_split_message_recorded_only_with_its_last_part(tmp_path: Path) -> None:
    body = {
        "user_id": "u",
        "conversation_id": "c",
        "messages": [{"role": "user", "content": "alpha beta gamma delta " * 20}],
    }
    pieces = split_body(body, [("m1", "h1")])
    assert len(pieces) >= 2
    assert [p[2] for p in pieces][:-1] == [[]] * (len(pieces) - 1)
    assert pieces[-1][2] == [("m1", "h1")]
    assert "".join(p[0]["messages"][0]["content"] for p in pieces) == body["messages"][0]["content"]


@pytest.mark.parametrize(
    "status,code",
    [(400, 40000), (200, 40001), (404, None), (422, None), (200, 99999), (200, 50001)],
)
def test_invalid_or_unknown_answer_fails_batch_and_run_continues(
    tmp_path: Path, status: int, code: int | None
) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", status, code, None)])
    batches = make_batches({"a": 6, "b": 6})
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.failed == 1 and stats.blocked == 1 and not stats.complete
    assert stats.failures[0]["error"].endswith("rejected")
    assert fake.store[("u1", "b")] == expected_store(batches)[("u1", "b")]
    assert ("u1", "a") not in fake.store


@pytest.mark.parametrize(
    "status,code", [(401, None), (403, None), (200, 40100), (200, 40130), (200, 40132)]
)
def test_auth_failure_stops_run_and_resumes(tmp_path: Path, status: int, code: int | None) -> None:
    fake = Fake(echo_auth=True)
    fake.script["*"] = deque([("answer", status, code, None)])
    batches = make_batches({"a": 30, "b": 30, "c": 30})
    stats, _ = run_load(tmp_path, fake, batches, max_in_flight=1)
    assert stats.stopped == "auth" and "API key rejected" in (stats.stop_message or "")
    assert KEY not in (stats.stop_message or "")
    assert stats.failed == 0 and stats.pending == len(batches)
    stats2, _ = run_load(tmp_path, fake, batches)
    assert stats2.complete
    assert dict(fake.store) == expected_store(batches)


def test_quota_exhausted_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    fake = Fake()
    batches = make_batches({"a": 9, "b": 9})
    fake.script["*"] = deque(
        [None, None, ("answer", 200, 40304, None)] + [("answer", 200, 40304, None)] * 10
    )
    stats, _ = run_load(tmp_path, fake, batches, max_in_flight=1)
    assert stats.stopped == "quota" and "quota" in (stats.stop_message or "")
    assert stats.done == 2 and stats.failed == 0 and stats.pending == len(batches) - 2
    fake.script["*"].clear()
    stats2, _ = run_load(tmp_path, fake, batches)
    assert stats2.complete and stats2.already_batches == 2
    assert dict(fake.store) == expected_store(batches)


def test_sending_row_from_a_crash_is_verified_before_resend(tmp_path: Path) -> None:
    fake = Fake()
    batches = make_batches({"a": 6})
    # simulate a crash after the first batch reached the service, before `done` was written
    with Ledger.open(tmp_path) as ledger:
        ledger.sync(batches)
        ledger.mark_sending(batches[0].batch_id)
    fake.store[("u1", "a")].extend(m["content"] for m in batches[0].body["messages"])
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.complete and stats.verified_landed == 1
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")]
    # a `sending` row whose request never arrived is sent again
    fake2 = Fake()
    with Ledger.open(tmp_path / "2") as ledger:
        ledger.sync(batches)
        ledger.mark_sending(batches[0].batch_id)
    stats2, _ = run_load(tmp_path / "2", fake2, batches)
    assert stats2.complete and stats2.verified_landed == 0
    assert fake2.store[("u1", "a")] == expected_store(batches)[("u1", "a")]


def test_api_key_never_in_ledger_or_summary(tmp_path: Path) -> None:
    fake = Fake(echo_auth=True)
    fake.script["a"] = deque([("answer", 400, 40000, None)])
    batches = make_batches({"a": 3})
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.failed == 1
    assert KEY not in str(stats.to_json())
    assert "Token ***" in stats.failures[0]["error"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))
    assert KEY.encode() not in raw
    assert "sk-" not in repr(Endpoint("http://x", KEY))


def test_heartbeat_logs_progress_when_not_a_tty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = Fake()
    batches = make_batches({"a": 6, "b": 6})
    ft = FakeTime()
    caplog.set_level("INFO", logger="memos_etl.progress")
    with Ledger.open(tmp_path) as ledger:
        asyncio.run(
            load_batches(
                batches,
                ledger,
                Endpoint("http://memos.test", None),
                LoadConfig(rate=2.0),
                transport=fake.transport(),
                clock=ft.clock,
                sleep=ft.sleep,
                heartbeat=0.5,
            )
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "memos_etl.progress"]
    assert lines and all(line.startswith("sent ") for line in lines)
    assert "/12 messages" in lines[-1]


def test_failed_piece_of_a_split_batch_fails_the_batch(tmp_path: Path) -> None:
    fake = Fake(max_messages=2)
    batches = make_batches({"a": 4, "b": 2}, per_batch=4)
    # the first half of a's split goes through, the second half is rejected
    fake.script["a"] = deque([("answer", 200, 40305, None), None, ("answer", 400, 40001, None)])
    stats, _ = run_load(tmp_path, fake, batches)
    assert stats.failed == 1 and stats.split == 1 and not stats.complete
    assert stats.failures[0]["code"] == 40001
    assert fake.store[("u1", "a")] == expected_store(batches)[("u1", "a")][:2]
    assert set(delivered_message_hashes(tmp_path)) >= {"a-m0", "a-m1"}
    fake.script["a"].clear()
    again, _ = run_load(tmp_path, fake, batches, retry_failed=True)
    assert again.complete
    assert dict(fake.store) == expected_store(batches)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=9),
)
def test_split_body_keeps_every_message_in_order(contents: list[str]) -> None:
    body = {
        "user_id": "u",
        "conversation_id": "c",
        "messages": [{"role": "user", "content": c} for c in contents],
    }
    completes = [(f"m{i}", f"h{i}") for i in range(len(contents))]
    try:
        pieces = split_body(body, completes)
    except PermanentLoadError:
        assert len(contents) == 1  # a lone message of at most one token cannot be cut
        return
    assert len(pieces) >= 2
    texts = [m["content"] for p in pieces for m in p[0]["messages"]]
    assert "".join(texts) == "".join(contents)
    assert [c for p in pieces for c in p[2]] == completes  # each recorded once, in order
    if len(contents) > 1:
        assert [m["content"] for p in pieces for m in p[0]["messages"]] == contents


def test_conversations_are_interleaved_most_remaining_first(tmp_path: Path) -> None:
    # One worker: it must not run a conversation to its end while others wait (that leaves
    # a slow tail of lone conversations at high latency); it always sends the next batch
    # of the conversation with the most batches left, so all of them drain together.
    fake = Fake()
    batches = make_batches({"a": 9, "b": 9, "c": 3}, per_batch=3)
    stats, _ = run_load(tmp_path, fake, batches, max_in_flight=1)
    assert stats.complete
    sent = [conv for name, conv in fake.calls if name == "add/message"]
    assert sent == ["a", "b", "a", "b", "a", "b", "c"]
    assert dict(fake.store) == expected_store(batches)
