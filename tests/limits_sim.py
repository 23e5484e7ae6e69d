"""The real loader against a simulated rate-limited server, on a virtual clock (instant).

`simulate_load` runs `load_batches` (limiter, in-flight gate, retries, ledger) in an asyncio
event loop whose clock jumps to the next timer instead of waiting, against a server that
admits requests exactly as `memos-etl serve --limit-mode` does (`pipeline.server.faults.Window`,
decided on arrival, answered one latency later with Retry-After: 1). A 30-second load runs in
about a second of CPU, so the limiter tests can cover every limit mode and latency of the
benchmark grid (`tests/bench/bench_limits.py`) with exact, repeatable figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import selectors
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from pipeline.core.batches import Batch
from pipeline.core.config import AccountConfig, LoadConfig
from pipeline.core.tokens import count_tokens
from pipeline.load.ledger import Ledger
from pipeline.load.loader import load_batches
from pipeline.load.stats import LoadStats
from pipeline.load.targets import Endpoint
from pipeline.server.faults import LimitMode, Window
from tests.loader_fakes import make_batches

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for the next timer moves the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0 and self.loop is not None:
            self.loop.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: `time()` only moves when every task waits."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run_virtual(main: Callable[[VirtualLoop], Coroutine[Any, Any, T]]) -> T:
    """Run `main(loop)` to completion on a fresh virtual-time loop."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


@dataclass
class SimResult:
    """What the simulated server saw, and the loader's own account of the run."""

    seconds: float
    accepted: int
    rate_limited: int
    token_limited: int
    tokens: int
    exactly_once: bool
    stats: LoadStats
    timeline: list[tuple[float, int]]
    """(seconds since the start, body code) of every answer."""

    @property
    def sent(self) -> int:
        return self.accepted + self.rate_limited + self.token_limited

    def share(self, ceiling: float) -> float:
        """Accepted requests per second over the run, as a share of `ceiling`."""
        return self.accepted / self.seconds / ceiling

    @property
    def rejected_share(self) -> float:
        return (self.rate_limited + self.token_limited) / max(1, self.sent)


def small_batches(n: int, conversations: int = 300, words: int = 1) -> list[Batch]:
    """About `n` batches of 2 messages over `conversations` conversations (the bench's)."""
    per_conv = max(1, n // conversations)
    text = " ".join(["benchmark"] * words)
    return make_batches(
        {f"conv-{i:03d}": per_conv * 2 for i in range(conversations)}, per_batch=2, text=text
    )


def token_bound_batches(seconds: int, tpm: int = 60_000, words: int = 50) -> list[Batch]:
    """About `seconds` of work at `tpm` in calls of two ~55-token messages, each batch
    carrying its exact token count (the token-bound runs of the test and the bench)."""
    per_call = 2 * count_tokens(" ".join(["benchmark"] * words) + " conv-000 0")
    return [
        dataclasses.replace(b, tokens=sum(count_tokens(m["content"]) for m in b.body["messages"]))
        for b in small_batches(tpm * seconds // 60 // per_call, 40, words)
    ]


def simulate_load(
    batches: list[Batch],
    *,
    mode: LimitMode,
    qps: float,
    latency: float,
    rate: float,
    tpm: int | None = None,
    account_tpm: int | None = None,
    jitter: float = 0.003,
    seed: int = 7,
) -> SimResult:
    """Load `batches` with `--rate rate` into a server allowing `qps` requests/s (and `tpm`
    input tokens/min, batches weighing their `tokens`), counted in `mode`."""

    async def main(loop: VirtualLoop) -> SimResult:
        rng = random.Random(seed)
        requests = Window(mode, qps, 1.0, loop.time())
        token_window = Window(mode, tpm, 60.0, loop.time()) if tpm else None
        codes: Counter[int] = Counter()
        stored: Counter[str] = Counter()
        tokens_of = {b.batch_id: b.tokens for b in batches}
        by_first = {b.body["messages"][0]["content"]: b.batch_id for b in batches}
        accepted_tokens = 0
        last_answer = started = loop.time()
        timeline: list[tuple[float, int]] = []

        async def handle(request: httpx.Request) -> httpx.Response:
            nonlocal accepted_tokens, last_answer
            await asyncio.sleep(rng.uniform(0, jitter))  # on the way to the server
            body = orjson.loads(request.content)
            batch_id = by_first.get(body["messages"][0]["content"], "")
            tokens = tokens_of.get(batch_id, 0)
            now = loop.time()
            code, retry_after = 0, 0.0
            if requests.admit(now, 1):
                code, retry_after = 40300, 1.0
            elif token_window is not None and tokens:
                wait = token_window.admit(now, tokens)
                if wait:
                    code, retry_after = 40309, round(wait + 0.05, 1)
            await asyncio.sleep(latency)
            codes[code] += 1
            last_answer = loop.time()
            timeline.append((last_answer - started, code))
            if code:
                return httpx.Response(
                    429,
                    json={"code": code, "message": "slow down"},
                    headers={"retry-after": str(retry_after)},
                )
            accepted_tokens += tokens
            for m in body["messages"]:
                stored[m["content"]] += 1
            return httpx.Response(
                200, json={"code": 0, "message": "ok", "data": {"success": True, "task_id": "t"}}
            )

        cfg = LoadConfig.model_validate({"max_attempts": 30, "timeout": 60.0})
        account = AccountConfig(requests_per_second=rate, tokens_per_minute=account_tpm)
        with tempfile.TemporaryDirectory() as tmp, Ledger.open(Path(tmp)) as ledger:
            stats = await load_batches(
                batches,
                ledger,
                Endpoint("http://sim.invalid"),
                cfg,
                transport=httpx.MockTransport(handle),
                clock=loop.time,
                sleep=asyncio.sleep,
                rng=random.Random(seed),
                account=account,
            )
        expected = Counter(m["content"] for b in batches for m in b.body["messages"])
        return SimResult(
            seconds=last_answer - started,
            accepted=codes[0],
            rate_limited=codes[40300],
            token_limited=codes[40309],
            tokens=accepted_tokens,
            exactly_once=stored == expected,
            stats=stats,
            timeline=timeline,
        )

    return run_virtual(main)
