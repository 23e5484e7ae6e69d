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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import incremental
from pipeline.chunk import AUTHOR_COLUMNS, ChunkLimits, ChunkStats
from pipeline.chunk.stage import default_workers
from pipeline.core.bucket_workers import InOrder, in_parallel, worker_context
from pipeline.core.config import Config
from pipeline.core.destination import destination_for
from pipeline.core.errors import ConfigError
from pipeline.core.lock import workdir_lock
from pipeline.core.models import ExtractStats
from pipeline.core.process_memory import hand_back_memory, release_freed_memory
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import staged_bucket_count, staged_sources
from pipeline.core.staging_buckets import all_files
from pipeline.core.workdir import staging_dir
from pipeline.dryrun import checks, merge
from pipeline.dryrun.buckets import (
    READ_COLUMNS,
    BucketPart,
    DryRunJob,
    LedgerFigures,
    request_validator,
)
from pipeline.dryrun.plan import ChannelTally
from pipeline.dryrun.report import Report, ReportInputs, build_report
from pipeline.extract import extract_source

log = logging.getLogger(__name__)

TOP_N = 10
SCANS = ("_secrets", "_personal_data")
"""Row checks found without the redaction policy, restated under it once (`merge_scans`)."""
TIMELINE_MAX_DAYS = 120
TIMELINE_MAX_WEEKS = 104


def validate(
    cfg: Config,
    progress: Progress | None = None,
    *,
    since: datetime | None = None,
    write: bool = True,
    lock: bool = True,
    workers: int | None = None,
) -> Report:
    """Extract + chunk every configured source without sending; return the full report.

    Mirrors `run`: messages the ledger has are left out (changed ones too, unless
    `load.resend_changed`), and so are messages created before `since` (timezone-aware).
    With `write` (the default) the report is also written to `<workdir>/report.json` and
    `<workdir>/report.html`. Counts add up: read = staged + skipped + quarantined, and
    staged = messages to send + already delivered + before `since`. Holds the workdir lock
    (`LockError` if a run is using the workdir) unless `lock=False` (the caller holds it).
    `workers` > 1 checks that many staging buckets at a time (this process and
    `workers - 1` others); None chooses as chunk does (`default_workers`). The report is
    the same whatever the number.
    """
    if not cfg.sources:
        raise ConfigError("no sources configured; add at least one under `sources:`")
    with workdir_lock(cfg.workdir) if lock else contextlib.nullcontext():
        return _validate(cfg, progress, since, write, workers)


def _validate(
    cfg: Config,
    progress: Progress | None,
    since: datetime | None,
    write: bool,
    workers: int | None,
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
    release_freed_memory()
    hand_back_memory()  # what extract freed, before a worker starts beside this process
    buckets = staged_bucket_count(workdir, labels)
    staged = sum(e.staged for e in extracted)
    log.info("validate: %d staged messages from %d source(s)", staged, len(labels))

    # asked one bucket's ids at a time: memory never holds the destination's whole record
    delivered = incremental.DeliveredLedger(workdir, destination_for(cfg.load, workdir))
    if workers is None:
        workers = default_workers(buckets)
    workers = min(workers, buckets)
    context = worker_context()
    job = DryRunJob(
        workdir=workdir,
        labels=tuple(labels),
        columns=tuple(READ_COLUMNS + AUTHOR_COLUMNS if group else READ_COLUMNS),
        buckets=buckets,
        limits=ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages),
        since=since,
        tags=cfg.tags_by_source(),
        group=frozenset(group),
        policy=cfg.redact.policy(),
        load=cfg.load,
        delivered=delivered,
        slack=any(s.kind == "slack" for s in cfg.sources),
        top_n=TOP_N,
        rows_on_thread=workers <= 1,
        counted=context.Value("q", 0, lock=False),
        reading=context.Lock() if workers > 1 else None,
    )
    total = Totals(job, progress)
    progress.start("validate", total=staged, unit="msg")
    with _stage(f"buckets on {workers} process(es)"):
        if workers <= 1:
            _one_process(job, total.add)
        else:
            delivered.close()  # each process opens its own connection (a fork would share it)
            in_parallel(job, buckets, workers, InOrder(total.add), what="validate", context=context)
    delivered.close()
    progress.close()
    chunk_stats, checker, ledger, rows = total.stats, total.checker, total.ledger, total.rows
    found, before_since, channels = total.found, total.before_since, total.channels
    policy = job.policy

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
        findings = [
            checks.quarantined(entries[: checks.MAX_EXAMPLES * 5], len(entries)),
            found["unknown_roles"],
            *checker.findings(chunk_stats.split_messages),
            checks.group_chat(
                chunk_stats.group_conversations, chunk_stats.group_left_out, checker.weights
            ),
            checks.long_ids(chunk_stats.shortened_ids),
            found["empty_content"],
            found["missing_timestamps"],
            found["duplicate_ids"],
            found["out_of_order"],
            merge.merge_scans([found["_secrets"]], policy),
            merge.merge_scans([found["_personal_data"]], policy),
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
        from pipeline.dryrun.html import write_reports  # charts: only once the buckets are done

        with _stage("report files"):
            write_reports(report, workdir)
    return report


def _largest(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": r["label_min"],
        "user_id": r["user_id"],
        "conversation_id": r["conversation_id"],
        "messages": r["seq_count"],
        "first": _iso(r["created_at_min"]),
        "last": _iso(r["created_at_max"]),
    }


def _one_process(job: DryRunJob, take: Callable[[BucketPart], None]) -> None:
    """Every bucket on this process, the next one read on a thread meanwhile (reading is
    Arrow work, off the GIL: it takes the other core while this one chunks). Memory holds
    the bucket being checked and, at most, the next one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate-read") as reader:
        reading = reader.submit(job.read, 0)
        for bucket in range(job.buckets):
            table = reading.result()
            if bucket + 1 < job.buckets:
                reading = reader.submit(job.read, bucket + 1)
            take(job.check(bucket, table))
            del table
            hand_back_memory()


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Log how long one stage of a validation took (INFO, shown with -v)."""
    start = time.perf_counter()
    yield
    log.info("validate: %s took %.2fs", name, time.perf_counter() - start)


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


class Totals:
    """The dry run's figures, added up bucket by bucket in bucket order (`add`), so they
    are the same whichever process checked which bucket."""

    def __init__(self, job: DryRunJob, progress: Progress):
        self.job, self.progress = job, progress
        self.stats = ChunkStats()
        self.owners: set[str] = set()
        self.checker = checks.BatchChecker(
            load=job.load,
            max_tokens=job.limits.max_tokens,
            validator=request_validator(job.load.server),
        )
        self.channels = ChannelTally() if job.slack else None
        self.ledger = LedgerFigures(bool(job.delivered.total), job.delivered.total, 0, 0, set())
        self.rows = merge.AggregateParts(job.top_n)
        self.found: dict[str, checks.Finding] = {}
        """The row checks' findings so far (examples capped: memory does not grow with the
        bucket count)."""
        self.before_since = 0
        self.added = 0

    def add(self, part: BucketPart) -> None:
        """Add the next bucket's figures."""
        log.info("validate: bucket %d took %.2fs", self.added, part.seconds)
        self.stats.merge(part.stats)
        self.owners |= part.owners
        self.stats.users = len(self.owners)
        self.checker.merge(part.batches)
        self.job.counted.value = self.checker.tokens.batches
        if self.channels is not None and part.channels is not None:
            self.channels.merge(part.channels)
        self.ledger.add(part.ledger)
        self.rows.merge(part.rows)
        for name, finding in part.found.items():
            so_far = self.found.get(name)
            if so_far is None:
                self.found[name] = finding
            elif name in SCANS:
                self.found[name] = merge.merge_scans([so_far, finding], None)
            else:
                self.found[name] = merge.merge_findings([so_far, finding])
        self.before_since += part.before_since
        self.progress.advance(part.sent)
        self.added += 1
