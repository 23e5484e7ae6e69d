"""Adaptive client-side rate limit: evenly spaced request slots, AIMD on rate-limit answers.

Requests start at most `rate` per second, spaced `1/rate` apart (GCRA, the "virtual
scheduling" form of a token bucket). Slots missed while every worker was busy or the
process was descheduled may be caught up within `catch_up` seconds (at 50/s and 0.1 s:
five back-to-back requests at most), so any window of W seconds holds at most
`rate * (W + catch_up) + 1` starts — never a large burst — and no catch-up at all right
after a rate-limit answer. When the service
says "too many requests" the rate is cut multiplicatively and every slot waits out the
Retry-After; after `increase_every` seconds without a rate-limit answer it climbs back
additively toward the configured ceiling — the shape of TCP congestion control and of
Vector's adaptive request concurrency. Clock and sleep are injected so tests run instantly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class AdaptiveRateLimiter:
    """Hands out request start times; not thread-safe (one asyncio loop)."""

    def __init__(
        self,
        ceiling: float,
        *,
        clock: Clock,
        sleep: Sleep,
        decrease: float = 0.75,
        increase: float | None = None,
        increase_every: float = 1.0,
        floor: float = 0.2,
        decrease_every: float = 1.0,
        catch_up: float = 0.1,
    ) -> None:
        if ceiling <= 0:
            raise ValueError("rate ceiling must be positive")
        self.ceiling = ceiling
        self.rate = ceiling
        self.floor = min(floor, ceiling)
        self.decrease = decrease
        self.increase = increase if increase is not None else max(ceiling * 0.05, 0.5)
        self.increase_every = increase_every
        self.decrease_every = decrease_every
        self.catch_up = catch_up
        self._last_decrease = float("-inf")
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._paused_until = 0.0
        self._last_change = clock()
        self.rate_limited = 0

    async def acquire(self, weight: int = 1) -> None:
        """Wait for the next free slot (reserved before sleeping, so callers queue fairly).

        A request of `weight` N takes N slots: a MemOS group-chat request listing N user ids
        is charged N against the account's QPS limit.
        """
        now = self._clock()
        calm = now - self._last_decrease > 5 * self.decrease_every
        early = self.catch_up if calm else 0.0
        start = max(now, self._next - early, self._paused_until)
        self._next = max(self._next, start) + max(weight, 1) / self.rate
        if start > now:
            await self._sleep(start - now)

    def on_success(self) -> None:
        """Count a confirmed request; raise the rate after a quiet interval."""
        if self.rate >= self.ceiling:
            return
        now = self._clock()
        if now - self._last_change >= self.increase_every:
            self.rate = min(self.ceiling, self.rate + self.increase)
            self._last_change = now

    def on_rate_limited(self, retry_after: float | None) -> None:
        """Cut the rate and, when the server said how long, pause every slot until then.

        The rate is cut at most once per `decrease_every` seconds: the answers of requests
        already in flight when the first came are one congestion event, not many.
        """
        now = self._clock()
        self.rate_limited += 1
        if now - self._last_decrease >= self.decrease_every:
            self.rate = max(self.floor, self.rate * self.decrease)
            self._last_decrease = now
        self._last_change = now
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
        # slots already handed out keep their times; new ones are spaced at the new rate
        self._next = max(self._next, now + 1.0 / self.rate)
