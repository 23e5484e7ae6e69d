"""The account limiter against simulated servers, on an injected clock (instant).

A simulated client sends from an endless backlog through a limiter; a simulated server
counts requests (and tokens) exactly as `memos-etl serve --limit-mode` does
(`pipeline.server.faults.Window`); answers come back one latency later. The figures are
exact functions of the simulation, not timings: share of the server's ceiling used and
share of requests rejected. The limiter this replaced is kept here as the reference the
new one must beat: under a strict sliding window it oscillates well below the ceiling.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.load.ratelimit import AccountLimiter
from pipeline.server.faults import LimitMode, Window
from tests.loader_fakes import FakeTime
from tests.ratelimit_reference import OldAimd


@dataclass
class Outcome:
    accepted: int = 0
    rate_limited: int = 0
    token_limited: int = 0
    tokens: int = 0

    @property
    def sent(self) -> int:
        return self.accepted + self.rate_limited + self.token_limited


def simulate(
    limiter: Any,
    ft: FakeTime,
    *,
    mode: LimitMode,
    qps: float,
    latency: float,
    seconds: float,
    tpm: float | None = None,
    tokens_per_call: int = 0,
    jitter: float = 0.004,
) -> Outcome:
    """Send for `seconds`; the server admits by arrival time (start + up to `jitter`)."""
    rng = random.Random(7)
    server = Window(mode, qps, 1.0, ft.now)
    token_server = Window(mode, tpm, 60.0, ft.now) if tpm else None
    out = Outcome()
    answers: list[tuple[float, int, Any, str, float]] = []
    end = ft.now + seconds
    seq = 0

    def answer_due() -> None:
        while answers and answers[0][0] <= ft.now:
            at, _, ticket, kind, retry_after = heapq.heappop(answers)
            now, ft.now = ft.now, at
            if kind == "ok":
                limiter.on_success(ticket)
            elif kind == "rate":
                limiter.on_rate_limited(retry_after, ticket)
            else:
                limiter.on_token_limited(retry_after, ticket)
            ft.now = now

    async def run() -> None:
        nonlocal seq
        while ft.now < end:
            answer_due()
            before = ft.now
            ticket = await limiter.acquire(requests=1, tokens=tokens_per_call)
            if ft.now == before:
                ft.now += 1e-4  # a send costs a little time even when a slot is free
            arrival = ft.now + rng.uniform(0, jitter)
            kind, retry_after = "ok", 0.0
            if server.admit(arrival, 1):
                kind, retry_after = "rate", 1.0
            elif token_server is not None:
                wait = token_server.admit(arrival, tokens_per_call)
                if wait:
                    kind, retry_after = "tokens", wait
            if kind == "ok":
                out.accepted += 1
                out.tokens += tokens_per_call
            elif kind == "rate":
                out.rate_limited += 1
            else:
                out.token_limited += 1
            seq += 1
            heapq.heappush(answers, (ft.now + latency, seq, ticket, kind, retry_after))

    asyncio.run(run())
    return out


CEILING = 50.0


@pytest.mark.parametrize("mode", ["sliding", "fixed", "bucket"])
@pytest.mark.parametrize("latency", [0.2, 1.0])
@pytest.mark.parametrize("over", [1.0, 2.0])
def test_holds_90_percent_of_the_ceiling_with_under_1_percent_rejected(
    mode: LimitMode, latency: float, over: float
) -> None:
    ft = FakeTime()
    limiter = AccountLimiter(CEILING * over, None, clock=ft.clock, sleep=ft.sleep)
    seconds = 300.0
    out = simulate(limiter, ft, mode=mode, qps=CEILING, latency=latency, seconds=seconds)
    share = out.accepted / (CEILING * seconds)
    rejected = out.rate_limited / out.sent
    assert share >= 0.90, (share, rejected, limiter.rate)
    assert rejected <= 0.01, (share, rejected, limiter.rate)
    if over > 1:
        assert limiter.learned_rate is not None  # it met the ceiling and learned it


@pytest.mark.parametrize("latency", [0.2, 1.0])
def test_old_limiter_oscillates_under_a_sliding_window(latency: float) -> None:
    """The behaviour this replaced: a cut, a one-second pause, a climb straight back."""
    ft = FakeTime()
    old = OldAimd(CEILING, clock=ft.clock, sleep=ft.sleep)
    out = simulate(old, ft, mode="sliding", qps=CEILING, latency=latency, seconds=120.0)
    share = out.accepted / (CEILING * 120.0)
    assert share < 0.85, share


def test_token_bound_run_holds_90_percent_of_the_tpm() -> None:
    ft = FakeTime()
    tpm = 60_000.0  # 1,000 tokens/s; calls of 400 tokens: 2.5 calls/s, far below 50/s
    limiter = AccountLimiter(CEILING, tpm, clock=ft.clock, sleep=ft.sleep)
    seconds = 600.0
    out = simulate(
        limiter,
        ft,
        mode="sliding",
        qps=CEILING,
        tpm=tpm,
        tokens_per_call=400,
        latency=0.2,
        seconds=seconds,
    )
    share = out.tokens / (tpm * seconds / 60.0)
    assert share >= 0.90, share
    assert out.token_limited / out.sent <= 0.01
    assert out.rate_limited == 0


def test_token_budget_learns_a_smaller_share_of_the_account() -> None:
    """Another pipeline spends half the account's tokens: the limiter learns the rest."""
    ft = FakeTime()
    limiter = AccountLimiter(CEILING, 120_000, clock=ft.clock, sleep=ft.sleep)
    out = simulate(
        limiter,
        ft,
        mode="sliding",
        qps=CEILING,
        tpm=60_000,  # what is left for this pipeline
        tokens_per_call=400,
        latency=0.2,
        seconds=600.0,
    )
    share = out.tokens / (60_000 * 10)
    assert share >= 0.85, share
    learned = limiter.tokens_per_minute
    assert learned is not None and learned <= 62_000
    assert out.token_limited / out.sent <= 0.02
