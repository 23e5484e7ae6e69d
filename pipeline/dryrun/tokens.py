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
from dataclasses import dataclass, field

from pipeline.core.batches import Batch
from pipeline.core.tokens import messages_tokens

COUNT_ALL = 2048
"""Batches counted exactly before sampling starts."""
SAMPLE_EVERY = 64
"""Beyond `COUNT_ALL`, one batch in this many is counted (by a checksum of its id)."""


@dataclass
class TokenSample:
    """Exact input tokens of a sample of the batches, and the estimate of their total."""

    batches: int = 0
    recorded: int = 0
    """Sum of the batches' `tokens` (exact counts or byte bounds)."""
    sampled_recorded: int = 0
    exact: list[int] = field(default_factory=list)
    """Exact tokens of each counted batch, in batch order."""

    def add(self, batch: Batch) -> None:
        """Record one batch; count it exactly when it is in the sample."""
        self.batches += 1
        self.recorded += batch.tokens
        if self.batches <= COUNT_ALL or zlib.crc32(batch.batch_id.encode()) % SAMPLE_EVERY == 0:
            self.sampled_recorded += batch.tokens
            self.exact.append(messages_tokens(batch.body["messages"]))

    @property
    def complete(self) -> bool:
        """True when every batch was counted (the total is exact, not estimated)."""
        return len(self.exact) == self.batches

    @property
    def ratio(self) -> float:
        """Exact tokens per recorded token over the sample (1.0 with nothing sampled)."""
        return sum(self.exact) / self.sampled_recorded if self.sampled_recorded else 1.0

    def total(self) -> int:
        """Input tokens of all batches: exact when `complete`, else estimated."""
        counted = sum(self.exact)
        return counted + round((self.recorded - self.sampled_recorded) * self.ratio)
