"""Chunk stage: staged rows -> per-conversation addMessage batches within the API limits.

Batches never mix conversations, keep each conversation's messages in (created_at, seq)
order, and hold at most `max_messages` messages and `max_tokens` tokens. A message larger
than the budget is cut into ordered parts (never truncated); ids longer than the API's
100 characters get a deterministic short form, the original kept in `info`. A batch
carries the configured `tags` of the sources its messages were staged by.

Redaction happens here, once, on the content that is sent (`pipeline.core.redact`): the
staging table keeps the original, so a policy change only needs a new chunk. Batch ids
and content hashes are those of the redacted content, so the ledger records what was
actually sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.batches import Batch, write_batches, write_json_atomic
from pipeline.core.memos_api import api_id, chat_time
from pipeline.core.models import content_hash, stable_id
from pipeline.core.redact import DEFAULT_POLICY, Policy, redact
from pipeline.core.staging import read_labeled, staged_sources
from pipeline.core.tokens import MESSAGE_OVERHEAD, count_tokens, count_tokens_many, split_by_tokens
from pipeline.core.workdir import manifest_path

DROPPED_EXAMPLES = 20
"""Dropped messages listed by id in the chunk stats (and the dry-run report)."""

CHUNK_COLUMNS = [
    "source",
    "message_id",
    "conversation_id",
    "user_id",
    "role",
    "content",
    "created_at",
    "seq",
]


@dataclass(frozen=True)
class ChunkLimits:
    """Per-request limits: the API's token limit (4,000 on older accounts) and a message cap."""

    max_tokens: int = 4000
    max_messages: int = 50


@dataclass
class ChunkStats:
    """What a chunk run produced; `messages == batched + excluded + dropped`."""

    messages: int = 0
    batched: int = 0
    excluded: int = 0
    dropped: int = 0
    """Messages the redaction policy left out (`drop-message`)."""
    batches: int = 0
    conversations: int = 0
    users: int = 0
    tokens: int = 0
    split_messages: int = 0
    shortened_ids: dict[str, str] = field(default_factory=dict)
    masked: Counter[str] = field(default_factory=Counter)
    """Matches masked in the batched messages, per kind."""
    masked_messages: int = 0
    """Batched messages with at least one masked match."""
    dropped_by_kind: Counter[str] = field(default_factory=Counter)
    """Dropped messages per kind that matched (a message can count under several kinds)."""
    dropped_examples: list[dict[str, Any]] = field(default_factory=list)
    """The first few dropped messages: ids and kinds only, never content."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form printed by `chunk --json` and kept in the manifest."""
        return {
            "messages": self.messages,
            "batched": self.batched,
            "excluded": self.excluded,
            "dropped": self.dropped,
            "batches": self.batches,
            "conversations": self.conversations,
            "users": self.users,
            "tokens": self.tokens,
            "split_messages": self.split_messages,
            "shortened_ids": len(self.shortened_ids),
            "redacted": {
                "masked": dict(sorted(self.masked.items())),
                "masked_messages": self.masked_messages,
                "dropped": dict(sorted(self.dropped_by_kind.items())),
                "dropped_messages": self.dropped,
            },
        }


@dataclass(frozen=True, slots=True)
class _Row:
    source: str
    message_id: str
    role: str
    content: str
    created_at: datetime | None
    seq: int
    tokens: int
    label: str | None = None
    """The configured name of the source that staged the row, where known."""
    masked: Mapping[str, int] | None = None
    """Matches masked in `content`, per kind (None when nothing was masked)."""


def _ordered(rows: list[_Row]) -> list[_Row]:
    """Sort by (created_at, seq); a row without a time keeps its place by seq."""
    rows.sort(key=lambda r: r.seq)
    filled: list[datetime | None] = []
    last: datetime | None = next((r.created_at for r in rows if r.created_at), None)
    for row in rows:
        if row.created_at is not None:
            last = row.created_at
        filled.append(last)
    if last is None:
        return rows
    order = sorted(range(len(rows)), key=lambda i: filled[i])  # type: ignore[arg-type,return-value]
    return [rows[i] for i in order]


def chunk_conversation(
    user_id: str,
    conversation_id: str,
    rows: Sequence[_Row],
    limits: ChunkLimits,
    stats: ChunkStats,
    tags: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[Batch]:
    """Cut one conversation's ordered rows into batches (pure, apart from `stats`).

    `tags` maps source names (`_Row.label`) to the MemOS tags of their batches.
    """
    api_user, api_conv = api_id(user_id), api_id(conversation_id)
    for original, short in ((user_id, api_user), (conversation_id, api_conv)):
        if original != short:
            stats.shortened_ids[original] = short
    budget = limits.max_tokens - MESSAGE_OVERHEAD
    index = 0
    pending: list[tuple[_Row, dict[str, Any], int]] = []
    pending_tokens = 0

    def make(items: list[tuple[_Row, dict[str, Any], int]], part: tuple[int, int] | None) -> Batch:
        nonlocal index
        ids = tuple(r.message_id for r, _, _ in items)
        hashes = tuple(content_hash(r.content) for r, _, _ in items)
        part_key = f"{part[0]}/{part[1]}" if part else ""
        batch_id = stable_id(api_user, api_conv, part_key, *ids, *hashes)
        sources = sorted({r.source for r, _, _ in items})
        info: dict[str, Any] = {
            "source": sources[0] if len(sources) == 1 else sources,
            "source_conversation_id": conversation_id[:1000],
            "batch_index": index,
            "batch_id": batch_id,
            "first_message_id": ids[0][:1000],
        }
        if api_user != user_id:
            info["source_user_id"] = user_id[:1000]
        if part:
            info.update(split_message_id=ids[0][:1000], part=part[0], parts=part[1])
        body: dict[str, Any] = {
            "user_id": api_user,
            "conversation_id": api_conv,
            "messages": [m for _, m, _ in items],
            "info": info,
        }
        if tags:
            labels = sorted({r.label for r, _, _ in items if r.label is not None})
            batch_tags = list(dict.fromkeys(t for label in labels for t in tags.get(label, ())))
            if batch_tags:
                body["tags"] = batch_tags
        redacted: Counter[str] = Counter()
        if part is None or part[0] == 1:
            for r, _, _ in items:
                redacted.update(r.masked or {})
        batch = Batch(
            batch_id=batch_id,
            user_id=api_user,
            conversation_id=api_conv,
            index=index,
            message_ids=ids,
            content_hashes=hashes,
            tokens=sum(t for _, _, t in items),
            body=body,
            part=part,
            redacted=dict(sorted(redacted.items())),
        )
        index += 1
        stats.batches += 1
        stats.tokens += batch.tokens
        return batch

    for row in rows:
        tokens = row.tokens + MESSAGE_OVERHEAD
        message: dict[str, Any] = {"role": row.role, "content": row.content}
        when = chat_time(row.created_at)
        if when is not None:
            message["chat_time"] = when
        if tokens > limits.max_tokens:
            if pending:
                yield make(pending, None)
                pending, pending_tokens = [], 0
            pieces = split_by_tokens(row.content, budget)
            stats.split_messages += 1
            for k, piece in enumerate(pieces, start=1):
                piece_msg = {**message, "content": piece}
                piece_tokens = count_tokens(piece) + MESSAGE_OVERHEAD
                yield make([(row, piece_msg, piece_tokens)], (k, len(pieces)))
            continue
        if pending and (
            pending_tokens + tokens > limits.max_tokens or len(pending) >= limits.max_messages
        ):
            yield make(pending, None)
            pending, pending_tokens = [], 0
        pending.append((row, message, tokens))
        pending_tokens += tokens
    if pending:
        yield make(pending, None)


def chunk_table(
    table: pa.Table,
    limits: ChunkLimits,
    stats: ChunkStats,
    exclude_ids: Container[str] | None = None,
    *,
    since: datetime | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Iterator[Batch]:
    """Group staged rows by (user_id, conversation_id) and yield their batches in order.

    Rows whose `message_id` is in `exclude_ids` (already delivered) are left out and counted,
    as are rows created before `since` (timezone-aware; rows without a time are kept).
    The remaining rows are redacted under `policy` (the default masks every secret kind):
    a row the policy drops is counted in `stats.dropped`, the others are sent redacted.
    With `tags` (source name -> tags), the table's `label` column names each row's source.
    """
    table = table.sort_by([("user_id", "ascending"), ("conversation_id", "ascending")])
    cols = {name: table.column(name).to_pylist() for name in CHUNK_COLUMNS if name != "content"}
    redacted = redact(table.column("content"), policy)
    cols["content"] = redacted.content.to_pylist()
    labels = (
        table.column("label").to_pylist()
        if tags and "label" in table.column_names
        else [None] * table.num_rows
    )
    users: set[str] = set()
    n = table.num_rows
    stats.messages += n
    keep = [
        (exclude_ids is None or mid not in exclude_ids)
        and (since is None or ts is None or ts >= since)
        for mid, ts in zip(cols["message_id"], cols["created_at"], strict=True)
    ]
    stats.excluded += n - sum(keep)
    for i, kinds in redacted.dropped_by_row.items():
        if keep[i]:
            keep[i] = False
            stats.dropped += 1
            stats.dropped_by_kind.update(kinds)
            if len(stats.dropped_examples) < DROPPED_EXAMPLES:
                stats.dropped_examples.append(
                    {
                        "message_id": cols["message_id"][i],
                        "user_id": cols["user_id"][i],
                        "conversation_id": cols["conversation_id"][i],
                        "kinds": list(kinds),
                    }
                )
    kept = [i for i in range(n) if keep[i]]
    stats.masked.update(redacted.masked_counts(kept))
    stats.masked_messages += sum(1 for i in kept if redacted.masked_by_row.get(i))
    tokens = [0] * n
    for i, count in zip(kept, count_tokens_many([cols["content"][i] for i in kept]), strict=True):
        tokens[i] = count
    start = 0
    while start < n:
        user, conv = cols["user_id"][start], cols["conversation_id"][start]
        end = start
        while end < n and cols["user_id"][end] == user and cols["conversation_id"][end] == conv:
            end += 1
        rows = [
            _Row(
                cols["source"][i],
                cols["message_id"][i],
                cols["role"][i],
                cols["content"][i],
                cols["created_at"][i],
                cols["seq"][i],
                tokens[i],
                labels[i],
                redacted.masked_by_row.get(i),
            )
            for i in range(start, end)
            if keep[i]
        ]
        start = end
        if not rows:
            continue
        stats.batched += len(rows)
        stats.conversations += 1
        users.add(user)
        yield from chunk_conversation(user, conv, _ordered(rows), limits, stats, tags)
    stats.users = len(users)


def chunk_workdir(
    workdir: Path,
    limits: ChunkLimits,
    exclude_ids: Container[str] | None = None,
    *,
    since: datetime | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> ChunkStats:
    """Read the staging table, write `<workdir>/batches/`, and return the counts.

    `tags` maps source names to the MemOS tags of their batches (see `Config.tags_by_source`);
    `policy` is the redaction policy (see `RedactConfig.policy`). The manifest records the
    policy's actions and the redaction counts next to the other counts.
    """
    stats = ChunkStats()
    table = read_labeled(workdir, staged_sources(workdir), CHUNK_COLUMNS)
    batches = chunk_table(table, limits, stats, exclude_ids, since=since, tags=tags, policy=policy)
    write_batches(workdir, batches)
    manifest = {
        "max_tokens": limits.max_tokens,
        "max_messages": limits.max_messages,
        "redact": policy.actions(),
    }
    write_json_atomic(manifest_path(workdir), {**manifest, **stats.to_json()})
    return stats
