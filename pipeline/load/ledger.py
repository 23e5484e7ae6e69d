"""Delivery ledger: SQLite (WAL) checkpoints in `<workdir>/ledger.sqlite`.

Every row is keyed by destination (`pipeline.core.destination`): one workdir can deliver
to several, and a delivery to one says nothing about another. An open `Ledger` works for
one destination. Contract other stages rely on: the `delivered_messages` table holds
`(dest_id, message_id, content_hash)` for every staged message the destination has
confirmed; `pipeline.incremental` reads it (read-only) to decide what would be sent.
`destinations` remembers each destination's last load settings (for complete resume
hints), `runs` one line per load (`memos-etl history`).

The loader owns the rest. One row per batch moves `pending -> sending -> done | failed`
(`split` when the API said it was too large and it was replaced by its halves, which are
rows of their own with `parent_id` set and their body stored). A batch becomes `done`
only after the API confirmed it (code 0), in the same transaction that records its
messages in `delivered_messages`; a message split into parts is recorded with its last
part. `sending` means "maybe delivered": a batch is marked so right before its request
leaves (`mark_sending`), and the loader checks the service before resending it.
Every state change is one committed transaction, so a crash at any moment leaves a
consistent file. The schema is versioned with `PRAGMA user_version` and marked with
`PRAGMA application_id`; an empty, damaged, foreign or newer file is refused
(`LedgerError`, exit 3) before anything is sent. A version-1 ledger (no destinations) is
migrated in place: its deliveries are kept and attributed to the workdir's default local
store when that store exists (the only target that could have written it without a
base URL), else to a placeholder that the first destination loaded adopts.

Longer than most modules because every state change of a batch, a destination or a run
is one transaction here, beside the schema and its migrations: the ledger's whole
contract can be read in one place.
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
from pipeline.core.destination import Destination, local_default
from pipeline.core.errors import LedgerError
from pipeline.core.workdir import bucket_ledger_dir, ledger_path
from pipeline.incremental import (
    APPLICATION_ID,
    LEGACY_DEST,
    SCHEMA_VERSION,
    verify_ledger_file,
)

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

_SCHEMA_V2 = """
create table destinations (
    dest_id      text primary key,
    kind         text not null,
    base_url     text not null,
    account      text not null,
    settings     text,
    created_at   text not null,
    last_used_at text not null
);
create table batches (
    dest_id         text not null,
    batch_id        text not null,
    parent_id       text,
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
    done_at         text,
    primary key (dest_id, batch_id)
);
create index batches_parent on batches(dest_id, parent_id, position);
create index batches_status on batches(dest_id, status);
create table delivered_messages (
    dest_id      text not null,
    message_id   text not null,
    content_hash text not null,
    batch_id     text not null,
    delivered_at text not null,
    primary key (dest_id, message_id)
);
create table runs (
    run_id      integer primary key autoincrement,
    dest_id     text not null,
    command     text not null,
    started_at  text not null,
    ended_at    text,
    sent        integer not null default 0,
    verified    integer not null default 0,
    already     integer not null default 0,
    failed      integer not null default 0,
    pending     integer not null default 0,
    requests    integer not null default 0,
    duration_s  real,
    stopped     text
);
"""

_BATCH_COLUMNS_V1 = (
    "batch_id, parent_id, position, user_id, conversation_id, message_count, tokens, status,"
    " uncertain, attempts, error_code, error_message, task_id, body, completes, created_at,"
    " updated_at, done_at"
)


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
    """An open ledger for one destination; use as a context manager. One connection, one
    thread. Without `destination`, the workdir's default local store."""

    def __init__(self, path: Path, destination: Destination | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        verify_ledger_file(path)
        self.path = path
        self.destination = destination or local_default(path.parent)
        self.dest = self.destination.id
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.defer_done = False
        """Leave `mark_done` uncommitted until the next commit (the next `mark_sending`, any
        other transition, `flush` or `close`): one commit per request instead of two. Safe
        because the batch was committed as `sending` first: lost by a crash, a done mark
        only costs the read-back of that batch on the next run, never a resend."""
        try:
            self.conn.execute("pragma journal_mode=wal")
            self.conn.execute("pragma synchronous=normal")
            migrate(self.conn, path)
            self._register()
        except BaseException:
            self.conn.close()
            raise

    @classmethod
    def open(cls, workdir: Path, destination: Destination | None = None) -> Ledger:
        """Open (creating or migrating) the ledger of `workdir` for `destination`; what the
        engines' bucket ledgers confirmed for it is adopted first (`adopt_bucket_deliveries`)."""
        ledger = cls(ledger_path(workdir), destination)
        try:
            ledger.adopt_bucket_deliveries(workdir)
        except BaseException:
            ledger.close()
            raise
        return ledger

    def adopt_bucket_deliveries(self, workdir: Path) -> int:
        """Copy into this ledger every delivery the engines' per-bucket ledgers recorded for
        this destination (`run --engine ...`), so a later `load` or plain `run` into the same
        destination never resends them and `status` counts them. Returns the rows read."""
        folder = bucket_ledger_dir(workdir, self.dest)
        if not folder.is_dir():
            return 0
        read = 0
        for path in sorted(folder.glob("bucket-*.sqlite")):
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = source.execute(
                    "select dest_id, message_id, content_hash, batch_id, delivered_at"
                    " from delivered_messages where dest_id = ?",
                    (self.dest,),
                )
                while chunk := rows.fetchmany(5000):
                    read += len(chunk)
                    with self._tx():
                        self.conn.executemany(
                            "insert or ignore into delivered_messages (dest_id, message_id,"
                            " content_hash, batch_id, delivered_at) values (?, ?, ?, ?, ?)",
                            chunk,
                        )
            except sqlite3.DatabaseError as exc:
                raise LedgerError(f"{path}: not a readable bucket ledger ({exc})") from None
            finally:
                source.close()
        return read

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Commit what `defer_done` left pending and close the connection."""
        try:
            self.flush()
        finally:
            self.conn.close()

    def flush(self) -> None:
        """Commit the done marks `defer_done` left pending (if any)."""
        if self.conn.in_transaction:
            self.conn.execute("commit")

    def _register(self) -> None:
        """Record this destination; it adopts a version-1 ledger's unattributed rows when it
        is the first destination loaded since the migration."""
        d = self.destination
        now = _now()
        with self._tx():
            known = self.conn.execute(
                "select 1 from destinations where dest_id = ?", (self.dest,)
            ).fetchone()
            if known:
                return
            self.conn.execute(
                "insert into destinations (dest_id, kind, base_url, account, created_at,"
                " last_used_at) values (?, ?, ?, ?, ?, ?)",
                (self.dest, d.kind, d.base_url, d.account, now, now),
            )
            others = self.conn.execute(
                "select count(*) from destinations where dest_id != ?", (self.dest,)
            ).fetchone()[0]
            if not others:
                for table in ("batches", "delivered_messages", "runs"):
                    self.conn.execute(
                        f"update {table} set dest_id = ? where dest_id = ?",  # noqa: S608
                        (self.dest, LEGACY_DEST),
                    )

    def _tx(self) -> _Transaction:
        """A `with` block that commits (or rolls back) one transaction."""
        return _Transaction(self.conn)

    # --- destinations and runs ------------------------------------------------------

    def remember_settings(self, settings: dict[str, Any]) -> None:
        """Keep this destination's last load settings (for complete resume hints)."""
        self.conn.execute(
            "update destinations set settings = ?, last_used_at = ? where dest_id = ?",
            (orjson.dumps(settings).decode(), _now(), self.dest),
        )

    def start_run(self, command: str) -> int:
        """A new line of `memos-etl history`; returns its id."""
        cur = self.conn.execute(
            "insert into runs (dest_id, command, started_at) values (?, ?, ?)",
            (self.dest, command, _now()),
        )
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, counts: dict[str, Any]) -> None:
        """Close a run with its counts (see `memos-etl history`)."""
        self.conn.execute(
            "update runs set ended_at = ?, sent = ?, verified = ?, already = ?, failed = ?,"
            " pending = ?, requests = ?, duration_s = ?, stopped = ? where run_id = ?",
            (
                _now(),
                counts.get("sent", 0),
                counts.get("verified", 0),
                counts.get("already", 0),
                counts.get("failed", 0),
                counts.get("pending", 0),
                counts.get("requests", 0),
                counts.get("duration_s"),
                counts.get("stopped"),
                run_id,
            ),
        )

    def drop_run(self, run_id: int) -> None:
        """Remove a history line that recorded nothing (a step with no work in a bigger run)."""
        self.conn.execute("delete from runs where run_id = ?", (run_id,))

    def delivered(self) -> dict[str, str]:
        """`{message_id: content_hash}` confirmed by this destination."""
        return dict(
            self.conn.execute(
                "select message_id, content_hash from delivered_messages where dest_id = ?",
                (self.dest,),
            )
        )

    def delivered_among(self, message_ids: Sequence[str]) -> dict[str, str]:
        """`{message_id: content_hash}` of those of `message_ids` this destination confirmed
        (a window of the batch file at a time: memory never holds every delivery)."""
        out: dict[str, str] = {}
        for start in range(0, len(message_ids), 500):
            chunk = message_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(
                self.conn.execute(
                    "select message_id, content_hash from delivered_messages"  # noqa: S608
                    f" where dest_id = ? and message_id in ({marks})",
                    [self.dest, *chunk],
                )
            )
        return out

    # --- planning -------------------------------------------------------------------

    def sync(self, batches: Iterable[Batch], start: int = 0) -> None:
        """Add a pending row for every batch not yet in the ledger (idempotent); positions
        count from `start` (a window of the batch file starts where the last one ended)."""
        now = _now()
        rows = (
            (
                self.dest,
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
            for pos, b in enumerate(batches, start)
        )
        with self._tx():
            self.conn.executemany(
                "insert or ignore into batches (dest_id, batch_id, position, user_id,"
                " conversation_id, message_count, tokens, completes, created_at, updated_at)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                f"select {_ROW_COLUMNS} from batches where dest_id = ? and batch_id in ({marks})",
                [self.dest, *chunk],
            ):
                row = _row(values)
                out[row.batch_id] = row
        return out

    def get(self, batch_id: str) -> Row | None:
        """One batch's row."""
        values = self.conn.execute(
            f"select {_ROW_COLUMNS} from batches where dest_id = ? and batch_id = ?",
            (self.dest, batch_id),
        ).fetchone()
        return _row(values) if values else None

    def children(self, parent_id: str) -> list[Row]:
        """The halves (or parts) a split batch was replaced by, in sending order."""
        return [
            _row(v)
            for v in self.conn.execute(
                f"select {_ROW_COLUMNS} from batches where dest_id = ? and parent_id = ?"
                " order by position",
                (self.dest, parent_id),
            )
        ]

    def retry_failed(self) -> int:
        """Re-queue failed batches as pending; returns how many."""
        with self._tx():
            cur = self.conn.execute(
                "update batches set status = 'pending', updated_at = ?"
                " where dest_id = ? and status = 'failed'",
                (_now(), self.dest),
            )
        return cur.rowcount

    # --- transitions ----------------------------------------------------------------

    def mark_sending(self, batch_id: str) -> None:
        """About to send: from now on the batch may have landed (uncertain)."""
        self.conn.execute(  # one statement: atomic on its own in autocommit mode
            "update batches set status = 'sending', uncertain = 1,"
            " attempts = attempts + 1, updated_at = ? where dest_id = ? and batch_id = ?",
            (_now(), self.dest, batch_id),
        )
        self.flush()  # with deferred done marks: committed with them, before the send

    def note_error(self, batch_id: str, code: int | None, message: str, uncertain: bool) -> None:
        """Record an attempt's error while the batch is retried."""
        with self._tx():
            self.conn.execute(
                "update batches set error_code = ?, error_message = ?, uncertain = ?,"
                " updated_at = ? where dest_id = ? and batch_id = ?",
                (code, message, int(uncertain), _now(), self.dest, batch_id),
            )

    def mark_unsent(self, batch_id: str) -> None:
        """A `sending` batch known not to have landed (its last request was refused, or a
        read-back did not find it) whose next request a stop kept from leaving: back to
        `pending`, not uncertain, so the next run sends it without reading it back. Its
        last error is kept."""
        with self._tx():
            self.conn.execute(
                "update batches set status = 'pending', uncertain = 0, updated_at = ?"
                " where dest_id = ? and batch_id = ? and status = 'sending'",
                (_now(), self.dest, batch_id),
            )

    def mark_done(
        self, batch_id: str, task_id: str | None, completes: Sequence[tuple[str, str]]
    ) -> None:
        """Confirmed by the API: done, and its finished messages recorded as delivered."""
        now = _now()
        if self.defer_done:
            if not self.conn.in_transaction:
                self.conn.execute("begin immediate")
            self._done(batch_id, task_id, completes, now)
            return
        with self._tx():
            self._done(batch_id, task_id, completes, now)

    def _done(
        self, batch_id: str, task_id: str | None, completes: Sequence[tuple[str, str]], now: str
    ) -> None:
        self.conn.execute(
            "update batches set status = 'done', uncertain = 0, task_id = ?, done_at = ?,"
            " updated_at = ? where dest_id = ? and batch_id = ?",
            (task_id, now, now, self.dest, batch_id),
        )
        self.conn.executemany(
            "insert or replace into delivered_messages"
            " (dest_id, message_id, content_hash, batch_id, delivered_at)"
            " values (?, ?, ?, ?, ?)",
            [(self.dest, m, h, batch_id, now) for m, h in completes],
        )

    def mark_failed(
        self, batch_id: str, code: int | None, message: str, *, uncertain: bool = False
    ) -> None:
        """The batch cannot be delivered as is; `uncertain` if it may still have landed."""
        with self._tx():
            self.conn.execute(
                "update batches set status = 'failed', error_code = ?, error_message = ?,"
                " uncertain = ?, updated_at = ? where dest_id = ? and batch_id = ?",
                (code, message, int(uncertain), _now(), self.dest, batch_id),
            )

    def mark_pending(
        self, batch_id: str, code: int | None, message: str | None, *, uncertain: bool = False
    ) -> None:
        """Back to the queue (the run stopped before the batch could be confirmed)."""
        with self._tx():
            self.conn.execute(
                "update batches set status = 'pending', error_code = ?, error_message = ?,"
                " uncertain = ?, updated_at = ? where dest_id = ? and batch_id = ?",
                (code, message, int(uncertain), _now(), self.dest, batch_id),
            )

    def mark_split(
        self, parent: Row, children: Sequence[tuple[dict[str, Any], int, Sequence[tuple[str, str]]]]
    ) -> list[Row]:
        """Replace a too-large batch by its pieces `(body, tokens, completes)`, in order."""
        now = _now()
        ids = [f"{parent.batch_id}.{k}" for k in range(1, len(children) + 1)]
        with self._tx():
            self.conn.executemany(
                "insert or replace into batches (dest_id, batch_id, parent_id, position,"
                " user_id, conversation_id, message_count, tokens, body, completes,"
                " created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        self.dest,
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
                " where dest_id = ? and batch_id = ?",
                (now, self.dest, parent.batch_id),
            )
        return self.children(parent.batch_id)

    # --- reporting ------------------------------------------------------------------

    def status_counts(self, batch_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """`{status: {"batches": n, "messages": m}}` over top-level batches."""
        out = {s: {"batches": 0, "messages": 0} for s in STATUSES}
        if batch_ids is None:
            query = (
                "select status, count(*), sum(message_count) from batches"
                " where dest_id = ? and parent_id is null group by status"
            )
            for status, n, m in self.conn.execute(query, (self.dest,)):
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
                f"select {_ROW_COLUMNS} from batches where dest_id = ? and status = 'failed'"
                " order by updated_at limit ?",
                (self.dest, limit),
            )
        ]

    def user_ids(self) -> list[str]:
        """The distinct memory owners of the batches this ledger knows, sorted."""
        query = "select distinct user_id from batches where dest_id = ? order by user_id"
        return [u for (u,) in self.conn.execute(query, (self.dest,))]

    def delivered_count(self) -> int:
        """Messages confirmed delivered."""
        return int(
            self.conn.execute(
                "select count(*) from delivered_messages where dest_id = ?", (self.dest,)
            ).fetchone()[0]
        )

    def unfinished(self) -> int:
        """Top-level batches pending or sending (a previous run did not finish them)."""
        return int(
            self.conn.execute(
                "select count(*) from batches where dest_id = ? and status in"
                " ('pending', 'sending') and parent_id is null",
                (self.dest,),
            ).fetchone()[0]
        )

    def forget(self) -> int:
        """Forget every delivery and batch of this destination (`memos-etl reset`); returns
        the number of delivered messages forgotten."""
        with self._tx():
            n = self.delivered_count()
            for table in ("delivered_messages", "batches", "runs", "destinations"):
                self.conn.execute(
                    f"delete from {table} where dest_id = ?",  # noqa: S608
                    (self.dest,),
                )
        return n


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a ledger to `SCHEMA_VERSION` (a new file gets the schema; a version-1 ledger
    keeps its rows, attributed as the module docstring says)."""
    version = conn.execute("pragma user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        conn.executescript(
            f"begin immediate; {_SCHEMA_V2}; pragma application_id={APPLICATION_ID};"
            f" pragma user_version={SCHEMA_VERSION}; commit;"
        )
        return
    # version 1: one implicit destination; keep every row, attributed to it
    owner = local_default(path.parent)
    legacy = owner.id if Path(owner.account).exists() else LEGACY_DEST
    now = _now()
    conn.executescript(
        "begin immediate;"
        " alter table batches rename to batches_v1;"
        " alter table delivered_messages rename to delivered_v1;"
        " drop index if exists batches_parent; drop index if exists batches_status;"
        f" {_SCHEMA_V2};"
        f" insert into batches (dest_id, {_BATCH_COLUMNS_V1})"
        f"  select '{legacy}', {_BATCH_COLUMNS_V1} from batches_v1;"
        " insert into delivered_messages"
        "  (dest_id, message_id, content_hash, batch_id, delivered_at)"
        f"  select '{legacy}', message_id, content_hash, batch_id, delivered_at"
        "  from delivered_v1;"
        " drop table batches_v1; drop table delivered_v1;"
        f" pragma application_id={APPLICATION_ID};"
        f" pragma user_version={SCHEMA_VERSION}; commit;"
    )
    if legacy == owner.id:
        conn.execute(
            "insert or ignore into destinations (dest_id, kind, base_url, account,"
            " created_at, last_used_at) values (?, ?, ?, ?, ?, ?)",
            (owner.id, owner.kind, owner.base_url, owner.account, now, now),
        )


class _Transaction:
    """`begin immediate` ... `commit`, or `rollback` on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        if self.conn.in_transaction:  # done marks `Ledger.defer_done` left pending
            self.conn.execute("commit")
        self.conn.execute("begin immediate")
        return self.conn

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.conn.execute("commit")
        else:
            self.conn.execute("rollback")


def _open_for_reading(workdir: Path) -> sqlite3.Connection | None:
    """The ledger, checked and migrated, without registering any destination; None when
    the workdir has no ledger yet."""
    path = ledger_path(workdir)
    if not path.exists():
        return None
    verify_ledger_file(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    migrate(conn, path)
    return conn


def ledger_status(workdir: Path) -> dict[str, Any]:
    """What the ledger knows, per destination (read-only): batch counts by status,
    delivered messages, the batches a crash left uncertain, the first failures, and the
    destination's last load settings."""
    path = ledger_path(workdir)
    conn = _open_for_reading(workdir)
    if conn is None:
        return {
            "ledger": str(path),
            "exists": False,
            "destinations": [],
            "batches": {},
            "delivered_messages": 0,
            "uncertain": 0,
            "failures": [],
        }
    try:
        dests = [
            Destination(kind, url, account)
            for kind, url, account in conn.execute(
                "select kind, base_url, account from destinations order by created_at"
            )
        ]
        settings = {
            d: orjson.loads(v) if v else None
            for d, v in conn.execute("select dest_id, settings from destinations")
        }
        legacy = conn.execute(
            "select count(*) from delivered_messages where dest_id = ?", (LEGACY_DEST,)
        ).fetchone()[0]
    finally:
        conn.close()
    out: list[dict[str, Any]] = []
    totals = {s: {"batches": 0, "messages": 0} for s in STATUSES}
    for dest in dests:
        with Ledger(path, dest) as ledger:
            counts = ledger.status_counts()
            uncertain = ledger.conn.execute(
                "select count(*) from batches where dest_id = ? and uncertain = 1"
                " and status != 'done'",
                (ledger.dest,),
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
            delivered = ledger.delivered_count()
        for status, c in counts.items():
            totals[status]["batches"] += c["batches"]
            totals[status]["messages"] += c["messages"]
        out.append(
            {
                "dest_id": dest.id,
                "kind": dest.kind,
                "base_url": dest.base_url,
                "account": dest.account,
                "describe": dest.describe(),
                "settings": settings.get(dest.id),
                "batches": counts,
                "delivered_messages": delivered,
                "uncertain": int(uncertain),
                "failures": failures,
            }
        )
    return {
        "ledger": str(path),
        "exists": True,
        "schema_version": SCHEMA_VERSION,
        "destinations": out,
        "unattributed_delivered": int(legacy),
        "batches": totals,
        "delivered_messages": sum(d["delivered_messages"] for d in out),
        "uncertain": sum(d["uncertain"] for d in out),
        "failures": [f for d in out for f in d["failures"]][:20],
    }


def run_history(workdir: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The last `limit` loads, newest first (`memos-etl history`)."""
    conn = _open_for_reading(workdir)
    if conn is None:
        return []
    try:
        dests = {
            d: Destination(k, u, a).describe()
            for d, k, u, a in conn.execute(
                "select dest_id, kind, base_url, account from destinations"
            )
        }
        rows = conn.execute(
            "select run_id, dest_id, command, started_at, ended_at, sent, verified, already,"
            " failed, pending, requests, duration_s, stopped from runs"
            " order by run_id desc limit ?",
            (limit,),
        ).fetchall()
    finally:
        conn.close()
    keys = (
        "run_id",
        "dest_id",
        "command",
        "started_at",
        "ended_at",
        "sent",
        "verified",
        "already_delivered",
        "failed",
        "pending",
        "requests",
        "duration_s",
        "stopped",
    )
    out = []
    for values in rows:
        item = dict(zip(keys, values, strict=True))
        item["destination"] = dests.get(item["dest_id"], item["dest_id"])
        out.append(item)
    return out
