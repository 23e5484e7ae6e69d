"""`memos-etl run`: extract -> chunk -> load for every source of a config, incrementally.

The orchestrator: the only module besides the dry run that chains the stages. Batches a
previous run left unfinished for the same destination are delivered first, so nothing in
flight is ever chunked twice (a batch file cut for another destination is left to it);
then every source is extracted, only messages the destination has not received
(`pipeline.incremental`) are chunked, and the new batches are loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import incremental
from pipeline.chunk import ChunkLimits, ChunkStats, chunk_workdir
from pipeline.core.config import Config
from pipeline.core.destination import Destination, destination_for
from pipeline.core.lock import workdir_lock
from pipeline.core.process_memory import hand_back_memory
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.staging import staged_sources
from pipeline.core.workdir import batches_path, ledger_path
from pipeline.extract import extract_source, stats_dict
from pipeline.load.entry import batch_file_cut_for, load_workdir
from pipeline.load.ledger import Ledger
from pipeline.load.preflight import preflight
from pipeline.load.stats import LoadStats
from pipeline.load.targets import local_db_path, open_target

log = logging.getLogger("memos_etl.run")


@dataclass
class RunResult:
    """What `memos-etl run` did: extract per source, chunk, and load (after finishing any
    batches a previous run left unfinished)."""

    extract: list[dict[str, Any]]
    chunk: dict[str, Any]
    changed: list[str]
    load: LoadStats
    resumed: LoadStats | None = None
    local_db: Path | None = None
    user_ids: list[str] = field(default_factory=list)


def run_pipeline(
    cfg: Config,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
    heartbeat: float | None = None,
    env: Mapping[str, str] | None = None,
    command: str = "memos-etl run",
    settings: dict[str, Any] | None = None,
) -> RunResult:
    """extract -> chunk -> load for every source, incrementally.

    Only messages never delivered are chunked, so a conversation that grew gets just its
    new tail as further batches; messages whose content changed since delivery are
    reported and resent only with `load.resend_changed`. "Delivered" means delivered to
    this config's destination (`pipeline.core.destination`); the destination is probed
    first (`preflight`), so a wrong URL or key stops the run before anything is extracted.
    """
    progress = progress or NullProgress()
    workdir = cfg.workdir
    dest = destination_for(cfg.load, workdir, env=env)
    with workdir_lock(workdir), open_target(cfg.load, workdir, env=env) as endpoint:
        preflight(
            endpoint,
            server=cfg.load.target == "memos-server",
            auth_scheme=cfg.load.auth_scheme,
            timeout=min(cfg.load.timeout, 10.0),
        )
        resumed = None
        cut_for = batch_file_cut_for(workdir)
        if (
            batches_path(workdir).exists()
            and ledger_path(workdir).exists()
            and cut_for in (None, dest.id)
        ):
            resumed = load_workdir(
                workdir,
                endpoint,
                cfg.load,
                destination=dest,
                command=command,
                settings=settings,
                progress=progress,
                handle_signals=handle_signals,
                heartbeat=heartbeat,
                account=cfg.account,
                record_idle=False,
            )
            if resumed.stopped:
                return RunResult([], {}, [], resumed, None)
        hand_back_memory()
        extracted, chunked, changed, already = extract_and_chunk(cfg, dest, since, progress)
        hand_back_memory()
        stats = load_workdir(
            workdir,
            endpoint,
            cfg.load,
            destination=dest,
            command=command,
            settings=settings,
            progress=progress,
            handle_signals=handle_signals,
            heartbeat=heartbeat,
            account=cfg.account,
            already_excluded=already,
        )
        with Ledger.open(workdir, dest) as ledger:
            users = ledger.user_ids()
    if resumed is not None:
        stats = _whole_run(resumed, stats)
    is_local = cfg.load.target == "local" and not cfg.load.base_url
    local = local_db_path(cfg.load, workdir) if is_local else None
    return RunResult(extracted, chunked.to_json(), changed, stats, resumed, local, users)


def extract_and_chunk(
    cfg: Config, dest: Destination, since: datetime | None, progress: Progress
) -> tuple[list[dict[str, Any]], ChunkStats, list[str], int]:
    """Extract every source, then chunk only what `dest` has not received (the first
    two steps of `run`, shared with the engines in `pipeline.engines`). The caller holds
    the workdir lock. Returns (extract stats per source, chunk result, changed ids, messages
    left out because `dest` has them)."""
    workdir = cfg.workdir
    started = time.monotonic()
    extracted = [
        stats_dict(
            extract_source(
                s,
                workdir,
                default_user_id=cfg.user_id,
                progress=progress,
                max_quarantined_share=cfg.extract.max_quarantined_share,
                require_staged=True,
            )
        )
        for s in cfg.sources
    ]
    log.info("extract: %d source(s) in %.1f s", len(extracted), time.monotonic() - started)
    hand_back_memory()
    started = time.monotonic()
    policy = cfg.redact.policy()
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    with incremental.DeliveredLedger(workdir, dest) as delivered:
        # asked bucket by bucket as the chunker reaches them: memory holds one bucket's
        # deliveries, never the destination's whole record
        exclude = incremental.BucketPlan(
            workdir, staged_sources(workdir), delivered, cfg.load.resend_changed, policy=policy
        )
        chunked = chunk_workdir(
            workdir,
            limits,
            exclude_ids=exclude if delivered.total else None,
            since=since,
            tags=cfg.tags_by_source(),
            excluded_for=dest.id,
            group=cfg.group_sources(),
            policy=policy,
            # one process: `run` holds what extract left and the load to come, and a
            # second chunk process (~200 MB) would take it past 512 MB at 5M messages for
            # a few seconds of a run the load dominates
            workers=1,
            progress=progress,
        )
        delta = exclude.finish()
    changed = delta.changed_ids
    if changed and not cfg.load.resend_changed:
        log.warning(
            "%d delivered messages changed since; not resent (resend_changed: true sends them)",
            len(changed),
        )
    log.info(
        "chunk: %d batches from %d new messages in %.1f s",
        chunked.batches,
        chunked.batched,
        time.monotonic() - started,
    )
    return extracted, chunked, changed, delta.excluded


def _whole_run(resumed: LoadStats, final: LoadStats) -> LoadStats:
    """The run's load counts over both of its load steps (finishing the previous batch
    file, then the new batches): what was sent, verified and requested adds up; the end
    state (done, failed, pending) is the new batch file's."""
    whole = replace(final, retries=resumed.retries + final.retries)
    whole.sent_batches += resumed.sent_batches
    whole.sent_messages += resumed.sent_messages
    whole.verified_landed += resumed.verified_landed
    whole.verified_messages += resumed.verified_messages
    whole.duplicate_messages += resumed.duplicate_messages
    whole.split += resumed.split
    whole.requests += resumed.requests
    whole.peak_in_flight = max(resumed.peak_in_flight, final.peak_in_flight)
    whole.duration += resumed.duration
    return whole
