"""Delivery ledger: SQLite (WAL) checkpoints in `<workdir>/ledger.sqlite`.

Contract other stages rely on: the `delivered_messages` table holds
`(message_id, content_hash)` for every staged message the API has confirmed;
`pipeline.incremental` reads it (read-only) to decide what a run would send.

The loader owns the rest. One row per batch moves `pending -> sending -> done | failed`
(`split` when the API said it was too large and it was replaced by its halves, which are
rows of their own with `parent_id` set and their body stored). A batch becomes `done`
only after the API confirmed it (code 0), in the same transaction that records its
messages in `delivered_messages`; a message split into parts is recorded with its last
part. `sending` means "maybe delivered": the loader checks the service before resending.
Every state change is one committed transaction, so a crash at any moment leaves a
consistent file. The schema is versioned with `PRAGMA user_version`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from pipeline.core.batches import Batch
from pipeline.core.errors import ConfigError
from pipeline.core.workdir import ledger_path

SCHEMA_VERSION = 1
STATUSES = ("pending", "sending", "done", "failed", "split")

_SCHEMA_V1 = """
create table if not exists batches (
    batch_id        text primary key,
    parent_id       text references batches(batch_id),
    position        integer not null,
    user_id         text not null,
    conversation_id text not null,
    message_count   integer not null,
    tokens          integer not null,
    status          text not null default 'pending'
                    check (status in ('pending', 'sending', 'done', 'failed', 'split')),
    uncertain       integer not null default 0,
    attempts        integer not null default 0,
    error_code      integer,
    error_message   text,
    task_id         text,
    body            text,
    completes       text not null,
    created_at      text not null,
    updated_at      text not null,
    done_at         text
);
create index if not exists batches_parent on batches(parent_id, position);
create index if not exists batches_status on batches(status);
create table if not exists delivered_messages (
    message_id   text primary key,
    content_hash text not null,
    batch_id     text not null,
    delivered_at text not null
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def completes_of(batch: Batch) -> tuple[tuple[str, str], ...]:
    """(message_id, content_hash) of the messages this batch finishes delivering.

    Part k of n of a split message finishes nothing unless k == n.
    """
    if batch.part is not None and batch.part[0] != batch.part[1]:
        return ()
    return tuple(zip(batch.message_ids, batch.content_hashes, strict=True))


@dataclass(frozen=True)
class Row:
    """One batch's ledger state."""

    batch_id: str
    parent_id: str | None
    position: int
    user_id: str
    conversation_id: str
    message_count: int
    tokens: int
    status: str
    uncertain: bool
    attempts: int
    error_code: int | None
    error_message: str | None
    task_id: str | None
    body: dict[str, Any] | None
    completes: tuple[tuple[str, str], ...]


_ROW_COLUMNS = (
    "batch_id, parent_id, position, user_id, conversation_id, message_count, tokens, status, "
    "uncertain, attempts, error_code, error_message, task_id, body, completes"
)


def _row(values: Sequence[Any]) -> Row:
    body = orjson.loads(values[13]) if values[13] is not None else None
    completes = tuple((m, h) for m, h in orjson.loads(values[14]))
    return Row(
        batch_id=values[0],
        parent_id=values[1],
        position=values[2],
        user_id=values[3],
        conversation_id=values[4],
        message_count=values[5],
        tokens=values[6],
        status=values[7],
        uncertain=bool(values[8]),
        attempts=values[9],
        error_code=values[10],
        error_message=values[11],
        task_id=values[12],
        body=body,
        completes=completes,
    )


class Ledger:
    """An open ledger; use as a context manager. One connection, one thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.conn.execute("pragma journal_mode=wal")
        self.conn.execute("pragma synchronous=normal")
        self.conn.execute("pragma foreign_keys=on")
        self._migrate()

    @classmethod
    def open(cls, workdir: Path) -> Ledger:
        """Open (creating or migrating) the ledger of `workdir`."""
        return cls(ledger_path(workdir))

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (every change is already committed)."""
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("pragma user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} was written by a newer memos-etl (schema {version}); upgrade"
            )
        if version < 1:
            self.conn.executescript(
                f"begin immediate; {_SCHEMA_V1}; pragma user_version=1; commit;"
            )

    def _tx(self) -> _Transaction:
        """A `with` block that commits (or rolls back) one transaction."""
        return _Transaction(self.conn)

    # --- planning -------------------------------------------------------------------

    def sync(self, batches: Iterable[Batch]) -> None:
        """Add a pending row for every batch not yet in the ledger (idempotent)."""
        now = _now()
        rows = (
            (
                b.batch_id,
                pos,
                b.user_id,
                b.conversation_id,
                b.message_count,
                b.tokens,
                orjson.dumps(completes_of(b)).decode(),
                now,
                now,
            )
            for pos, b in enumerate(batches)
        )
        with self._tx():
            self.conn.executemany(
                "insert or ignore into batches (batch_id, position, user_id, conversation_id,"
                " message_count, tokens, completes, created_at, updated_at)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def rows(self, batch_ids: Iterable[str]) -> dict[str, Row]:
        """Ledger rows of the given top-level batches."""
        wanted = list(batch_ids)
        out: dict[str, Row] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for values in self.conn.execute(
                f"select {_ROW_COLUMNS} from batches where batch_id in ({marks})", chunk
            ):
                row = _row(values)
                out[row.batch_id] = row
        return out

    def get(self, batch_id: str) -> Row | None:
        """One batch's row."""
        values = self.conn.execute(
            f"select {_ROW_COLUMNS} from batches where batch_id = ?", (batch_id,)
        ).fetchone()
        return _row(values) if values else None

    def children(self, parent_id: str) -> list[Row]:
        """The halves (or parts) a split batch was replaced by, in sending order."""
        return [
            _row(v)
            for v in self.conn.execute(
                f"select {_ROW_COLUMNS} from batches where parent_id = ? order by position",
                (parent_id,),
            )
        ]

    def retry_failed(self) -> int:
        """Re-queue failed batches as pending; returns how many."""
        with self._tx():
            cur = self.conn.execute(
                "update batches set status = 'pending', updated_at = ? where status = 'failed'",
                (_now(),),
            )
        return cur.rowcount

    # --- transitions ----------------------------------------------------------------

    def mark_sending(self, batch_id: str) -> None:
        """About to send: from now on the batch may have landed (uncertain)."""
        self.conn.execute(  # one statement: atomic on its own in autocommit mode
            "update batches set status = 'sending', uncertain = 1,"
            " attempts = attempts + 1, updated_at = ? where batch_id = ?",
            (_now(), batch_id),
        )

    def note_error(self, batch_id: str, code: int | None, message: str, uncertain: bool) -> None:
        """Record an attempt's error while the batch is retried."""
        with self._tx():
            self.conn.execute(
                "update batches set error_code = ?, error_message = ?, uncertain = ?,"
                " updated_at = ? where batch_id = ?",
                (code, message, int(uncertain), _now(), batch_id),
            )

    def mark_done(
        self, batch_id: str, task_id: str | None, completes: Sequence[tuple[str, str]]
    ) -> None:
        """Confirmed by the API: done, and its finished messages recorded as delivered."""
        now = _now()
        with self._tx():
            self.conn.execute(
                "update batches set status = 'done', uncertain = 0, task_id = ?, done_at = ?,"
                " updated_at = ? where batch_id = ?",
                (task_id, now, now, batch_id),
            )
            self.conn.executemany(
                "insert or replace into delivered_messages"
                " (message_id, content_hash, batch_id, delivered_at) values (?, ?, ?, ?)",
                [(m, h, batch_id, now) for m, h in completes],
            )

    def mark_failed(
        self, batch_id: str, code: int | None, message: str, *, uncertain: bool = False
    ) -> None:
        """The batch cannot be delivered as is; `uncertain` if it may still have landed."""
        with self._tx():
            self.conn.execute(
                "update batches set status = 'failed', error_code = ?, error_message = ?,"
                " uncertain = ?, updated_at = ? where batch_id = ?",
                (code, message, int(uncertain), _now(), batch_id),
            )

    def mark_pending(
        self, batch_id: str, code: int | None, message: str | None, *, uncertain: bool = False
    ) -> None:
        """Back to the queue (the run stopped before the batch could be confirmed)."""
        with self._tx():
            self.conn.execute(
                "update batches set status = 'pending', error_code = ?, error_message = ?,"
                " uncertain = ?, updated_at = ? where batch_id = ?",
                (code, message, int(uncertain), _now(), batch_id),
            )

    def mark_split(
        self, parent: Row, children: Sequence[tuple[dict[str, Any], int, Sequence[tuple[str, str]]]]
    ) -> list[Row]:
        """Replace a too-large batch by its pieces `(body, tokens, completes)`, in order."""
        now = _now()
        ids = [f"{parent.batch_id}.{k}" for k in range(1, len(children) + 1)]
        with self._tx():
            self.conn.executemany(
                "insert or replace into batches (batch_id, parent_id, position, user_id,"
                " conversation_id, message_count, tokens, body, completes, created_at,"
                " updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        cid,
                        parent.batch_id,
                        k,
                        parent.user_id,
                        parent.conversation_id,
                        len(body["messages"]),
                        tokens,
                        orjson.dumps(body).decode(),
                        orjson.dumps(list(completes)).decode(),
                        now,
                        now,
                    )
                    for k, (cid, (body, tokens, completes)) in enumerate(
                        zip(ids, children, strict=True)
                    )
                ],
            )
            self.conn.execute(
                "update batches set status = 'split', uncertain = 0, updated_at = ?"
                " where batch_id = ?",
                (now, parent.batch_id),
            )
        return self.children(parent.batch_id)

    # --- reporting ------------------------------------------------------------------

    def status_counts(self, batch_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """`{status: {"batches": n, "messages": m}}` over top-level batches."""
        out = {s: {"batches": 0, "messages": 0} for s in STATUSES}
        if batch_ids is None:
            query = (
                "select status, count(*), sum(message_count) from batches"
                " where parent_id is null group by status"
            )
            for status, n, m in self.conn.execute(query):
                out[status] = {"batches": n, "messages": m or 0}
            return out
        for row in self.rows(batch_ids).values():
            out[row.status]["batches"] += 1
            out[row.status]["messages"] += row.message_count
        return out

    def failed(self, limit: int = 20) -> list[Row]:
        """Failed batches with their errors (first `limit`)."""
        return [
            _row(v)
            for v in self.conn.execute(
                f"select {_ROW_COLUMNS} from batches where status = 'failed'"
                " order by updated_at limit ?",
                (limit,),
            )
        ]

    def user_ids(self) -> list[str]:
        """The distinct memory owners of the batches this ledger knows, sorted."""
        query = "select distinct user_id from batches order by user_id"
        return [u for (u,) in self.conn.execute(query)]

    def delivered_count(self) -> int:
        """Messages confirmed delivered."""
        return int(self.conn.execute("select count(*) from delivered_messages").fetchone()[0])

    def unfinished(self) -> int:
        """Top-level batches pending or sending (a previous run did not finish them)."""
        return int(
            self.conn.execute(
                "select count(*) from batches where status in ('pending', 'sending')"
                " and parent_id is null"
            ).fetchone()[0]
        )


class _Transaction:
    """`begin immediate` ... `commit`, or `rollback` on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("begin immediate")
        return self.conn

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.conn.execute("commit")
        else:
            self.conn.execute("rollback")


def ledger_status(workdir: Path) -> dict[str, Any]:
    """What the ledger knows (read-only): batch counts by status, delivered messages, the
    batches a crash left uncertain, and the first failures with their errors."""
    path = ledger_path(workdir)
    if not path.exists():
        return {
            "ledger": str(path),
            "exists": False,
            "batches": {},
            "delivered_messages": 0,
            "uncertain": 0,
            "failures": [],
        }
    with Ledger(path) as ledger:
        counts = ledger.status_counts()
        uncertain = ledger.conn.execute(
            "select count(*) from batches where uncertain = 1 and status != 'done'"
        ).fetchone()[0]
        failures = [
            {
                "batch_id": r.batch_id,
                "user_id": r.user_id,
                "conversation_id": r.conversation_id,
                "attempts": r.attempts,
                "code": r.error_code,
                "error": r.error_message,
            }
            for r in ledger.failed()
        ]
        return {
            "ledger": str(path),
            "exists": True,
            "schema_version": SCHEMA_VERSION,
            "batches": counts,
            "delivered_messages": ledger.delivered_count(),
            "uncertain": int(uncertain),
            "failures": failures,
        }
