"""`memos-etl run`: extract -> chunk -> load for every source of a config, incrementally.

The orchestrator: the only module besides the dry run that chains the stages. Batches a
previous run left unfinished are delivered first, so nothing in flight is ever chunked
twice; then every source is extracted, only messages the destination has not received
(`pipeline.incremental`) are chunked, and the new batches are loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import incremental
from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.core.config import Config
from pipeline.core.lock import workdir_lock
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.staging import read_staging
from pipeline.core.workdir import batches_path, ledger_path
from pipeline.extract import extract_source, stats_dict
from pipeline.load.ledger import Ledger
from pipeline.load.loader import LoadStats, load_workdir
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
) -> RunResult:
    """extract -> chunk -> load for every source, incrementally.

    Only messages never delivered are chunked, so a conversation that grew gets just its
    new tail as further batches; messages whose content changed since delivery are
    reported and resent only with `load.resend_changed`.
    """
    progress = progress or NullProgress()
    workdir = cfg.workdir
    with workdir_lock(workdir), open_target(cfg.load, workdir, env=env) as endpoint:
        resumed = None
        if batches_path(workdir).exists() and ledger_path(workdir).exists():
            resumed = load_workdir(
                workdir,
                endpoint,
                cfg.load,
                progress=progress,
                handle_signals=handle_signals,
                heartbeat=heartbeat,
                account=cfg.account,
            )
            if resumed.stopped:
                return RunResult([], {}, [], resumed, None)
        extracted = [
            stats_dict(extract_source(s, workdir, default_user_id=cfg.user_id, progress=progress))
            for s in cfg.sources
        ]
        delivered = incremental.delivered_message_hashes(workdir)
        staged = read_staging(workdir, columns=["message_id", "content"]) if delivered else None
        delta = (
            incremental.plan(staged, delivered, cfg.load.resend_changed)
            if staged is not None
            else None
        )
        changed = delta.changed_ids if delta else []
        if changed and not cfg.load.resend_changed:
            log.warning(
                "%d delivered messages changed since; not resent (resend_changed: true sends them)",
                len(changed),
            )
        limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
        chunked = chunk_workdir(
            workdir,
            limits,
            exclude_ids=delta.exclude if delta else set(),
            since=since,
            tags=cfg.tags_by_source(),
        )
        stats = load_workdir(
            workdir,
            endpoint,
            cfg.load,
            progress=progress,
            handle_signals=handle_signals,
            heartbeat=heartbeat,
            account=cfg.account,
        )
        with Ledger.open(workdir) as ledger:
            users = ledger.user_ids()
    is_local = cfg.load.target == "local" and not cfg.load.base_url
    local = local_db_path(cfg.load, workdir) if is_local else None
    return RunResult(extracted, chunked.to_json(), changed, stats, resumed, local, users)
