"""The dry run bucket by bucket: figures of each staging bucket, added up into the report's.

Staging is bucketed by conversation, so every per-row and per-conversation figure of the
report is a sum over buckets: counts add, conversation sizes concatenate, per-user counts
and per-user conversation counts add (a conversation, hence each of its owner's
conversations, is in one bucket), examples are the first ones found. The timeline is kept
per day and source and re-cut into weeks or months once the whole span is known. A
duplicate message id is found within a bucket: the same export staged twice puts both
copies in one bucket (the chunker leaves duplicates out per bucket too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dryrun import checks


def merge_findings(parts: list[checks.Finding]) -> checks.Finding:
    """One finding of a check from its findings per bucket (counts added, first examples)."""
    first = parts[0]
    count = sum(p.count for p in parts)
    examples = [e for p in parts for e in p.examples][: checks.MAX_EXAMPLES]
    if first.id == "out_of_order":
        conversations = sum(int(p.details.get("conversations", 0)) for p in parts)
        return checks._order_finding(count, conversations, examples)
    return replace(first, count=count, examples=examples)


def merge_scans(parts: list[checks.Finding], policy: Any) -> checks.Finding:
    """`checks.secrets` / `checks.personal_data` (found without a policy, per bucket) added
    up, then restated under `policy`."""
    first = parts[0]
    by_kind: Counter[str] = Counter()
    for p in parts:
        by_kind.update(p.details["by_kind"])
    per_kind = {k: by_kind[k] for k in first.details["by_kind"]}
    base = first.description.split(" By kind: ")[0]
    shown = ", ".join(f"{k}: {n}" for k, n in per_kind.items() if n)
    merged = replace(
        first,
        count=sum(p.count for p in parts),
        examples=[e for p in parts for e in p.examples][: checks.MAX_EXAMPLES],
        description=f"{base} By kind: {shown}." if shown else base,
        details={"by_kind": per_kind},
    )
    return merged if policy is None else checks._under_policy(merged, policy)


@dataclass
class AggregateParts:
    """Per-conversation, per-user and per-day figures, added up bucket by bucket."""

    top_n: int
    conversation_sizes: list[int] = field(default_factory=list)
    largest: list[dict[str, Any]] = field(default_factory=list)
    user_counts: Counter[str] = field(default_factory=Counter)
    user_conversations: Counter[str] = field(default_factory=Counter)
    days: Counter[tuple[str, date]] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None

    def add(self, table: pa.Table) -> None:
        """Add one bucket's rows (`user_id`, `conversation_id`, `seq`, `label`, `created_at`)."""
        if table.num_rows == 0:
            return
        convs = table.group_by(["user_id", "conversation_id"]).aggregate(
            [("seq", "count"), ("label", "min"), ("created_at", "min"), ("created_at", "max")]
        )
        self.conversation_sizes += convs.column("seq_count").to_pylist()
        convs = convs.sort_by(
            [
                ("seq_count", "descending"),
                ("user_id", "ascending"),
                ("conversation_id", "ascending"),
            ]
        )
        self.largest += convs.slice(0, self.top_n).to_pylist()
        users = table.group_by("user_id").aggregate(
            [("seq", "count"), ("conversation_id", "count_distinct")]
        )
        for user, n, c in zip(
            users.column("user_id").to_pylist(),
            users.column("seq_count").to_pylist(),
            users.column("conversation_id_count_distinct").to_pylist(),
            strict=True,
        ):
            self.user_counts[user] += n
            self.user_conversations[user] += c
        timed = table.select(["label", "created_at"]).filter(
            pc.is_valid(table.column("created_at"))
        )
        if timed.num_rows == 0:
            return
        bounds = pc.min_max(timed.column("created_at")).as_py()
        self.first = bounds["min"] if self.first is None else min(self.first, bounds["min"])
        self.last = bounds["max"] if self.last is None else max(self.last, bounds["max"])
        day = pc.floor_temporal(timed.column("created_at"), unit="day")
        grouped = (
            pa.table({"source": timed.column("label"), "day": day})
            .group_by(["source", "day"])
            .aggregate([("day", "count")])
        )
        for r in grouped.to_pylist():
            self.days[(r["source"], r["day"].date())] += r["day_count"]

    def merge(self, part: AggregateParts) -> None:
        """Add the figures of the next bucket, figured apart (`add` on a fresh instance):
        the same as `add`ing that bucket's rows here."""
        self.conversation_sizes += part.conversation_sizes
        self.largest += part.largest
        self.user_counts.update(part.user_counts)
        self.user_conversations.update(part.user_conversations)
        self.days.update(part.days)
        if part.first is not None:
            self.first = part.first if self.first is None else min(self.first, part.first)
        if part.last is not None:
            self.last = part.last if self.last is None else max(self.last, part.last)

    def largest_conversations(self) -> list[dict[str, Any]]:
        """The `top_n` largest conversations (most messages; then by user and conversation)."""
        rows = sorted(
            self.largest, key=lambda r: (-r["seq_count"], r["user_id"], r["conversation_id"])
        )
        return rows[: self.top_n]

    def timeline(
        self, max_days: int, max_weeks: int
    ) -> tuple[str, dict[str, list[tuple[str, int]]]]:
        """Timed messages per source per day, week or month (the finest that fits the span)."""
        if self.first is None or self.last is None:
            return "day", {}
        days = (self.last - self.first).days
        unit = "day" if days <= max_days else "week" if days <= max_weeks * 7 else "month"
        counts: Counter[tuple[str, date]] = Counter()
        for (source, day), n in self.days.items():
            if unit == "week":
                day = day - timedelta(days=day.weekday())
            elif unit == "month":
                day = day.replace(day=1)
            counts[(source, day)] += n
        series: dict[str, list[tuple[str, int]]] = {}
        for (source, day), n in sorted(counts.items()):
            series.setdefault(source, []).append((day.isoformat(), n))
        return unit, series
