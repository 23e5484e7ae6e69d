"""Chunk stage, one table: staged rows -> per-conversation addMessage batches within API limits.

Batches never mix conversations, keep each conversation's messages in (created_at, seq)
order, and hold at most `max_messages` messages and `max_tokens` tokens. Tokens are counted
lazily: a cl100k token is at least one UTF-8 byte, so while a batch's bytes (plus framing)
fit the budget no message in it is tokenized; exact counts are taken only where the cut
decision needs them (largest bounds first, and only until the message fits), and the cuts
are exactly those of counting everything. A batch's `tokens` is then its messages' exact
counts where they were taken and byte bounds elsewhere: at least its exact count and never
above `max_tokens` (the loader and the dry run count exactly where tokens matter: a token
budget, the plan). A message larger than the budget is cut into ordered parts (never
truncated); ids longer than the API's 100 characters get a deterministic short form, the
original kept in `info`. A batch carries the configured `tags` of the sources its messages
were staged by.

Group-chat mode (sources with `memory_owner: group`, `Config.group_sources`): the body's
`user_id` is the list of the conversation's participants (the speakers of its `user`
messages, at most `memos_api.MAX_GROUP_IDS`, most active first: `group_participants`), and
each message carries its speaker as `role_id` (when listed) and `role_name`. The batch's own
`user_id` (ledger, lanes) stays the staged owner id. Participants are counted over the
messages being chunked, so every batch of a conversation lists the same ids.

Redaction happens here, once, on the content that is sent (`pipeline.core.redact`): the
staging table keeps the original, so a policy change only needs a new chunk. Batch ids
and content hashes are those of the redacted content, so the ledger records what was
actually sent.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections import Counter
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from itertools import compress
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.batches import Batch
from pipeline.core.memos_api import api_id, group_participants
from pipeline.core.models import content_hash, stable_id
from pipeline.core.redact import DEFAULT_POLICY, Policy, Redacted, redact
from pipeline.core.tokens import MESSAGE_OVERHEAD, count_tokens, split_by_tokens

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
AUTHOR_COLUMNS = ["author_id", "author_name"]
"""Read too when a source is in group-chat mode (speaker of each message)."""


@dataclass(frozen=True)
class ChunkLimits:
    """Per-request limits: the API's token limit (4,000 on older accounts) and a message cap."""

    max_tokens: int = 4000
    max_messages: int = 50


@dataclass
class ChunkStats:
    """What a chunk run produced; `messages == batched + excluded + dropped` (`excluded`
    includes the `duplicates`)."""

    messages: int = 0
    batched: int = 0
    excluded: int = 0
    duplicates: int = 0
    """Staged rows left out because another row has the same message id and content (the
    same export staged under two source names)."""
    dropped: int = 0
    """Messages the redaction policy left out (`drop-message`)."""
    batches: int = 0
    conversations: int = 0
    users: int = 0
    tokens: int = 0
    split_messages: int = 0
    shortened_ids: dict[str, str] = field(default_factory=dict)
    group_conversations: int = 0
    group_left_out: int = 0
    """Speakers of group conversations beyond the `user_id` list (they keep `role_name`)."""
    request_weight: int = 0
    """Sum over batches of the ids each request lists: its charge against the QPS limit."""
    masked: Counter[str] = field(default_factory=Counter)
    """Matches masked in the batched messages, per kind."""
    masked_messages: int = 0
    """Batched messages with at least one masked match."""
    dropped_by_kind: Counter[str] = field(default_factory=Counter)
    """Dropped messages per kind that matched (a message can count under several kinds)."""
    dropped_examples: list[dict[str, Any]] = field(default_factory=list)
    """The first few dropped messages: ids and kinds only, never content."""

    def merge(self, other: ChunkStats) -> None:
        """Add the counts of another part of the same chunk (another bucket). `users` is
        not added: the caller counts distinct users over all parts."""
        for name in (
            "messages",
            "batched",
            "excluded",
            "duplicates",
            "dropped",
            "batches",
            "conversations",
            "tokens",
            "split_messages",
            "group_conversations",
            "group_left_out",
            "request_weight",
            "masked_messages",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.shortened_ids.update(other.shortened_ids)
        self.masked.update(other.masked)
        self.dropped_by_kind.update(other.dropped_by_kind)
        room = DROPPED_EXAMPLES - len(self.dropped_examples)
        self.dropped_examples.extend(other.dropped_examples[: max(room, 0)])

    def to_json(self) -> dict[str, Any]:
        """The JSON form printed by `chunk --json` and kept in the manifest."""
        return {
            "messages": self.messages,
            "batched": self.batched,
            "excluded": self.excluded,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "batches": self.batches,
            "conversations": self.conversations,
            "users": self.users,
            "tokens": self.tokens,
            "split_messages": self.split_messages,
            "shortened_ids": len(self.shortened_ids),
            "group_conversations": self.group_conversations,
            "group_left_out": self.group_left_out,
            "request_weight": self.request_weight,
            "redacted": {
                "masked": dict(sorted(self.masked.items())),
                "masked_messages": self.masked_messages,
                "dropped": dict(sorted(self.dropped_by_kind.items())),
                "dropped_messages": self.dropped,
            },
        }


class _Row(NamedTuple):
    """One staged message as the chunker uses it (a tuple: a bucket's rows are built from
    its columns in one C-level pass, `_new_row` over `zip`)."""

    source: str
    message_id: str
    role: str
    content: str
    created_at: int | None
    """Microseconds since the epoch (the order key)."""
    seq: int
    nbytes: int
    """UTF-8 length of `content`: an upper bound of its token count."""
    when: str | None = None
    """`created_at` as the API's `chat_time`."""
    label: str | None = None
    """The configured name of the source that staged the row, where known."""
    author_id: str | None = None
    author_name: str | None = None
    masked: Mapping[str, int] | None = None
    """Matches masked in `content`, per kind (None when nothing was masked)."""


_new_row = functools.partial(tuple.__new__, _Row)
"""`_Row._make` without its Python frame (it only adds a length check, which `zip(strict=True)`
over the columns already makes): a row is built in C."""


def _ordered(rows: list[_Row]) -> list[_Row]:
    """Sort by (created_at, seq); a row without a time keeps its place by seq."""
    rows.sort(key=lambda r: r.seq)
    filled: list[int | None] = []
    last: int | None = next((r.created_at for r in rows if r.created_at), None)
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
    group: bool = False,
) -> Iterator[Batch]:
    """Cut one conversation's ordered rows into batches (pure, apart from `stats`).

    `tags` maps source names (`_Row.label`) to the MemOS tags of their batches; `group`
    sends the conversation as a group chat (see the module docstring).
    """
    api_user, api_conv = api_id(user_id), api_id(conversation_id)
    for original, short in ((user_id, api_user), (conversation_id, api_conv)):
        if original != short:
            stats.shortened_ids[original] = short
    participants: list[str] = []
    if group:
        speakers = [api_id(r.author_id) for r in rows if r.role == "user" and r.author_id]
        participants, left_out = group_participants(speakers)
        if participants:
            stats.group_conversations += 1
            stats.group_left_out += left_out
    listed = frozenset(participants)
    id_key = ("group", *participants) if participants else ()
    budget = limits.max_tokens - MESSAGE_OVERHEAD
    index = 0
    pending: list[tuple[_Row, dict[str, Any], int]] = []
    pending_tokens = 0

    def make(items: list[tuple[_Row, dict[str, Any], int]], part: tuple[int, int] | None) -> Batch:
        nonlocal index
        members = [r for r, _, _ in items]
        ids = tuple([r.message_id for r in members])
        hashes = tuple([_hash(r.content) for r in members])
        part_key = f"{part[0]}/{part[1]}" if part else ""
        batch_id = stable_id(api_user, api_conv, part_key, *ids, *hashes, *id_key)
        sources = sorted({r.source for r in members})
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
            "user_id": participants or api_user,
            "conversation_id": api_conv,
            "messages": [m for _, m, _ in items],
            "info": info,
        }
        if tags:
            labels = sorted({r.label for r in members if r.label is not None})
            batch_tags = list(dict.fromkeys(t for label in labels for t in tags.get(label, ())))
            if batch_tags:
                body["tags"] = batch_tags
        redacted: Counter[str] = Counter()
        if part is None or part[0] == 1:
            for masked in [r.masked for r in members if r.masked]:
                redacted.update(masked)
        batch = Batch(
            batch_id=batch_id,
            user_id=api_user,
            conversation_id=api_conv,
            index=index,
            message_ids=ids,
            content_hashes=hashes,
            tokens=sum([t for _, _, t in items]),
            body=body,
            part=part,
            redacted=dict(sorted(redacted.items())),
        )
        index += 1
        stats.batches += 1
        stats.request_weight += max(len(participants), 1)
        stats.tokens += batch.tokens
        return batch

    max_tokens, max_messages = limits.max_tokens, limits.max_messages
    pending_exact: list[bool] = []
    """Per pending message: is its figure in `pending` an exact count (else a byte bound)?"""

    def count_pending(room: int) -> int:
        """Replace byte bounds in `pending` by exact counts, largest bound first, until the
        total is at most `room` or every figure is exact; the new total.

        Stopping once it fits is enough for the cut: the total is then an upper bound of
        the exact one, so the message fits whatever the rest count. Only a message that
        does not fit needs every figure exact. A batch's `tokens` may thus mix exact
        counts and bounds; it stays between the exact count and the budget.
        """
        total = sum([t for _, _, t in pending])
        bounded = sorted(
            (k for k, exact in enumerate(pending_exact) if not exact),
            key=lambda k: -pending[k][2],
        )
        for k in bounded:
            if total <= room:
                break
            r, m, bound = pending[k]
            counted = count_tokens(m["content"]) + MESSAGE_OVERHEAD
            pending[k] = (r, m, counted)
            pending_exact[k] = True
            total += counted - bound
        return total

    for row in rows:
        tokens = row.nbytes + MESSAGE_OVERHEAD
        exact = False
        if tokens > max_tokens:
            tokens, exact = count_tokens(row.content) + MESSAGE_OVERHEAD, True
        message: dict[str, Any] = {"role": row.role, "content": row.content}
        if participants:
            speaker = api_id(row.author_id) if row.author_id else None
            if speaker in listed:
                message["role_id"] = speaker
            if row.author_name:
                message["role_name"] = row.author_name
        if row.when is not None:
            message["chat_time"] = row.when
        if tokens > max_tokens:
            if pending:
                yield make(pending, None)
                pending, pending_tokens, pending_exact = [], 0, []
            pieces = split_by_tokens(row.content, budget)
            stats.split_messages += 1
            for k, piece in enumerate(pieces, start=1):
                piece_msg = {**message, "content": piece}
                piece_tokens = count_tokens(piece) + MESSAGE_OVERHEAD
                yield make([(row, piece_msg, piece_tokens)], (k, len(pieces)))
            continue
        if pending and len(pending) < max_messages and pending_tokens + tokens > max_tokens:
            if not exact:  # the bounds say it may not fit: count exactly
                tokens, exact = count_tokens(row.content) + MESSAGE_OVERHEAD, True
            if pending_tokens + tokens > max_tokens:
                pending_tokens = count_pending(max_tokens - tokens)
        if pending and (pending_tokens + tokens > max_tokens or len(pending) >= max_messages):
            yield make(pending, None)
            pending, pending_tokens, pending_exact = [], 0, []
        pending.append((row, message, tokens))
        pending_exact.append(exact)
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
    group: Container[str] = frozenset(),
    policy: Policy = DEFAULT_POLICY,
    users: set[str] | None = None,
) -> Iterator[Batch]:
    """Group staged rows by (user_id, conversation_id) and yield their batches in order.

    Rows whose `message_id` is in `exclude_ids` (already delivered) are left out and counted,
    as are rows created before `since` (timezone-aware; rows without a time are kept).
    With `tags` (source name -> tags), the table's `label` column names each row's source;
    a conversation with rows of a source named in `group` is sent as a group chat (the
    table then needs the `AUTHOR_COLUMNS`). The remaining rows are redacted under `policy`
    (the default masks every secret kind): a row the policy drops is counted in
    `stats.dropped`, the others are sent redacted. `users` (when given) collects the owners
    of the batched conversations, for callers adding up several tables.

    The column work (sort, redaction, `chat_time`, byte lengths) is done on the whole table
    in Arrow; Python objects are built for `WINDOW_ROWS` rows at a time (whole
    conversations), so memory holds a window's objects, not the table's.
    """
    keys = [("user_id", "ascending"), ("conversation_id", "ascending")]
    timed = table.column("created_at").null_count == 0
    if timed:
        # every row has a time: Arrow's stable sort gives each conversation the order of
        # `_ordered` (created_at, then seq, then staging order), at a fraction of its cost
        keys += [("created_at", "ascending"), ("seq", "ascending")]
    table = table.sort_by(keys)
    n = table.num_rows
    stats.messages += n
    created = table.column("created_at")
    redacted = redact(table.column("content"), policy)
    grouping = bool(group) and "label" in table.column_names
    labelled = (tags or grouping) and "label" in table.column_names
    columns = _Columns(
        table=table,
        micros=pc.cast(created, pa.int64()),
        whens=_chat_times(created),
        content=redacted.content,
        nbytes=pc.binary_length(redacted.content),
        labelled=bool(labelled),
        grouping=grouping,
    )
    floor = None if since is None else _micros(since)
    left_out = _RowFacts(redacted, _duplicate_rows(columns, exclude_ids, floor, stats))
    owners: set[str] = set() if users is None else users
    starts = _conversation_starts(table)
    for start, end in _windows(starts, n, WINDOW_ROWS):
        yield from _chunk_window(
            columns,
            starts[bisect_left(starts, start) : bisect_left(starts, end)],
            end,
            left_out,
            exclude_ids,
            floor,
            limits,
            stats,
            owners,
            timed=timed,
            tags=tags,
            group=group,
        )
    stats.users = len(owners)


WINDOW_ROWS = 1024
"""Rows (whole conversations) turned into Python objects at a time."""


@dataclass(frozen=True)
class _Columns:
    """A sorted table and the columns computed over it in Arrow, for `_chunk_window`."""

    table: pa.Table
    micros: pa.ChunkedArray | pa.Array
    """`created_at` in microseconds since the epoch (the order key)."""
    whens: pa.ChunkedArray | pa.Array
    """`chat_time` text per row (null where there is no time)."""
    content: pa.ChunkedArray | pa.Array
    """The content as sent (redacted)."""
    nbytes: pa.ChunkedArray | pa.Array
    labelled: bool
    """Read the `label` column (tags or group chats need it)."""
    grouping: bool
    """Read the author columns (a source is in group-chat mode)."""

    def pylist(self, name: str, start: int, length: int) -> list[Any]:
        """Rows `start`..`start+length` of one column as Python values."""
        column = {
            "created_at": self.micros,
            "when": self.whens,
            "content": self.content,
            "nbytes": self.nbytes,
        }.get(name)
        if column is None:
            column = self.table.column(name)
        return column.slice(start, length).to_pylist()  # type: ignore[no-any-return]


class _RowFacts:
    """The few rows redaction masked or dropped, or `_duplicate_rows` left out, by window.

    They are sparse: kept as sorted row numbers, so a window finds its own by bisection
    instead of scanning every fact once per window.
    """

    def __init__(self, redacted: Redacted, duplicates: set[int]):
        self.redacted = redacted
        self.masked = sorted(redacted.masked_by_row)
        self.dropped = sorted(redacted.dropped_by_row)
        self.duplicates = sorted(duplicates)

    @staticmethod
    def within(rows: list[int], start: int, end: int) -> list[int]:
        """Those of the sorted `rows` in `start`..`end`."""
        return rows[bisect_left(rows, start) : bisect_left(rows, end)]


def _windows(starts: Sequence[int], n: int, rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) row ranges of whole conversations, each about `rows` rows (a larger
    conversation is a window of its own)."""
    window_start = 0
    for start in starts:
        if start - window_start >= rows:
            yield window_start, start
            window_start = start
    if n > window_start:
        yield window_start, n


def _duplicate_rows(
    columns: _Columns, exclude_ids: Container[str] | None, floor: int | None, stats: ChunkStats
) -> set[int]:
    """Rows left out because an earlier kept row has the same message id and content.

    A message is identified by its source kind and native id (the `message_id`), so two
    source names staging the same export must not deliver it twice. The same id with other
    content is left alone (the dry run's duplicate-id check counts it). Found over the whole
    table in Arrow (repeated ids are rare), then checked in row order.
    """
    ids = columns.table.column("message_id")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return set()
    rows: list[int] = pc.indices_nonzero(pc.is_in(ids, value_set=repeated)).to_pylist()
    found: set[int] = set()
    first: set[tuple[str, str]] = set()
    for i in rows:
        mid = ids[i].as_py()
        ts = columns.micros[i].as_py()
        if (exclude_ids is not None and mid in exclude_ids) or (
            floor is not None and ts is not None and ts < floor
        ):
            continue
        key = (mid, content_hash(columns.content[i].as_py()))
        if key in first:
            found.add(i)
            stats.duplicates += 1
        else:
            first.add(key)
    return found


def _chunk_window(
    columns: _Columns,
    starts: list[int],
    end: int,
    left_out: _RowFacts,
    exclude_ids: Container[str] | None,
    floor: int | None,
    limits: ChunkLimits,
    stats: ChunkStats,
    owners: set[str],
    *,
    timed: bool,
    tags: Mapping[str, Sequence[str]] | None,
    group: Container[str],
) -> Iterator[Batch]:
    """The batches of the conversations starting at `starts` (rows of the sorted table, the
    last conversation ending at `end`)."""
    start = starts[0]
    n = end - start
    cols = {
        name: columns.pylist(name, start, n) for name in ("source", "message_id", "role", "seq")
    }
    # owner and conversation are the same on every row of a conversation: read at its start
    heads = pa.array([first - start for first in starts], pa.int64())
    users = columns.table.column("user_id").slice(start, n).take(heads).to_pylist()
    conversations = columns.table.column("conversation_id").slice(start, n).take(heads).to_pylist()
    micros = columns.pylist("created_at", start, n)
    if exclude_ids is None and floor is None:
        keep = [True] * n
    else:
        keep = [
            (exclude_ids is None or mid not in exclude_ids)
            and (floor is None or ts is None or ts >= floor)
            for mid, ts in zip(cols["message_id"], micros, strict=True)
        ]
    for i in left_out.within(left_out.duplicates, start, end):
        keep[i - start] = False
    stats.excluded += n - sum(keep)
    redacted = left_out.redacted
    for i in left_out.within(left_out.dropped, start, end):
        if keep[i - start]:
            keep[i - start] = False
            kinds = redacted.dropped_by_row[i]
            stats.dropped += 1
            stats.dropped_by_kind.update(kinds)
            if len(stats.dropped_examples) < DROPPED_EXAMPLES:
                stats.dropped_examples.append(
                    {
                        "message_id": cols["message_id"][i - start],
                        "user_id": columns.table.column("user_id")[i].as_py(),
                        "conversation_id": columns.table.column("conversation_id")[i].as_py(),
                        "kinds": list(kinds),
                    }
                )
    masks: list[Mapping[str, int] | None] = [None] * n
    for i in left_out.within(left_out.masked, start, end):
        if keep[i - start]:
            masks[i - start] = redacted.masked_by_row[i]
            stats.masked.update(redacted.masked_by_row[i])
            stats.masked_messages += 1
    all_kept = all(keep)
    nones: list[str | None] = [None] * n
    every_row = list(
        map(
            _new_row,
            zip(
                cols["source"],
                cols["message_id"],
                cols["role"],
                columns.pylist("content", start, n),
                micros,
                cols["seq"],
                columns.pylist("nbytes", start, n),
                columns.pylist("when", start, n),
                columns.pylist("label", start, n) if columns.labelled else nones,
                columns.pylist("author_id", start, n) if columns.grouping else nones,
                columns.pylist("author_name", start, n) if columns.grouping else nones,
                masks,
                strict=True,
            ),
        )
    )
    grouping = columns.grouping
    bounds = zip(starts, [*starts[1:], end], users, conversations, strict=True)
    for first, last, user, conversation in bounds:
        first, last = first - start, last - start
        rows = (
            every_row[first:last]
            if all_kept
            else list(compress(every_row[first:last], keep[first:last]))
        )
        if not rows:
            continue
        stats.batched += len(rows)
        stats.conversations += 1
        owners.add(user)
        in_group = grouping and any(r.label in group for r in rows)
        yield from chunk_conversation(
            user,
            conversation,
            rows if timed else _ordered(rows),
            limits,
            stats,
            tags,
            group=in_group,
        )


def _conversation_starts(table: pa.Table) -> list[int]:
    """Row indices where a new (user_id, conversation_id) starts in a table sorted by both."""
    n = table.num_rows
    if n == 0:
        return []
    users, convs = table.column("user_id"), table.column("conversation_id")
    changed = pc.or_(
        pc.not_equal(users.slice(1), users.slice(0, n - 1)),
        pc.not_equal(convs.slice(1), convs.slice(0, n - 1)),
    )
    return [0, *(i + 1 for i in pc.indices_nonzero(changed).to_pylist())]


def _hash(content: str) -> str:
    """`content_hash(content)`, inlined: called once per batched message."""
    return sha256(content.encode("utf-8")).hexdigest()[:16]


def _micros(ts: datetime) -> int:
    """`ts` (timezone-aware) as microseconds since the epoch, the staged times' unit."""
    return int(pa.scalar(ts, pa.timestamp("us", tz="UTC")).cast(pa.int64()).as_py())


def _chat_times(created: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """`chat_time` of every row, vectorized (the same text as `memos_api.chat_time`).

    Arrow's cast of a timestamp to text ("2024-01-02 03:04:05.000006") is about 25 times
    faster than `strftime`; it only needs the "T" and "Z" of ISO 8601 and whole seconds
    without their six zeros.
    """
    if len(created) == 0:
        return pa.array([], pa.string())
    text = pc.cast(pc.cast(created, pa.timestamp("us")), pa.string())
    text = pc.replace_substring(text, pattern=" ", replacement="T", max_replacements=1)
    whole = pc.ends_with(text, pattern=".000000")
    text = pc.if_else(whole, pc.utf8_slice_codeunits(text, 0, -7), text)
    return pc.binary_join_element_wise(text, "Z", "")
