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
from pipeline.core.staging import read_labeled, staged_sources
from pipeline.core.staging_buckets import all_files
from pipeline.core.workdir import staging_dir
from pipeline.dryrun import checks
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
    table = read_labeled(workdir, labels, columns)
    log.info("validate: %d staged messages from %d source(s)", table.num_rows, len(labels))

    policy = cfg.redact.policy()
    delivered = incremental.delivered_message_hashes(workdir, destination_for(cfg.load, workdir))
    ledger = ledger_figures(table, delivered, cfg.load.resend_changed, policy)
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    chunk_stats = ChunkStats()
    checker = checks.BatchChecker(load=cfg.load, max_tokens=limits.max_tokens)
    channels = ChannelTally() if any(s.kind == "slack" for s in cfg.sources) else None
    progress.start("validate", total=table.num_rows, unit="msg")
    with _stage("chunk + batch checks"):
        batches = chunk_table(
            table.select([*CHUNK_COLUMNS, *(AUTHOR_COLUMNS if group else []), "label"]),
            limits,
            chunk_stats,
            ledger.exclude,
            since=since,
            tags=cfg.tags_by_source(),
            group=group,
            policy=policy,
        )
        for batch in batches:
            checker.check(batch)
            if channels is not None:
                channels.add(batch.conversation_id, batch.tokens, len(batch.message_ids))
            if batch.part is None or batch.part[0] == 1:
                progress.advance(len(batch.message_ids))
    progress.close()

    entries = [e for e in read_quarantine(workdir) if e.get("source") in set(labels)]
    before_since = _before_since(table, since, ledger.exclude)
    with _stage("row checks"):
        aggregates = aggregate(table)
        findings = [
            checks.quarantined(entries[: checks.MAX_EXAMPLES * 5], len(entries)),
            checks.unknown_roles(table),
            *checker.findings(chunk_stats.split_messages),
            checks.group_chat(
                chunk_stats.group_conversations, chunk_stats.group_left_out, checker.weights
            ),
            checks.long_ids(chunk_stats.shortened_ids),
            checks.empty_content(table),
            checks.missing_timestamps(table),
            checks.duplicate_ids(table),
            checks.out_of_order(table),
            checks.secrets(table, policy),
            checks.personal_data(table, policy),
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
    changed_examples: list[dict[str, Any]] = field(default_factory=list)

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


def aggregate(table: pa.Table) -> Aggregates:
    """Group the staged rows by conversation, user and time bucket (Arrow hash aggregates)."""
    convs = table.group_by(["user_id", "conversation_id"]).aggregate(
        [("seq", "count"), ("label", "min"), ("created_at", "min"), ("created_at", "max")]
    )
    convs = convs.sort_by(
        [("seq_count", "descending"), ("user_id", "ascending"), ("conversation_id", "ascending")]
    )
    largest = [
        {
            "source": r["label_min"],
            "user_id": r["user_id"],
            "conversation_id": r["conversation_id"],
            "messages": r["seq_count"],
            "first": _iso(r["created_at_min"]),
            "last": _iso(r["created_at_max"]),
        }
        for r in convs.slice(0, TOP_N).to_pylist()
    ]
    users = table.group_by("user_id").aggregate(
        [("seq", "count"), ("conversation_id", "count_distinct")]
    )
    user_ids = users.column("user_id").to_pylist()
    user_counts = dict(zip(user_ids, users.column("seq_count").to_pylist(), strict=True))
    user_convs = dict(
        zip(user_ids, users.column("conversation_id_count_distinct").to_pylist(), strict=True)
    )
    unit, timeline = _timeline(table)
    return Aggregates(
        conversation_sizes=convs.column("seq_count").to_pylist(),
        largest_conversations=largest,
        user_counts=user_counts,
        user_conversations=user_convs,
        timeline_unit=unit,
        timeline=timeline,
    )


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _timeline(table: pa.Table) -> tuple[str, dict[str, list[tuple[str, int]]]]:
    """Timed messages per source per day, week or month (the finest that fits the span)."""
    timed = table.select(["label", "created_at"]).filter(pc.is_valid(table.column("created_at")))
    if timed.num_rows == 0:
        return "day", {}
    bounds = pc.min_max(timed.column("created_at")).as_py()
    days = (bounds["max"] - bounds["min"]).days
    unit = (
        "day"
        if days <= TIMELINE_MAX_DAYS
        else "week"
        if days <= TIMELINE_MAX_WEEKS * 7
        else ("month")
    )
    bucket = pc.floor_temporal(timed.column("created_at"), unit=unit)
    grouped = (
        pa.table({"source": timed.column("label"), "bucket": bucket})
        .group_by(["source", "bucket"])
        .aggregate([("bucket", "count")])
        .sort_by([("source", "ascending"), ("bucket", "ascending")])
    )
    series: dict[str, list[tuple[str, int]]] = {}
    for r in grouped.to_pylist():
        series.setdefault(r["source"], []).append(
            (r["bucket"].date().isoformat(), r["bucket_count"])
        )
    return unit, series
