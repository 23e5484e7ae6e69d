"""The one rule for "what would be sent to a destination", shared by `run`, `load` and the dry run.

A message is identified by its `message_id` (source kind + native id, so the same export
staged under two source names is one message). It is left out when the ledger records it
as delivered *to this destination* (`pipeline.core.destination`): deliveries to one
destination never count for another. `run` and the dry run apply the rule to staged rows
before chunking (`plan`); `load` applies it to the batch file (`filter_batches`), so a
batch file chunked before a delivery, with other limits, or from overlapping sources
sends each message once whatever the order of commands.
A delivered message whose staged content has changed since (an edit in a newer export) is
left out too, and reported, unless `load.resend_changed` is set: then it is sent again.
Because `run` and `validate` both call `plan`, the dry run's "to send" is exactly what a
run sends.

"Content" means the content as sent: the ledger records the hash of the redacted content
(`pipeline.core.redact`), so `plan` redacts the staged content under the same policy
before comparing. A redaction policy change therefore shows up as "changed since
delivery" for the messages whose sent content it changes (a message the new policy drops
counts as changed too, and is never resent). See docs/redaction.md.

This module reads the ledger's `delivered_messages` table read-only (the table's writer is
`pipeline.load.ledger`) and owns the checks that refuse an empty, truncated, foreign or
newer ledger (`verify_ledger_file`); it imports nothing from the load stage, so the dry
run can use it without importing the loader.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.batches import Batch
from pipeline.core.destination import Destination, local_default
from pipeline.core.errors import LedgerError
from pipeline.core.models import content_hash, stable_id
from pipeline.core.redact import DEFAULT_POLICY, Policy, redact
from pipeline.core.tokens import messages_tokens
from pipeline.core.workdir import ledger_path

SCHEMA_VERSION = 2
"""The ledger schema this memos-etl writes (`PRAGMA user_version`)."""
APPLICATION_ID = 0x4D454D4F
"""`PRAGMA application_id` of a memos-etl ledger ("MEMO"); version-1 ledgers carry 0."""
LEGACY_DEST = "legacy"
"""`dest_id` of version-1 deliveries whose destination cannot be known (see the ledger)."""
_SQLITE_MAGIC = b"SQLite format 3\x00"


def verify_ledger_file(path: Path) -> None:
    """Refuse a ledger that cannot be trusted, before anything is read or sent.

    An empty (0-byte) file, a file that is not SQLite, one shorter than its header says
    (truncated), another program's database, or a newer schema raises `LedgerError`
    (exit 3): taking any of them as "nothing delivered yet" would send everything again.
    A missing file is fine (a first load creates it).
    """
    if not path.exists():
        return
    hint = (
        "restore it from a backup, or move it away to start over (then every message is sent again)"
    )
    size = path.stat().st_size
    if size == 0:
        raise LedgerError(f"{path} is empty (0 bytes), not a ledger; {hint}")
    with path.open("rb") as fh:
        header = fh.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise LedgerError(f"{path} is not a memos-etl ledger (not SQLite); {hint}")
    if len(header) < 100:
        raise LedgerError(f"{path} is truncated ({size} bytes); {hint}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[92:96] == header[96:100]
    wal = Path(f"{path}-wal")
    # with a non-empty write-ahead log, a checkpoint a crash interrupted may have written
    # the header before the pages: SQLite completes it from the log, so size says nothing
    pending_log = wal.exists() and wal.stat().st_size > 0
    if valid and pages and not pending_log and size < pages * page_size:
        raise LedgerError(f"{path} is truncated ({size} of {pages * page_size} bytes); {hint}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = conn.execute("pragma user_version").fetchone()[0]
            app = conn.execute("pragma application_id").fetchone()[0]
            tables = {
                n for (n,) in conn.execute("select name from sqlite_master where type='table'")
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is damaged ({exc}); {hint}") from None
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} was written by a newer memos-etl (schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade memos-etl"
        )
    ours = app == APPLICATION_ID or (
        app == 0
        and (
            (version == 0 and not tables)
            or (version == 1 and {"batches", "delivered_messages"} <= tables)
        )
    )
    if not ours:
        raise LedgerError(f"{path} is another program's database, not a memos-etl ledger; {hint}")


def _delivered_scope(
    conn: sqlite3.Connection, workdir: Path, dest: Destination
) -> tuple[str, list[str]] | None:
    """How `dest`'s deliveries are selected in an open ledger: (a `where` clause, its
    parameters), or None when the ledger holds none for `dest`."""
    version = conn.execute("pragma user_version").fetchone()[0]
    if version == 0:
        return None
    if version == 1:
        owner = local_default(workdir)
        if Path(owner.account).exists() and dest != owner:
            return None
        return "1 = 1", []
    ids = [dest.id]
    if not conn.execute("select count(*) from destinations").fetchone()[0]:
        ids.append(LEGACY_DEST)
    return f"dest_id in ({','.join('?' * len(ids))})", ids


def delivered_message_hashes(
    workdir: Path, destination: Destination | None = None
) -> dict[str, str]:
    """Message ids already delivered to `destination` (default: the workdir's local store),
    with the content hash that was sent (read-only). Holds every delivery in memory: the
    stages ask `DeliveredLedger` a bucket or a window at a time instead."""
    with DeliveredLedger(workdir, destination) as ledger:
        if ledger.scope is None:
            return {}
        where, params = ledger.scope
        return dict(
            ledger.connection().execute(
                f"select message_id, content_hash from delivered_messages where {where}",  # noqa: S608
                params,
            )
        )


IN_LIST = 500
"""Message ids asked of the ledger per query (SQLite's default limit is 32,766 variables)."""


class DeliveredLedger:
    """What the ledger says one destination has, asked a few ids at a time (read-only).

    `run` and the dry run ask it one staging bucket at a time (`BucketPlan`, the dry
    run's loop), so memory holds one bucket's deliveries, never every delivery of the
    destination (a million delivered messages took ~200 MB as one dict). The ledger file
    is checked (`verify_ledger_file`) before it is read. Picklable: a copy sent to another
    process opens its own connection.
    """

    def __init__(self, workdir: Path, destination: Destination | None = None):
        self.workdir = workdir
        self.destination = destination or local_default(workdir)
        self.path = ledger_path(workdir)
        self._conn: sqlite3.Connection | None = None
        self.scope: tuple[str, list[str]] | None = None
        """The `where` clause selecting this destination's rows; None: it has none."""
        self.total = 0
        """Messages the ledger records as delivered to the destination."""
        if self.path.exists():
            verify_ledger_file(self.path)
            self.scope = _delivered_scope(self.connection(), workdir, self.destination)
        if self.scope is not None:
            where, params = self.scope
            self.total = (
                self.connection()
                .execute(
                    f"select count(*) from delivered_messages where {where}",  # noqa: S608
                    params,
                )
                .fetchone()[0]
            )
            if not self.total:
                self.scope = None

    def connection(self) -> sqlite3.Connection:
        """The read-only connection (opened on first use)."""
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        return self._conn

    def among(self, message_ids: Sequence[str]) -> dict[str, str]:
        """`{message_id: content_hash}` of those of `message_ids` the destination has."""
        out: dict[str, str] = {}
        if self.scope is None:
            return out
        where, params = self.scope
        conn = self.connection()
        for start in range(0, len(message_ids), IN_LIST):
            chunk = message_ids[start : start + IN_LIST]
            out.update(
                conn.execute(
                    "select message_id, content_hash from delivered_messages"  # noqa: S608
                    f" where {where} and message_id in ({','.join('?' * len(chunk))})",
                    [*params, *chunk],
                )
            )
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DeliveredLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_conn": None}


class DeliveredMap:
    """A `DeliveredLedger` stand-in over an in-memory `{message_id: content_hash}`."""

    def __init__(self, delivered: Mapping[str, str]):
        self.delivered = delivered
        self.total = len(delivered)

    def among(self, message_ids: Sequence[str]) -> dict[str, str]:
        """`{message_id: content_hash}` of those of `message_ids` in the map."""
        get = self.delivered.get
        return {m: h for m in message_ids if (h := get(m)) is not None}


@dataclass
class BatchPlan:
    """The batch file after the rule: what is left to send, and what was left out."""

    batches: list[Batch]
    already_batches: int = 0
    """Batches every message of which this destination already has."""
    already_messages: int = 0
    """Messages left out because this destination already has them."""
    duplicate_messages: int = 0
    """Messages left out because an earlier batch of the file carries them and is not
    delivered yet (once it is, a later copy counts as already delivered)."""
    changed: list[str] = field(default_factory=list)
    """Delivered messages whose content changed since (sent only with `resend_changed`)."""


def filter_batches(
    batches: Iterable[Batch], delivered: Mapping[str, str], resend_changed: bool
) -> BatchPlan:
    """Drop from `batches` every message the destination has, and every message an earlier
    batch already carries (same id and content). A batch that loses some messages is
    rebuilt (with the id the chunker would give it), one that loses all is left out.
    Parts of a split message go or stay together."""
    plan = BatchPlan([])
    for window in filter_windows([list(batches)], lambda _: delivered, resend_changed, plan):
        plan.batches.extend(window)
    return plan


Lookup = Callable[[Sequence[str]], Mapping[str, str]]
"""`{message_id: content_hash}` of the given ids that the destination has (a ledger query)."""


def windows(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """`batches` in consecutive lists of at most `size` (the last may be shorter)."""
    window: list[Batch] = []
    for batch in batches:
        window.append(batch)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _seen_key(mid: str, digest: str) -> bytes:
    """16 bytes standing for (message id, content hash) in the seen set: a message costs
    ~60 bytes there instead of two strings (1M messages fit in ~80 MB)."""
    return blake2b(f"{mid}\x00{digest}".encode(), digest_size=16).digest()


class SeenOnDisk:
    """The messages (id and content hash) earlier windows kept, in a SQLite file.

    For callers that filter every window before any is delivered (the engines write every
    bucket's slice first), so the ledger cannot catch a message met again in a later
    window. 16 bytes a message on disk instead of ~90 in memory. The file is scratch:
    created empty, removed by `close`.
    """

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.conn = sqlite3.connect(path)
        self.conn.execute("pragma journal_mode = off")
        self.conn.execute("pragma synchronous = off")
        self.conn.execute("create table seen (key blob primary key) without rowid")

    def among(self, keys: Sequence[bytes]) -> set[bytes]:
        """Those of `keys` already kept."""
        found: set[bytes] = set()
        for start in range(0, len(keys), IN_LIST):
            chunk = keys[start : start + IN_LIST]
            found.update(
                row[0]
                for row in self.conn.execute(
                    f"select key from seen where key in ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk,
                )
            )
        return found

    def add(self, keys: Iterable[bytes]) -> None:
        """Remember `keys` as kept."""
        self.conn.executemany("insert or ignore into seen values (?)", ((k,) for k in keys))
        self.conn.commit()

    def close(self) -> None:
        """Close and remove the file."""
        self.conn.close()
        self.path.unlink(missing_ok=True)


class Unsettled:
    """The messages (id and content hash) of batches kept and not yet delivered, in memory.

    For a loader that reads the next window of the batch file while earlier windows are
    still being delivered (`pipeline.load.loader`): a message met again in a later window
    is neither in the ledger yet nor in that window, but here. Its batch leaves (`settle`,
    delivered or not) when the loader is done with it; once delivered, the ledger answers
    for it. Memory follows the batches in flight, never the export.
    """

    def __init__(self) -> None:
        self.count: dict[bytes, int] = {}
        self.by_batch: dict[str, list[bytes]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.count

    def add(self, batch_id: str, keys: Iterable[bytes]) -> None:
        """Remember the kept messages of one batch."""
        held = self.by_batch.setdefault(batch_id, [])
        for key in keys:
            held.append(key)
            self.count[key] = self.count.get(key, 0) + 1

    def settle(self, batch_id: str) -> None:
        """Forget one batch's messages (unknown ids are ignored)."""
        for key in self.by_batch.pop(batch_id, ()):
            left = self.count[key] - 1
            if left:
                self.count[key] = left
            else:
                del self.count[key]


def filter_windows(
    batches: Iterable[Sequence[Batch]],
    lookup: Lookup,
    resend_changed: bool,
    plan: BatchPlan,
    remembered: SeenOnDisk | None = None,
    unsettled: Unsettled | None = None,
) -> Iterator[list[Batch]]:
    """`filter_batches`, one window of the batch file at a time: each window's delivered
    messages are asked of `lookup` (the ledger), so memory grows with the window, not with
    what the destination has. Counts go to `plan` as windows are consumed (its `batches`
    stays empty).

    Duplicates are looked for inside a window, and across windows through what the
    caller passes; a set of every message seen would grow with the export (~90 bytes a
    message: 450 MB for 5M messages). The loader (`pipeline.load.loader.load_batches`)
    reads a window while earlier ones are still being delivered and passes `unsettled`:
    each kept batch's messages are added to it, a message it holds is a duplicate, and
    the loader settles a batch when it leaves, by when a delivered one is in the ledger
    (a later copy is then left out as delivered). A caller that delivers nothing between
    windows passes `remembered`, which carries the kept messages on disk.
    """
    changed: set[str] = set()
    dropped_parts: set[str] = set()
    sending: list[bytes] = []  # the keys of one batch's messages kept (`verdict`)
    for window in batches:
        delivered = lookup(sorted({mid for b in window for mid in b.message_ids}))
        seen: set[bytes] = set()
        if remembered is not None:
            keys = [
                _seen_key(mid, digest)
                for b in window
                for mid, digest in zip(b.message_ids, b.content_hashes, strict=True)
            ]
            seen = remembered.among(keys)
            earlier = set(seen)

        def verdict(
            mid: str,
            digest: str,
            delivered: Mapping[str, str] = delivered,
            seen: set[bytes] = seen,
        ) -> str:
            """ "send", "already" or "duplicate" for one message."""
            sent = delivered.get(mid)
            if sent is not None and sent != digest and mid not in changed:
                changed.add(mid)
                plan.changed.append(mid)
            if sent is not None and (sent == digest or not resend_changed):
                return "already"
            key = _seen_key(mid, digest)
            if key in seen or (unsettled is not None and key in unsettled):
                return "duplicate"
            seen.add(key)
            sending.append(key)
            return "send"

        kept: list[Batch] = []
        for batch in window:
            sending.clear()
            if batch.part is not None:  # one message in parts: decided by its first part
                mid = batch.message_ids[0]
                if batch.part[0] == 1:
                    what = verdict(mid, batch.content_hashes[0])
                    if what == "send":
                        dropped_parts.discard(mid)
                    else:
                        dropped_parts.add(mid)
                        plan.already_batches += what == "already"
                        plan.already_messages += what == "already"
                        plan.duplicate_messages += what == "duplicate"
                if mid not in dropped_parts:
                    kept.append(batch)
                    if unsettled is not None:  # every part holds it until the last is sent
                        unsettled.add(batch.batch_id, [_seen_key(mid, batch.content_hashes[0])])
                elif batch.part[0] == batch.part[1]:
                    dropped_parts.discard(mid)  # its last part: nothing more to drop
                continue
            keep: list[int] = []
            for i, (mid, digest) in enumerate(
                zip(batch.message_ids, batch.content_hashes, strict=True)
            ):
                what = verdict(mid, digest)
                if what == "send":
                    keep.append(i)
                elif what == "already":
                    plan.already_messages += 1
                else:
                    plan.duplicate_messages += 1
            if len(keep) == len(batch.message_ids):
                kept.append(batch)
            elif not keep:
                plan.already_batches += 1
            else:
                kept.append(_subset(batch, keep))
            if keep and unsettled is not None:
                unsettled.add(kept[-1].batch_id, sending)
        if remembered is not None:
            remembered.add(seen - earlier)
        yield kept


def _subset(batch: Batch, keep: list[int]) -> Batch:
    """`batch` with only the messages at `keep` (never a part batch: it has one message)."""
    ids = tuple(batch.message_ids[i] for i in keep)
    hashes = tuple(batch.content_hashes[i] for i in keep)
    messages = [batch.body["messages"][i] for i in keep]
    batch_id = stable_id(batch.user_id, batch.conversation_id, "", *ids, *hashes)
    info = {**batch.body.get("info", {}), "batch_id": batch_id, "first_message_id": ids[0][:1000]}
    body = {**batch.body, "messages": messages, "info": info}
    return replace(
        batch,
        batch_id=batch_id,
        message_ids=ids,
        content_hashes=hashes,
        body=body,
        tokens=messages_tokens(messages),
    )


@dataclass
class Delta:
    """Which staged rows an incremental run leaves out, and which delivered ones changed."""

    delivered_total: int
    """Messages the ledger records as delivered (staged now or not)."""
    staged_delivered: int
    """Staged rows that are already delivered."""
    changed: pa.Table
    """Staged rows (as given to `plan`) whose content differs from what was delivered."""
    exclude: set[str]
    """Message ids to leave out of the next batches."""
    excluded: int = -1
    """How many staged messages are left out (`len(exclude)` when not given)."""

    def __post_init__(self) -> None:
        if self.excluded < 0:
            self.excluded = len(self.exclude)

    @property
    def changed_ids(self) -> list[str]:
        """Ids of delivered messages whose content changed since."""
        return [str(m) for m in self.changed.column("message_id").to_pylist()]


def plan(
    table: pa.Table,
    delivered: Mapping[str, str],
    resend_changed: bool,
    *,
    policy: Policy = DEFAULT_POLICY,
) -> Delta:
    """Apply the rule to staged rows (`message_id` and `content` columns at least).

    `exclude` holds every delivered id, or only the unchanged ones with `resend_changed`.
    `policy` must be the redaction policy the next chunk uses (see the module docstring).
    """
    if not delivered or table.num_rows == 0:
        return Delta(len(delivered), 0, table.slice(0, 0), set())
    hit = table.filter(pc.is_in(table.column("message_id"), value_set=pa.array(list(delivered))))
    ids = hit.column("message_id").to_pylist()
    sent = redact(hit.column("content"), policy)
    contents = sent.content.to_pylist()
    changed_mask = [
        i in sent.dropped_by_row or content_hash(text) != delivered[mid]
        for i, (mid, text) in enumerate(zip(ids, contents, strict=True))
    ]
    changed = hit.filter(pa.array(changed_mask, type=pa.bool_()))
    exclude = {
        mid
        for mid, is_changed in zip(ids, changed_mask, strict=True)
        if not (is_changed and resend_changed)
    }
    return Delta(len(delivered), hit.num_rows, changed, exclude)


class Delivered(Protocol):
    """Where the rule asks what a destination has: `DeliveredLedger` or `DeliveredMap`."""

    total: int

    def among(self, message_ids: Sequence[str]) -> dict[str, str]: ...


class BucketPlan:
    """`plan` over the staged rows of the sources `labels`, one staging bucket at a time,
    as the chunker reaches them: the `exclude_ids` of `run`'s chunk step.

    `mid in plan` says whether the chunker leaves a staged message out. The first id of a
    bucket not seen yet makes the plan read that bucket's ids and contents, ask `delivered`
    about those ids only, and keep that bucket's answer; the previous bucket's is dropped.
    Memory holds one bucket (a few MB), never every delivery of the destination. Bucket
    order is not assumed: an id of another bucket makes the plan look forward from the
    current bucket (then from the first), so any order is answered right, in-order
    fastest. `finish` plans the buckets no id was asked of and returns the totals.

    A message id belongs to one bucket because a connector gives a message one
    conversation, and buckets are by conversation (`pipeline.core.buckets`). An id staged
    in two buckets (the same export under two sources with different conversation
    options) is planned in each bucket alone, as the chunker's duplicate check is.
    """

    def __init__(
        self,
        workdir: Path,
        labels: Iterable[str],
        delivered: Delivered,
        resend_changed: bool,
        *,
        policy: Policy = DEFAULT_POLICY,
    ):
        from pipeline.core.staging import staged_bucket_count

        self.workdir = workdir
        self.labels = list(labels)
        self.delivered = delivered
        self.resend_changed = resend_changed
        self.policy = policy
        self.buckets = staged_bucket_count(workdir, self.labels) if delivered.total else 0
        self.staged_delivered = 0
        self.excluded = 0
        """Staged messages left out (each bucket's distinct ids added up)."""
        self.changed: list[pa.Table] = []
        self._planned: set[int] = set()
        self._current = -1
        self._ids: set[str] = set()
        self._exclude: set[str] = set()

    def __contains__(self, mid: object) -> bool:
        if not self.buckets or not isinstance(mid, str):
            return False
        if mid not in self._ids:
            self._find(mid)
        return mid in self._exclude

    def _find(self, mid: str) -> None:
        """Move to the bucket that stages `mid` (unchanged if none does)."""
        start = self._current
        for step in range(1, self.buckets + 1):
            bucket = (start + step) % self.buckets
            self._load(bucket)
            if mid in self._ids:
                return

    def _load(self, bucket: int) -> None:
        """Plan `bucket`: its staged ids and which of them are left out."""
        from pipeline.core.staging import read_labeled_bucket

        table = read_labeled_bucket(
            self.workdir, self.labels, ["message_id", "content"], bucket, self.buckets
        ).drop_columns(["label"])
        ids = table.column("message_id").to_pylist()
        delta = plan(
            table,
            self.delivered.among(sorted(set(ids))),
            self.resend_changed,
            policy=self.policy,
        )
        if bucket not in self._planned:
            self._planned.add(bucket)
            self.staged_delivered += delta.staged_delivered
            self.excluded += len(delta.exclude)
            if delta.changed.num_rows:
                self.changed.append(delta.changed)
        self._current, self._ids, self._exclude = bucket, set(ids), delta.exclude

    def finish(self) -> Delta:
        """Plan the buckets not planned yet; the totals (`exclude`: the last bucket's)."""
        for bucket in range(self.buckets):
            if bucket not in self._planned:
                self._load(bucket)
        self._ids, self._exclude, self._current = set(), set(), -1
        empty = pa.schema([("message_id", pa.large_string()), ("content", pa.large_string())])
        return Delta(
            self.delivered.total,
            self.staged_delivered,
            pa.concat_tables(self.changed) if self.changed else empty.empty_table(),
            set(),
            self.excluded,
        )


def plan_workdir(
    workdir: Path,
    labels: Iterable[str],
    delivered: Mapping[str, str] | Delivered,
    resend_changed: bool,
    *,
    policy: Policy = DEFAULT_POLICY,
) -> Delta:
    """`plan` over the staged rows of the sources `labels`, one staging bucket at a time
    (memory bounded by the largest bucket, never the whole staging table). The returned
    `exclude` is empty: ask a `BucketPlan` which ids are left out."""
    view = DeliveredMap(delivered) if isinstance(delivered, Mapping) else delivered
    return BucketPlan(workdir, labels, view, resend_changed, policy=policy).finish()
