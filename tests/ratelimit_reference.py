"""The request limiter the account limiter replaced, kept as the reference to beat.

Used by the limiter simulation tests and by tests/bench/bench_limits.py (side by side).
"""

from __future__ import annotations

from typing import Any


class OldAimd:
    """The limiter before account budgets: cut by 25% and pause every slot for the
    Retry-After on each rejection, climb back 5% of the ceiling every quiet second."""

    def __init__(self, ceiling: float, *, clock: Any, sleep: Any) -> None:
        self.ceiling = self.rate = ceiling
        self.increase = max(ceiling * 0.05, 0.5)
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._paused_until = 0.0
        self._last_change = clock()
        self._last_decrease = float("-inf")

    async def acquire(self, requests: float = 1, tokens: float = 0) -> None:
        now = self._clock()
        early = 0.1 if now - self._last_decrease > 5.0 else 0.0
        start = max(now, self._next - early, self._paused_until)
        self._next = max(self._next, start) + 1.0 / self.rate
        if start > now:
            await self._sleep(start - now)

    def on_success(self, ticket: Any = None) -> None:
        now = self._clock()
        if self.rate < self.ceiling and now - self._last_change >= 1.0:
            self.rate = min(self.ceiling, self.rate + self.increase)
            self._last_change = now

    def on_rate_limited(self, retry_after: float | None, ticket: Any = None) -> None:
        now = self._clock()
        if now - self._last_decrease >= 1.0:
            self.rate = max(0.2, self.rate * 0.75)
            self._last_decrease = now
        self._last_change = now
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        self._next = max(self._next, now + 1.0 / self.rate)

    def on_token_limited(self, retry_after: float | None, ticket: Any = None) -> None:
        self.on_rate_limited(retry_after, ticket)
