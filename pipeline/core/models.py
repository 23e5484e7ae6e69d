"""Plain records that flow between stages, and the staging table's Arrow schema.

A connector yields `Message`, `Skipped` and `Quarantined` events (or a `MessageTable`
for bulk producers, or a `StagedPart` for a Parquet part its worker processes wrote
themselves); `pipeline.extract` counts them so that
read == staged + sum(skipped) + quarantined always holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

ROLES = ("user", "assistant", "system", "tool")

STAGING_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_position", pa.string(), nullable=False),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("author_id", pa.string()),
        pa.field("author_name", pa.string()),
        pa.field("content", pa.large_string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("metadata", pa.string()),
    ],
    metadata={b"memos_etl_schema_version": b"1"},
)
"""Staging table schema (version 1). Every column is documented in README.md."""


@dataclass(frozen=True, slots=True)
class Message:
    """One normalized chat message, ready for the staging table.

    `created_at` is timezone-aware UTC or None; `metadata` is JSON text (or None).
    """

    source: str
    source_file: str
    source_position: str
    message_id: str
    conversation_id: str
    user_id: str
    role: str
    content: str
    seq: int
    created_at: datetime | None = None
    author_id: str | None = None
    author_name: str | None = None
    metadata: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """`count` input records deliberately not staged, under a specific reason."""

    reason: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One input record that could not be read; kept with its place and reason."""

    source_file: str
    position: str
    reason: str
    excerpt: str = ""


@dataclass(frozen=True, slots=True)
class MessageTable:
    """Bulk form of `Message` events: a table in `STAGING_SCHEMA` (each row counts as read)."""

    table: pa.Table


@dataclass(frozen=True, slots=True)
class Distinct:
    """The distinct (user_id, conversation_id) pairs and user ids of some staged rows, for
    the extract counts, kept in Arrow (a pair is one string: see `pair_keys`)."""

    pairs: pa.Array
    users: pa.Array

    @classmethod
    def of(cls, user_ids: pa.Array, conversation_ids: pa.Array) -> Distinct:
        """The distinct values of two equally long columns."""
        users = pc.unique(user_ids)
        if len(users) == 1:  # one owner (the common case): keys only for distinct ids
            conversations = pc.unique(conversation_ids)
            owner = pa.repeat(users[0], len(conversations))
            return cls(pair_keys(owner, conversations), users)
        return cls(pc.unique(pair_keys(user_ids, conversation_ids)), users)

    @classmethod
    def of_table(cls, table: pa.Table) -> Distinct:
        """The distinct values of a staged table's `user_id` and `conversation_id`."""
        return cls.of(
            table.column("user_id").combine_chunks(),
            table.column("conversation_id").combine_chunks(),
        )

    @classmethod
    def empty(cls) -> Distinct:
        """No pairs, no users."""
        return cls(pa.array([], pa.string()), pa.array([], pa.string()))

    @classmethod
    def merge(cls, parts: list[Distinct]) -> Distinct:
        """The distinct values of several `Distinct`s."""
        if not parts:
            return cls.empty()
        return cls(
            pc.unique(pa.chunked_array([p.pairs for p in parts], pa.string())),
            pc.unique(pa.chunked_array([p.users for p in parts], pa.string())),
        )


def pair_keys(user_ids: pa.Array, conversation_ids: pa.Array) -> pa.Array:
    """`<length of user_id>:<user_id>:<conversation_id>` per row: equal only for equal pairs
    (the length says where the user id ends, whatever characters the ids hold)."""
    lengths = pc.utf8_length(user_ids).cast(pa.string())
    return pc.binary_join_element_wise(lengths, user_ids, conversation_ids, ":")


@dataclass(frozen=True, slots=True)
class StagedPart:
    """A finished Parquet part in `STAGING_SCHEMA` that a connector wrote into the folder
    `pipeline.extract` gave it (each row counts as read and staged), with its distinct
    pairs and users for the extract counts."""

    path: str
    rows: int
    distinct: Distinct = field(default_factory=Distinct.empty)


Event = Message | Skipped | Quarantined | MessageTable | StagedPart


@dataclass(frozen=True, slots=True)
class ExtractStats:
    """Counts of one extract; `read == staged + sum(skipped.values()) + quarantined`."""

    source: str
    read: int
    staged: int
    skipped: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    conversations: int = 0
    users: int = 0

    @property
    def balanced(self) -> bool:
        """True when every read record is accounted for."""
        return self.read == self.staged + sum(self.skipped.values()) + self.quarantined


def stable_id(*parts: str, length: int = 24) -> str:
    """A deterministic hex id from `parts` (same parts, same id, across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def content_hash(content: str) -> str:
    """The hash of a message's content as the ledger records it when the message is delivered;
    a newer export whose content hashes differently is an edit (see `pipeline.incremental`)."""
    return stable_id(content, length=16)


EXCERPT_CHARS = 200


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, single-line excerpt of raw input for quarantine entries and reports."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
