"""The dry run's work on one staging bucket, on whichever process claims it.

Staging is bucketed by conversation, so every figure of the report is a sum over buckets
(see `merge`). `DryRunJob(bucket)` reads one bucket, asks the delivery ledger about its
ids, chunks it, checks its batches and rows, and returns a `BucketPart`: the bucket's
figures, small and picklable (counts, the first examples, one int per batch), never its
rows or batches. `pipeline.dryrun.validate` adds the parts up in bucket order, so the
report is the same whichever process did which bucket.

Imports neither the report's HTML and charts nor the connectors: a worker process that
loads this module holds the chunker, the checks and a bucket, nothing more.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import incremental
from pipeline.chunk import AUTHOR_COLUMNS, CHUNK_COLUMNS, ChunkLimits, ChunkStats, chunk_table
from pipeline.core import redact
from pipeline.core.config import LoadConfig
from pipeline.core.memos_api import SERVER_ADD_SCHEMA, RequestValidator
from pipeline.core.models import STAGING_SCHEMA
from pipeline.core.process_memory import hand_back_memory
from pipeline.core.staging import read_labeled_bucket
from pipeline.dryrun import checks, merge
from pipeline.dryrun.plan import ChannelTally
from pipeline.dryrun.tokens import COUNT_ALL, TokenSample

READ_WAIT = 10.0
"""Seconds a process waits for another's bucket read to end before it reads anyway."""
READ_COLUMNS = list(dict.fromkeys([*CHUNK_COLUMNS, *checks.EXAMPLE_COLUMNS]))
"""Staged columns the checks and the chunker need (metadata and author columns are not)."""


@dataclass
class LedgerFigures:
    """What the delivery ledger says about the staged rows."""

    present: bool
    delivered_total: int
    staged_delivered: int
    changed: int
    exclude: set[str]
    """This bucket's ids left out (a total over buckets keeps none: `add` skips them)."""
    changed_examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, part: LedgerFigures) -> None:
        """Add the figures of another staging bucket (same ledger)."""
        self.staged_delivered += part.staged_delivered
        self.changed += part.changed
        room = checks.MAX_EXAMPLES - len(self.changed_examples)
        self.changed_examples += part.changed_examples[: max(room, 0)]

    def finding(self) -> checks.Finding:
        """Delivered messages whose content changed since they were sent."""
        return checks.Finding(
            "changed_since_delivery",
            "Delivered messages whose content changed",
            "info",
            self.changed,
            "messages",
            "Already in MemOS with older content; sent again only with load.resend_changed.",
            self.changed_examples,
        )


def ledger_figures(
    table: pa.Table,
    delivered: dict[str, str],
    resend_changed: bool,
    policy: redact.Policy = redact.DEFAULT_POLICY,
) -> LedgerFigures:
    """Which staged rows are already delivered, and which of those changed since: the
    incremental rule (`pipeline.incremental.plan`, content as sent under the redaction
    `policy`), with examples for the report."""
    delta = incremental.plan(table, delivered, resend_changed, policy=policy)
    examples = checks.example_rows(delta.changed.slice(0, checks.MAX_EXAMPLES))
    return LedgerFigures(
        bool(delivered),
        delta.delivered_total,
        delta.staged_delivered,
        delta.changed.num_rows,
        delta.exclude,
        examples,
    )


@dataclass
class BucketPart:
    """One bucket's figures, added up in bucket order by `pipeline.dryrun.validate`."""

    stats: ChunkStats
    owners: set[str]
    """Users whose batches this bucket holds (distinct users are counted over all parts)."""
    batches: checks.BatchChecker
    """The bucket's batch figures (its token sample a `TokenSample.merge` part)."""
    channels: ChannelTally | None
    rows: merge.AggregateParts
    found: dict[str, checks.Finding]
    """The row checks' findings (`ROW_CHECKS`, by function name)."""
    before_since: int
    ledger: LedgerFigures
    sent: int
    """Messages in the bucket's batches (what the progress bar counts)."""
    seconds: float
    """Wall time of the bucket's work (logged with -v)."""


@dataclass(frozen=True)
class DryRunJob:
    """What every bucket of one dry run shares; called with a bucket number, it does that
    bucket's work. Picklable: each worker process gets a copy (its ledger opens its own
    read-only connection)."""

    workdir: Path
    labels: tuple[str, ...]
    columns: tuple[str, ...]
    buckets: int
    limits: ChunkLimits
    since: datetime | None
    tags: Mapping[str, Sequence[str]]
    group: Container[str]
    policy: redact.Policy
    load: LoadConfig
    delivered: incremental.DeliveredLedger
    slack: bool
    """Tally tokens per Slack channel (`ChannelTally`)."""
    top_n: int
    rows_on_thread: bool
    """Row checks on a second thread while this one chunks (one process: they take the
    other core; with a process per core they would only compete)."""
    counted: Any
    """A shared integer (`multiprocessing.Value`): batches already added up in bucket
    order. A bucket counts exactly as many of its first batches as may still be among the
    run's first `tokens.COUNT_ALL` (see `TokenSample.merge`)."""
    reading: Any = None
    """A lock shared by the processes (`multiprocessing.Lock`), held while one reads a
    bucket: a Parquet read peaks at about three times the bucket's size, and two at once
    would stack those peaks. None on one process."""

    def __call__(self, bucket: int) -> BucketPart:
        """Read, plan against the ledger, chunk and check one bucket."""
        part = self.check(bucket, self.read(bucket))
        hand_back_memory()  # the bucket's rows are gone now
        return part

    def read(self, bucket: int) -> pa.Table:
        """One bucket's staged rows (the columns the dry run needs), read while no other
        process reads (waiting `READ_WAIT` seconds at most: a killed process may hold the
        lock)."""
        held = self.reading is not None and self.reading.acquire(timeout=READ_WAIT)
        try:
            return read_labeled_bucket(
                self.workdir, self.labels, list(self.columns), bucket, self.buckets
            )
        finally:
            if held:
                self.reading.release()

    def check(self, bucket: int, table: pa.Table) -> BucketPart:
        """Plan `table` (bucket `bucket`, as `read`) against the ledger, chunk and check it."""
        start = time.perf_counter()
        ids = table.column("message_id").to_pylist() if self.delivered.total else []
        ledger = ledger_figures(
            table,
            self.delivered.among(sorted(set(ids))),
            self.load.resend_changed,
            self.policy,
        )
        exclude, ledger.exclude = ledger.exclude, set()
        del ids
        rows = merge.AggregateParts(self.top_n)
        if self.rows_on_thread:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate-rows") as pool:
                row_work = pool.submit(_row_checks, table, rows, self.since, exclude)
                part = self._batches(table, exclude)
                found, before_since = row_work.result()
        else:
            found, before_since = _row_checks(table, rows, self.since, exclude)
            part = self._batches(table, exclude)
        stats, owners, checker, channels, sent = part
        return BucketPart(
            stats,
            owners,
            checker,
            channels,
            rows,
            found,
            before_since,
            ledger,
            sent,
            time.perf_counter() - start,
        )

    def _batches(
        self, table: pa.Table, exclude: set[str]
    ) -> tuple[ChunkStats, set[str], checks.BatchChecker, ChannelTally | None, int]:
        """Chunk the bucket and check every batch (the batches are never kept)."""
        group = bool(self.group)
        stats = ChunkStats()
        owners: set[str] = set()
        checker = checks.BatchChecker(
            load=self.load,
            max_tokens=self.limits.max_tokens,
            validator=request_validator(self.load.server),
            tokens=TokenSample.part(max(0, COUNT_ALL - int(self.counted.value))),
        )
        channels = ChannelTally() if self.slack else None
        sent = 0
        batches = chunk_table(
            table.select([*CHUNK_COLUMNS, *(AUTHOR_COLUMNS if group else []), "label"]),
            self.limits,
            stats,
            exclude,
            since=self.since,
            tags=self.tags,
            group=self.group,
            policy=self.policy,
            users=owners,
        )
        for batch in batches:
            checker.check(batch)
            if channels is not None:
                channels.add(batch.conversation_id, batch.tokens, len(batch.message_ids))
            if batch.part is None or batch.part[0] == 1:
                sent += len(batch.message_ids)
        checker.validator = None  # compiled once per process; not sent back
        return stats, owners, checker, channels, sent


@functools.cache
def request_validator(server: bool) -> RequestValidator:
    """The request schema, compiled once per process (it memoizes bodies by shape)."""
    return RequestValidator(SERVER_ADD_SCHEMA if server else None)


def _row_checks(
    table: pa.Table,
    rows: merge.AggregateParts,
    since: datetime | None,
    exclude: set[str],
) -> tuple[dict[str, checks.Finding], int]:
    """One bucket's row checks and aggregates (added to `rows`), and its rows before
    `since`: everything the dry run figures from the staged rows rather than the batches."""
    rows.add(table)
    found = {check.__name__: check(table) for check in ROW_CHECKS}
    return found, _before_since(table, since, exclude)


def _secrets(table: pa.Table) -> checks.Finding:
    return checks.secrets(table)


def _personal_data(table: pa.Table) -> checks.Finding:
    return checks.personal_data(table)


ROW_CHECKS = (
    checks.unknown_roles,
    checks.empty_content,
    checks.missing_timestamps,
    checks.duplicate_ids,
    checks.out_of_order,
    _secrets,
    _personal_data,
)
"""Checks over one bucket's staged rows, added up with `merge` (secrets and personal data
are found without the policy per bucket and restated under it once)."""


def _before_since(table: pa.Table, since: datetime | None, exclude: set[str]) -> int:
    """Staged rows the `since` filter leaves out (rows already delivered not counted)."""
    if since is None or table.num_rows == 0:
        return 0
    old = pc.fill_null(
        pc.less(
            table.column("created_at"), pa.scalar(since, STAGING_SCHEMA.field("created_at").type)
        ),
        False,
    )
    if exclude:
        delivered = pc.is_in(table.column("message_id"), value_set=pa.array(list(exclude)))
        old = pc.and_(old, pc.invert(delivered))
    return int(pc.sum(pc.cast(old, pa.int64())).as_py() or 0)
