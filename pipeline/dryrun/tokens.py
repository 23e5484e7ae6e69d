"""The dry run's token figures: exact input tokens, counted on a sample of the batches.

A batch's `tokens` is its exact count only where a cut depended on it; elsewhere it is the
byte bound (see `pipeline.chunk.batching`), three to five times the real count on chat text.
A plan built on bounds would say a token-bound load takes several times longer than it
does. Counting every batch again would cost about as much as chunking, so the dry run counts
the first `COUNT_ALL` batches exactly and then one in `SAMPLE_EVERY` (chosen by batch id,
so the same batches every run), and scales the recorded total by the sample's ratio of exact
to recorded tokens. With fewer than `COUNT_ALL` batches every figure is exact.

Buckets can be checked on several processes, each not knowing how many batches the buckets
before it hold: a bucket's `part` counts exactly as many of its first batches as may still
be among the run's first `COUNT_ALL`, and `merge` (in bucket order) keeps the figures of
exactly the batches the one-process rule would have counted.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.batches import Batch
from pipeline.core.tokens import MESSAGE_OVERHEAD, messages_tokens

COUNT_ALL = 2048
"""Batches counted exactly before sampling starts."""
SAMPLE_EVERY = 64
"""Beyond `COUNT_ALL`, one batch in this many is counted (by a checksum of its id)."""


@dataclass
class TokenSample:
    """Exact input tokens of a sample of the batches, and the estimate of their total.

    The estimate scales by characters, not by the recorded figures: the tokens per
    character of chat text vary little from batch to batch, while a batch's recorded
    `tokens` is sometimes exact and sometimes a bound four times as large.
    """

    batches: int = 0
    recorded: int = 0
    """Sum of the batches' `tokens` (exact counts or byte bounds)."""
    exact: list[int] = field(default_factory=list)
    """Exact tokens of each counted batch, in batch order."""
    uncounted_chars: int = 0
    uncounted_messages: int = 0
    """Characters and messages of the batches not counted."""
    drawn_chars: int = 0
    drawn_content_tokens: int = 0
    """Characters and content tokens (framing apart) of the batches drawn beyond the first
    `COUNT_ALL`. The ratio comes from these alone: the first batches (the first
    conversations of the first bucket) are no random sample."""
    count_first: int = COUNT_ALL
    """Batches counted exactly before sampling starts (0 in a bucket's `part`)."""
    head: int = 0
    """A `part`'s first batches kept aside in `heads`, counted exactly."""
    heads: list[tuple[int, int, int, int, bool]] = field(default_factory=list)
    """(recorded tokens, exact tokens, characters, messages, drawn) of each batch kept
    aside, in batch order: `merge` decides whether each is among the run's first."""

    @classmethod
    def part(cls, head: int) -> TokenSample:
        """One bucket's share of the sample, when at most `head` of its batches can be
        among the run's first `COUNT_ALL` (the batches before the bucket are not known)."""
        return cls(count_first=0, head=head)

    def add(self, batch: Batch) -> None:
        """Record one batch; count it exactly when it is in the sample."""
        messages = batch.body["messages"]
        drawn = zlib.crc32(batch.batch_id.encode()) % SAMPLE_EVERY == 0
        if len(self.heads) < self.head:
            counted = messages_tokens(messages)
            self.heads.append((batch.tokens, counted, _chars(messages), len(messages), drawn))
            return
        first = self.batches < self.count_first
        self.recorded += batch.tokens
        if first:
            self._counted(messages_tokens(messages), True, 0, len(messages))
        elif drawn:
            self._counted(messages_tokens(messages), False, _chars(messages), len(messages))
        else:
            self._uncounted(_chars(messages), len(messages))

    def _uncounted(self, chars: int, messages: int) -> None:
        self.batches += 1
        self.uncounted_chars += chars
        self.uncounted_messages += messages

    def _counted(self, exact: int, first: bool, chars: int, messages: int) -> None:
        """One more batch counted exactly; beyond the first ones it feeds the ratio."""
        self.batches += 1
        self.exact.append(exact)
        if not first:
            self.drawn_chars += chars
            self.drawn_content_tokens += exact - MESSAGE_OVERHEAD * messages

    def merge(self, part: TokenSample) -> None:
        """Add the next bucket's `part` (parts in bucket order): its batches kept aside
        count as first or drawn or not counted as this sample's rule says; its other
        batches are all past the first `COUNT_ALL` (the part's `head` saw to that)."""
        for tokens, exact, chars, messages, drawn in part.heads:
            first = self.batches < self.count_first
            self.recorded += tokens
            if first or drawn:
                self._counted(exact, first, chars, messages)
            else:
                self._uncounted(chars, messages)
        if part.batches and self.batches < self.count_first:
            raise ValueError("a token sample part merged out of bucket order")
        self.batches += part.batches
        self.recorded += part.recorded
        self.exact += part.exact
        self.uncounted_chars += part.uncounted_chars
        self.uncounted_messages += part.uncounted_messages
        self.drawn_chars += part.drawn_chars
        self.drawn_content_tokens += part.drawn_content_tokens

    @property
    def complete(self) -> bool:
        """True when every batch was counted (the total is exact, not estimated)."""
        return len(self.exact) == self.batches

    @property
    def ratio(self) -> float:
        """Exact (or estimated) tokens per recorded token, over all batches."""
        return self.total() / self.recorded if self.recorded else 1.0

    def total(self) -> int:
        """Input tokens of all batches: exact when `complete`, else estimated."""
        per_char = self.drawn_content_tokens / self.drawn_chars if self.drawn_chars else 0.25
        estimate = self.uncounted_chars * per_char + MESSAGE_OVERHEAD * self.uncounted_messages
        return sum(self.exact) + round(estimate)


def _chars(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages)
