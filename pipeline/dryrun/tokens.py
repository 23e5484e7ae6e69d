"""The dry run's token figures: exact input tokens, counted on a sample of the batches.

A batch's `tokens` is its exact count only where a cut depended on it; elsewhere it is the
byte bound (see `pipeline.chunk.batching`), three to five times the real count on chat text.
A plan built on bounds would say a token-bound load takes several times longer than it
does. Counting every batch again would cost about as much as chunking, so the dry run counts
the first `COUNT_ALL` batches exactly and then one in `SAMPLE_EVERY` (chosen by batch id,
so the same batches every run), and scales the recorded total by the sample's ratio of exact
to recorded tokens. With fewer than `COUNT_ALL` batches every figure is exact.
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

    def add(self, batch: Batch) -> None:
        """Record one batch; count it exactly when it is in the sample."""
        self.batches += 1
        self.recorded += batch.tokens
        messages = batch.body["messages"]
        first = self.batches <= COUNT_ALL
        if first or zlib.crc32(batch.batch_id.encode()) % SAMPLE_EVERY == 0:
            counted = messages_tokens(messages)
            self.exact.append(counted)
            if not first:
                self.drawn_chars += _chars(messages)
                self.drawn_content_tokens += counted - MESSAGE_OVERHEAD * len(messages)
        else:
            self.uncounted_chars += _chars(messages)
            self.uncounted_messages += len(messages)

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
