"""The load plan of a dry run: calls, tokens and how long the account's budget needs for them.

An account has two budgets (`account:` in the config): requests per second and input
tokens per minute. A load takes as long as the tighter of the two allows:

    duration = max(calls / requests_per_second, tokens / tokens_per_minute * 60)

For a bulk import the token budget usually binds (large batches), unless batches are tiny:
then calls bind and most of each call's token budget goes unused. Slack's `conversation:
thread` makes one conversation per thread, and a conversation's messages can only share a
call with messages of the same conversation, so short threads mean one small call each.
When batches are tiny the plan shows what the other conversation policies would need and
recommends one that keeps each thread whole (`session`: replies join their parent's
session). The figures of the other policies are estimates from the batches: the messages of
each channel packed into full batches (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TINY_FILL = 0.10
"""Batches whose median uses under this share of `chunk.max_tokens` are "tiny"."""


def _duration(seconds: float) -> str:
    """A short human form of a duration: under 1s, 45s, 12m 5s, 3h 20m, 2d 4h."""
    if seconds < 1:
        return "under 1s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def slack_channel(conversation_id: str) -> str | None:
    """The channel part of a Slack conversation id (`slack:<channel>[:<key>]`), else None."""
    if not conversation_id.startswith("slack:"):
        return None
    head, sep, _ = conversation_id[len("slack:") :].partition(":")
    return f"slack:{head}" if sep or head else None


@dataclass
class ChannelTally:
    """Tokens and messages per Slack channel, gathered batch by batch."""

    by_channel: dict[str, list[int]] = field(default_factory=dict)

    def add(self, conversation_id: str, tokens: int, messages: int) -> None:
        """Count one batch toward its channel (other sources are ignored)."""
        channel = slack_channel(conversation_id)
        if channel is None:
            return
        tally = self.by_channel.setdefault(channel, [0, 0, 0])
        tally[0] += tokens
        tally[1] += messages
        tally[2] += 1

    def merge(self, part: ChannelTally) -> None:
        """Add the tallies of another part of the same run (another staging bucket)."""
        for channel, (tokens, messages, batches) in part.by_channel.items():
            tally = self.by_channel.setdefault(channel, [0, 0, 0])
            tally[0] += tokens
            tally[1] += messages
            tally[2] += batches

    def packed_calls(
        self, max_tokens: int, max_messages: int, token_ratio: float = 1.0
    ) -> tuple[int, int]:
        """(calls if each channel were packed into full batches, calls now) for Slack.

        `token_ratio` turns the batches' recorded tokens (some only byte bounds) into
        exact ones (`TokenSample.ratio`)."""
        packed = sum(
            max(math.ceil(t * token_ratio / max_tokens), math.ceil(m / max_messages), 1)
            for t, m, _ in self.by_channel.values()
        )
        now = sum(n for _, _, n in self.by_channel.values())
        return packed, now


def _quantile(values: Sequence[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def build_plan(
    *,
    calls: int,
    tokens: int,
    batch_tokens: Sequence[int],
    tokens_estimated: bool = False,
    token_ratio: float = 1.0,
    requests_per_second: float,
    tokens_per_minute: int | None,
    max_tokens_per_call: int,
    max_tokens: int,
    max_messages: int,
    channels: ChannelTally | None = None,
    slack_policy: str | None = None,
) -> dict[str, Any]:
    """The `plan` section of report.json (see docs/loader.md, "How to read the plan")."""

    def seconds(n_calls: int, n_tokens: int) -> float:
        by_calls = n_calls / requests_per_second
        by_tokens = n_tokens / tokens_per_minute * 60 if tokens_per_minute else 0.0
        return round(max(by_calls, by_tokens), 1)

    by_calls = round(calls / requests_per_second, 1)
    by_tokens = round(tokens / tokens_per_minute * 60, 1) if tokens_per_minute else None
    total = seconds(calls, tokens)
    median = _quantile(batch_tokens, 0.5)
    fill = median / max_tokens if max_tokens else 0.0
    tiny = bool(batch_tokens) and fill < TINY_FILL
    plan: dict[str, Any] = {
        "requests_per_second": requests_per_second,
        "tokens_per_minute": tokens_per_minute,
        "max_tokens_per_call": max_tokens_per_call,
        "calls": calls,
        "tokens": tokens,
        "tokens_estimated": tokens_estimated,
        "seconds_for_calls": by_calls,
        "seconds_for_tokens": by_tokens,
        "bound_by": "tokens" if by_tokens is not None and by_tokens > by_calls else "requests",
        "estimated_seconds": total,
        "estimated_duration": _duration(total),
        "call_budget_used": {
            "median": round(median / max_tokens_per_call, 4),
            "p90": round(_quantile(batch_tokens, 0.9) / max_tokens_per_call, 4),
            "max": round(max(batch_tokens, default=0) / max_tokens_per_call, 4),
        },
        "batch_fill_median": round(fill, 4),
        "tiny_batches": tiny,
        "policies": [],
        "recommendation": None,
    }
    if tiny:
        plan["recommendation"] = (
            f"batches are small (median {median} tokens, {fill:.0%} of chunk.max_tokens): "
            "the request budget binds and most of each call's token budget goes unused"
        )
    if tiny and channels is not None and channels.by_channel and slack_policy == "thread":
        packed, now = channels.packed_calls(max_tokens, max_messages, token_ratio)
        others = calls - now
        current = {"conversation": "thread", "calls": calls, "estimated": False}
        packed_calls = others + packed
        plan["policies"] = [
            {**current, "estimated_seconds": total, "estimated_duration": _duration(total)},
            {
                "conversation": "session",
                "calls": None,
                "calls_at_least": packed_calls,
                "estimated": True,
                "keeps_threads": True,
            },
            {
                "conversation": "channel",
                "calls": packed_calls,
                "estimated": True,
                "keeps_threads": False,
                "estimated_seconds": seconds(packed_calls, tokens),
                "estimated_duration": _duration(seconds(packed_calls, tokens)),
            },
        ]
        plan["recommendation"] = (
            f"{calls:,} calls at a median of {median} tokens: one call per Slack thread. "
            f"`conversation: session` keeps each thread whole (replies join their parent's "
            f"session) and packs a channel's quiet stretches into fuller calls: likely between "
            f"{packed_calls:,} and {calls:,} calls (validate with it for the exact figure); "
            f"`channel` would need about {packed_calls:,} calls "
            f"({_duration(seconds(packed_calls, tokens))}) but interleaves threads"
        )
    return plan
