"""What a load did: the counts every command and report uses (one vocabulary: sent,
verified-landed, already delivered, failed, pending, requests)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadStats:
    """What a load did; `batches == done + failed + pending` over the batches read (all of
    the batch file, unless a stop left `unread` ones)."""

    batches: int = 0
    messages: int = 0
    sent_batches: int = 0
    sent_messages: int = 0
    already_batches: int = 0
    already_messages: int = 0
    duplicate_messages: int = 0
    changed: list[str] = field(default_factory=list)
    verified_landed: int = 0
    verified_messages: int = 0
    split: int = 0
    requests: int = 0
    peak_in_flight: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    done: int = 0
    failed: int = 0
    pending: int = 0
    blocked: int = 0
    unread: int = 0
    """Batches of the batch file a stop left unread (not counted above, not in the ledger
    yet: the next run reads them)."""
    duration: float = 0.0
    started_at: float = 0.0
    """Wall-clock (epoch) second the load began; 0 when not recorded. Engines add up
    bucket loads that overlap only in part, so they need when each ran, not only how long."""
    stopped: str | None = None
    stop_message: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    redacted: Counter[str] = field(default_factory=Counter)
    """Matches masked in the batches this load sent, per kind (from the batch file)."""
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every batch of the batch file is confirmed delivered."""
        return self.done == self.batches

    def to_json(self) -> dict[str, Any]:
        """The JSON summary printed by `load --json`."""
        rps = self.requests / self.duration if self.duration > 0 else 0.0
        return {
            "batches": self.batches,
            "messages": self.messages,
            "sent": {"batches": self.sent_batches, "messages": self.sent_messages},
            "already_delivered": {
                "batches": self.already_batches,
                "messages": self.already_messages,
            },
            "duplicates_skipped": self.duplicate_messages,
            "changed_not_resent": len(self.changed),
            "verified_landed": self.verified_landed,
            "verified_messages": self.verified_messages,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "blocked": self.blocked,
            "unread": self.unread,
            "split": self.split,
            "requests": self.requests,
            "peak_in_flight": self.peak_in_flight,
            "retries": dict(sorted(self.retries.items())),
            "requests_per_s": round(rps, 2),
            "duration_s": round(self.duration, 3),
            "complete": self.complete,
            "stopped": self.stopped,
            "stop_message": self.stop_message,
            "failures": self.failures,
            "redacted": dict(sorted(self.redacted.items())),
            "limits": self.limits,
        }


def run_counts(stats: LoadStats) -> dict[str, Any]:
    """A load's counts in the one vocabulary of `history`, `status` and the summaries:
    sent (newly delivered by a request of this run), verified (found already landed after
    an uncertain send; not resent), already (delivered before), failed, pending, requests."""
    return {
        "sent": stats.sent_messages,
        "verified": stats.verified_messages,
        "already": stats.already_messages,
        "failed": stats.failed,
        "pending": stats.pending,
        "requests": stats.requests,
        "duration_s": round(stats.duration, 3),
        "stopped": stats.stopped,
    }
