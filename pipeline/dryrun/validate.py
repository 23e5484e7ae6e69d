"""Dry-run validation: extract and chunk every source, check everything, send nothing.

`validate(cfg)` answers before a migration: what will be sent, for which users, how many
addMessage calls of quota, how long at the configured rate, what was dropped and why, and
whether the API will accept it. It writes the staging table and quarantine file (as
`extract` does) and `<workdir>/report.json` + `report.html`; it never writes
`batches/`, never sends, and only reads the delivery ledger.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import incremental
from pipeline.chunk import AUTHOR_COLUMNS, CHUNK_COLUMNS, ChunkLimits, ChunkStats, chunk_table
from pipeline.core import redact
from pipeline.core.config import Config
from pipeline.core.destination import destination_for
from pipeline.core.errors import ConfigError
from pipeline.core.lock import workdir_lock
from pipeline.core.models import STAGING_SCHEMA, ExtractStats
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_labeled_bucket, staged_bucket_count, staged_sources
from pipeline.core.staging_buckets import all_files, hand_back_memory, release_freed_memory
from pipeline.core.workdir import staging_dir
from pipeline.dryrun import checks, merge
from pipeline.dryrun.html import write_reports
from pipeline.dryrun.plan import ChannelTally
from pipeline.dryrun.report import Report, ReportInputs, build_report
from pipeline.extract import extract_source

log = logging.getLogger(__name__)

TOP_N = 10
READ_COLUMNS = list(dict.fromkeys([*CHUNK_COLUMNS, *checks.EXAMPLE_COLUMNS]))
"""Staged columns the checks and the chunker need (metadata and author columns are not)."""
TIMELINE_MAX_DAYS = 120
TIMELINE_MAX_WEEKS = 104


def validate(
    cfg: Config,
    progress: Progress | None = None,
    *,
    since: datetime | None = None,
    write: bool = True,
    lock: bool = True,
) -> Report:
    """Extract + chunk every configured source without sending; return the full report.

    Mirrors `run`: messages the ledger has are left out (changed ones too, unless
    `load.resend_changed`), and so are messages created before `since` (timezone-aware).
    With `write` (the default) the report is also written to `<workdir>/report.json` and
    `<workdir>/report.html`. Counts add up: read = staged + skipped + quarantined, and
    staged = messages to send + already delivered + before `since`. Holds the workdir lock
    (`LockError` if a run is using the workdir) unless `lock=False` (the caller holds it).
    """
    if not cfg.sources:
        raise ConfigError("no sources configured; add at least one under `sources:`")
    with workdir_lock(cfg.workdir) if lock else contextlib.nullcontext():
        return _validate(cfg, progress, since, write)


def _validate(
    cfg: Config, progress: Progress | None, since: datetime | None, write: bool
) -> Report:
    progress = progress or NullProgress()
    workdir = cfg.workdir
    with _stage("extract"):
        extracted: list[ExtractStats] = [
            extract_source(s, workdir, default_user_id=cfg.user_id, progress=progress)
            for s in cfg.sources
        ]
    labels = [s.label for s in cfg.sources]
    group = cfg.group_sources()
    columns = READ_COLUMNS + AUTHOR_COLUMNS if group else READ_COLUMNS
    release_freed_memory()
    buckets = staged_bucket_count(workdir, labels)
    staged = sum(e.staged for e in extracted)
    log.info("validate: %d staged messages from %d source(s)", staged, len(labels))

    policy = cfg.redact.policy()
    # asked one bucket's ids at a time: memory never holds the destination's whole record
    delivered = incremental.DeliveredLedger(workdir, destination_for(cfg.load, workdir))
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    chunk_stats = ChunkStats()
    owners: set[str] = set()
    checker = checks.BatchChecker(load=cfg.load, max_tokens=limits.max_tokens)
    channels = ChannelTally() if any(s.kind == "slack" for s in cfg.sources) else None
    ledger = LedgerFigures(bool(delivered.total), delivered.total, 0, 0, set())
    rows = merge.AggregateParts(TOP_N)
    per_bucket: dict[str, list[checks.Finding]] = {}
    before_since = 0
    progress.start("validate", total=staged, unit="msg")
    # Reading a bucket and its row checks are mostly Arrow work, which runs without the
    # GIL: on a thread they take the other core while the chunker (Python) batches the
    # bucket before. Memory holds the bucket being batched and, at most, the next one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate-rows") as rows_thread:
        reading = rows_thread.submit(read_labeled_bucket, workdir, labels, columns, 0, buckets)
        for bucket in range(buckets):
            table = reading.result()
            ids = table.column("message_id").to_pylist() if delivered.total else []
            part = ledger_figures(
                table, delivered.among(sorted(set(ids))), cfg.load.resend_changed, policy
            )
            ledger.add(part)
            row_work = rows_thread.submit(_row_checks, bucket, table, rows, since, part.exclude)
            if bucket + 1 < buckets:
                reading = rows_thread.submit(
                    read_labeled_bucket, workdir, labels, columns, bucket + 1, buckets
                )
            with _stage(f"chunk + batch checks, bucket {bucket}"):
                bucket_stats = ChunkStats()
                batches = chunk_table(
                    table.select([*CHUNK_COLUMNS, *(AUTHOR_COLUMNS if group else []), "label"]),
                    limits,
                    bucket_stats,
                    part.exclude,
                    since=since,
                    tags=cfg.tags_by_source(),
                    group=group,
                    policy=policy,
                    users=owners,
                )
                for batch in batches:
                    checker.check(batch)
                    if channels is not None:
                        channels.add(batch.conversation_id, batch.tokens, len(batch.message_ids))
                    if batch.part is None or batch.part[0] == 1:
                        progress.advance(len(batch.message_ids))
                chunk_stats.merge(bucket_stats)
            found, earlier = row_work.result()
            before_since += earlier
            for name, finding in found.items():
                per_bucket.setdefault(name, []).append(finding)
            del table, row_work
            hand_back_memory()
    chunk_stats.users = len(owners)
    delivered.close()
    progress.close()

    entries = [e for e in read_quarantine(workdir) if e.get("source") in set(labels)]
    with _stage("row checks"):
        unit, timeline = rows.timeline(TIMELINE_MAX_DAYS, TIMELINE_MAX_WEEKS)
        aggregates = Aggregates(
            conversation_sizes=sorted(rows.conversation_sizes, reverse=True),
            largest_conversations=[_largest(r) for r in rows.largest_conversations()],
            user_counts=dict(rows.user_counts),
            user_conversations=dict(rows.user_conversations),
            timeline_unit=unit,
            timeline=timeline,
        )
        merged = {name: merge.merge_findings(parts) for name, parts in per_bucket.items()}
        findings = [
            checks.quarantined(entries[: checks.MAX_EXAMPLES * 5], len(entries)),
            merged["unknown_roles"],
            *checker.findings(chunk_stats.split_messages),
            checks.group_chat(
                chunk_stats.group_conversations, chunk_stats.group_left_out, checker.weights
            ),
            checks.long_ids(chunk_stats.shortened_ids),
            merged["empty_content"],
            merged["missing_timestamps"],
            merged["duplicate_ids"],
            merged["out_of_order"],
            merge.merge_scans(per_bucket["_secrets"], policy),
            merge.merge_scans(per_bucket["_personal_data"], policy),
            checks.redaction(chunk_stats, policy, checker.redacted_examples),
            checks.user_volumes(aggregates.user_counts),
            ledger.finding(),
            other_staged_sources(workdir, labels),
        ]
    report = build_report(
        ReportInputs(
            workdir=workdir,
            config=cfg,
            extracted=extracted,
            users=len(aggregates.user_counts),
            conversations=len(aggregates.conversation_sizes),
            conversation_sizes=aggregates.conversation_sizes,
            largest_conversations=aggregates.largest_conversations,
            user_counts=aggregates.user_counts,
            user_conversations=aggregates.user_conversations,
            timeline_unit=aggregates.timeline_unit,
            timeline=aggregates.timeline,
            chunk=chunk_stats,
            batch_tokens=checker.tokens,
            batch_messages=checker.messages,
            samples=checker.sample_bodies,
            ledger_present=ledger.present,
            ledger_delivered=ledger.delivered_total,
            ledger_staged_delivered=ledger.staged_delivered,
            ledger_changed=ledger.changed,
            since=since,
            before_since=before_since,
            channels=channels,
            findings=findings,
        )
    )
    if write:
        with _stage("report files"):
            write_reports(report, workdir)
    return report


def _row_checks(
    bucket: int,
    table: pa.Table,
    rows: merge.AggregateParts,
    since: datetime | None,
    exclude: set[str],
) -> tuple[dict[str, checks.Finding], int]:
    """One bucket's row checks and aggregates (added to `rows`), and its rows before
    `since`: everything the dry run figures from the staged rows rather than the batches."""
    with _stage(f"row checks, bucket {bucket}"):
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


def _largest(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": r["label_min"],
        "user_id": r["user_id"],
        "conversation_id": r["conversation_id"],
        "messages": r["seq_count"],
        "first": _iso(r["created_at_min"]),
        "last": _iso(r["created_at_max"]),
    }


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Log how long one stage of a validation took (INFO, shown with -v)."""
    start = time.perf_counter()
    yield
    log.info("validate: %s took %.2fs", name, time.perf_counter() - start)


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


def other_staged_sources(workdir: Path, labels: Iterable[str]) -> checks.Finding:
    """Sources staged in the workdir by earlier runs but not in this config.

    `run` chunks everything staged, so their messages would be sent too; they are not in
    this report's other figures. Remove `<workdir>/staging/<name>/` to drop them.
    """
    configured = set(labels)
    examples = []
    for name in staged_sources(workdir):
        if name in configured:
            continue
        files = all_files(staging_dir(workdir) / name)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        examples.append(
            {"source": name, "messages": rows, "folder": str(staging_dir(workdir) / name)}
        )
    return checks.Finding(
        "other_staged_sources",
        "Staged sources not in this config",
        "warning",
        sum(e["messages"] for e in examples),
        "messages",
        "Staged by an earlier extract; `run` would chunk and send them too. They are not "
        "counted elsewhere in this report; delete their staging folder to leave them out.",
        examples,
    )


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
class Aggregates:
    """Per-conversation, per-user and per-time figures of the staged rows."""

    conversation_sizes: list[int]
    largest_conversations: list[dict[str, Any]]
    user_counts: dict[str, int]
    user_conversations: dict[str, int]
    timeline_unit: str
    timeline: dict[str, list[tuple[str, int]]]


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())
