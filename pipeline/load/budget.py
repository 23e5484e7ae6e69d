"""The budget a loader asks before every request: what `pipeline.load.ratelimit.AccountLimiter`
offers, as a protocol, so one account's budget can live elsewhere.

A load owns its limiter by default. When several loads deliver into one MemOS account at
once (the engines in `pipeline.engines`: one load per bucket), they must share that
account's requests/s and tokens/min, so each is handed the same budget: the in-process
engine passes one `AccountLimiter`, the Ray engine a client of an actor holding it.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.load.ratelimit import Ticket


class Budget(Protocol):
    """Admission and feedback of one account's request and token budgets."""

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> Ticket:
        """Wait until a request of this weight may start; its ticket goes to the feedback.

        The loader cancels the wait when the load stops before the request left: what the
        budget reserved for it must then not count as sent (a slot may stay unused, never
        be handed out twice), since a rejection's count would otherwise include it."""
        ...

    def on_success(self, ticket: Ticket | None = None) -> None:
        """The request was accepted."""

    def on_rate_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        """The server said too many requests."""

    def on_token_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        """The server said too many tokens this minute."""

    @property
    def rate(self) -> float | None:
        """Current requests-per-second budget (None: unlimited)."""
        ...

    @property
    def tokens_per_minute(self) -> float | None:
        """Current input-tokens-per-minute budget (None: unlimited)."""
        ...

    @property
    def learned_rate(self) -> float | None:
        """Requests/s the server last rejected at."""
        ...

    @property
    def learned_tokens_per_minute(self) -> float | None:
        """Tokens/min the server last rejected at."""
        ...

    @property
    def rate_limited(self) -> int:
        """Requests answered "too many requests"."""
        ...

    @property
    def token_limited(self) -> int:
        """Requests answered "too many tokens this minute"."""
        ...
