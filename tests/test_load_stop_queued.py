"""A stop sends nothing more: requests still waiting for the rate budget, the in-flight
gate or a retry's backoff give up, and their batches are not left `sending`.

The clock is frozen and every budget wait lasts until the test releases it (`Held`), so
the requests queued at the stop are exactly those behind the first one. The release comes
after the stop: a loader that let queued requests leave would send them then."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from pipeline.core.batches import Batch
from pipeline.core.config import LoadConfig
from pipeline.load.ledger import Ledger, Row
from pipeline.load.loader import load_batches
from pipeline.load.stats import LoadStats
from pipeline.load.targets import Endpoint
from tests.loader_fakes import Fake, make_batches

RELEASE_AFTER = 0.3
"""Real seconds after the stop at which held waits end (a loader ignoring the stop sends
its queued requests then)."""


class Held:
    """A sleep that lasts until `release()`, whatever it was asked for."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await self.released.wait()

    def release(self) -> None:
        self.released.set()


def interrupting(fake: Fake, held: Held, *, first: Callable[[], None]) -> httpx.MockTransport:
    """`fake` behind a transport that runs `first` while the first request is in flight
    (before answering it), and releases the held waits a little later."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if not fake.calls:
            first()
            asyncio.get_running_loop().call_later(RELEASE_AFTER, held.release)
            for _ in range(5):  # the loop runs a signal handler before the answer
                await asyncio.sleep(0.01)
        return await fake.handle(request)

    return httpx.MockTransport(handle)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def load(
    tmp_path: Path,
    batches: list[Batch],
    transport: httpx.MockTransport,
    held: Held,
    *,
    rate: float | None,
    on_settled: Callable[[str], None] | None = None,
) -> Awaitable[LoadStats]:
    async def run() -> LoadStats:
        with Ledger.open(tmp_path) as ledger:
            return await load_batches(
                batches,
                ledger,
                Endpoint("http://memos.test", None),
                LoadConfig(rate=rate, max_in_flight=None, max_attempts=3),
                transport=transport,
                clock=lambda: 1000.0,
                sleep=held,
                rng=random.Random(1),
                handle_signals=True,
                on_settled=on_settled,
            )

    return run()


def rows(tmp_path: Path, batches: list[Batch]) -> dict[str, Row]:
    with Ledger.open(tmp_path) as ledger:
        return ledger.rows(b.batch_id for b in batches)


def fail_on_first_settle(batch_id: str) -> None:
    raise RuntimeError("disk full")


@pytest.mark.parametrize("stop", ["interrupted", "quota", "error"])
def test_a_stop_sends_none_of_the_requests_waiting_for_the_budget_or_the_gate(
    tmp_path: Path, stop: str
) -> None:
    """30 conversations at 1 request/s: the first request leaves, 15 workers wait for
    the budget and 14 for the in-flight gate (16 at first). A Ctrl-C, a quota answer or a
    fatal error then sends nothing more, and leaves the 29 batches pending, unsent."""
    fake = Fake()
    held = Held()
    if stop == "quota":
        fake.script["*"] = deque([("answer", 200, 40304, None)])
    batches = make_batches({f"c{i:02d}": 2 for i in range(30)}, per_batch=2)
    transport = interrupting(fake, held, first=ctrl_c if stop == "interrupted" else lambda: None)
    run = load(
        tmp_path,
        batches,
        transport,
        held,
        rate=1.0,
        on_settled=fail_on_first_settle if stop == "error" else None,
    )
    if stop == "error":
        with pytest.raises(RuntimeError, match="disk full"):
            asyncio.run(run)
    else:
        stats = asyncio.run(run)
        assert stats.stopped == stop
        assert stats.requests == 1 and stats.pending == len(batches) - stats.done
    assert len(fake.calls) == 1  # nothing left after the stop
    first = fake.bodies[0]["conversation_id"]
    got = rows(tmp_path, batches)
    for batch in batches:
        row = got[batch.batch_id]
        if batch.conversation_id == first:
            assert row.attempts == 1
            assert row.status == ("pending" if stop == "quota" else "done")
        else:
            assert (row.status, row.uncertain, row.attempts) == ("pending", False, 0)


def test_a_stop_during_a_retrys_backoff_sends_no_retry_and_leaves_the_batch_pending(
    tmp_path: Path,
) -> None:
    """The first request was answered 500 (certainly not stored): the retry waiting for its
    backoff gives up at the Ctrl-C, and the batch goes back to pending, its error kept."""
    fake = Fake()
    fake.script["*"] = deque([("answer", 500, None, None)])
    held = Held()
    batches = make_batches({"a": 2}, per_batch=2)

    async def handle(request: httpx.Request) -> httpx.Response:
        if not fake.calls:  # Ctrl-C once the worker waits for its retry
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, ctrl_c)
            loop.call_later(RELEASE_AFTER, held.release)
        return await fake.handle(request)

    stats = asyncio.run(load(tmp_path, batches, httpx.MockTransport(handle), held, rate=None))
    assert stats.stopped == "interrupted" and stats.requests == 1
    assert len(fake.calls) == 1
    row = rows(tmp_path, batches)[batches[0].batch_id]
    assert (row.status, row.uncertain, row.attempts) == ("pending", False, 1)
    assert row.error_message == "HTTP 500: rejected"


def _ctrl_c_with_one_sending(
    tmp_path: Path, batches: list[Batch], sending: Batch
) -> tuple[Fake, LoadStats]:
    """A load at 1 request/s, stopped by Ctrl-C once its first request is held, of
    `batches` of which `sending` was left `sending` by an earlier run."""
    fake, held = Fake(), Held()
    with Ledger.open(tmp_path) as ledger:
        ledger.sync(batches)
        ledger.mark_sending(sending.batch_id)
    transport = interrupting(fake, held, first=ctrl_c)
    return fake, asyncio.run(load(tmp_path, batches, transport, held, rate=1.0))


def test_a_batch_left_sending_by_an_earlier_run_stays_uncertain_when_its_check_is_given_up(
    tmp_path: Path,
) -> None:
    """`b` was `sending` when an earlier run died: its read-back waits for the budget
    behind `a`'s request, and a Ctrl-C gives it up. `b` may still have landed, so it stays
    `sending` (the next run reads it back); `a`, never sent before, is delivered."""
    batches = make_batches({"a": 2, "b": 2}, per_batch=2)
    fake, stats = _ctrl_c_with_one_sending(tmp_path, batches, batches[1])
    assert stats.stopped == "interrupted"
    assert fake.calls == [("add/message", "a")]
    got = rows(tmp_path, batches)
    assert got[batches[0].batch_id].status == "done"
    b = got[batches[1].batch_id]
    assert (b.status, b.uncertain, b.attempts) == ("sending", True, 1)


def test_a_batch_read_back_as_not_landed_goes_back_to_pending_when_its_send_is_given_up(
    tmp_path: Path,
) -> None:
    """`a` was `sending` when an earlier run died; the read-back finds it did not land, and
    a Ctrl-C keeps its request from leaving: it is pending again, no longer uncertain, so
    the next run sends it without reading it back."""
    batches = make_batches({"a": 2}, per_batch=2)
    fake, stats = _ctrl_c_with_one_sending(tmp_path, batches, batches[0])
    assert stats.stopped == "interrupted"
    assert fake.calls == [("get/message", "a")]
    row = rows(tmp_path, batches)[batches[0].batch_id]
    assert (row.status, row.uncertain, row.attempts) == ("pending", False, 1)
