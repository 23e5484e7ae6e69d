"""Entry points of the load stage: a workdir's batch file, through the ledger, into a target.

`load_command` is `memos-etl load` (lock, target, preflight, load); `load_workdir` loads a
batch file for a caller that already holds the lock and the target (`run`)."""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson

from pipeline import incremental
from pipeline.core.batches import Batch, read_batches
from pipeline.core.config import AccountConfig, Config, LoadConfig
from pipeline.core.destination import EMBEDDED, Destination, destination_for
from pipeline.core.errors import (
    ConfigError,
    InputError,
)
from pipeline.core.lock import workdir_lock
from pipeline.core.progress import Progress
from pipeline.core.workdir import batches_path, manifest_path
from pipeline.load.ledger import Ledger
from pipeline.load.loader import load_batches
from pipeline.load.preflight import preflight
from pipeline.load.stats import LoadStats, run_counts
from pipeline.load.targets import Endpoint, open_target

log = logging.getLogger("memos_etl.loader")

WINDOW = 2000
"""Batches of the batch file read at a time; a load holds about two windows (bounded
memory whatever the target: `load_batches`'s `hold`)."""


def load_workdir(
    workdir: Path,
    endpoint: Endpoint,
    cfg: LoadConfig,
    *,
    destination: Destination | None = None,
    command: str = "memos-etl load",
    settings: dict[str, Any] | None = None,
    progress: Progress | None = None,
    retry_failed: bool = False,
    handle_signals: bool = False,
    heartbeat: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    account: AccountConfig | None = None,
    already_excluded: int = 0,
    record_idle: bool = True,
) -> LoadStats:
    """Load `<workdir>/batches/batches.jsonl` into `destination` through the ledger
    (synchronous entry point; default destination: the workdir's local store).

    Messages the destination already has, or that an earlier batch carries, are dropped
    first (`pipeline.incremental.filter_batches`), so however the batch file was made, each
    message is sent once. The run is recorded for `memos-etl history` and `settings` kept
    as the destination's last load settings. The caller holds the workdir lock.

    `already_excluded` counts messages the caller left out of the batch file because this
    destination has them (`run` cuts them at chunk time): they are reported as already
    delivered, so a rerun says what it skipped instead of "sent 0". With `record_idle`
    false, a load that found nothing to do leaves no history line (`run`'s first step,
    finishing an earlier batch file, when there is none to finish).
    """
    if not batches_path(workdir).exists():
        raise ConfigError(f"no batches in {workdir}; run `memos-etl chunk` first")
    with Ledger.open(workdir, destination) as ledger:
        _check_batch_file_is_for(workdir, ledger.destination)
        if settings is not None:
            ledger.remember_settings(settings)
        plan = incremental.BatchPlan([])
        # the batch file goes in windows, read as the load goes (`load_batches`): memory
        # holds a few windows' batches, never the export, and slow conversations overlap
        unsettled = incremental.Unsettled()
        reader = _CountingReader(workdir)
        kept = incremental.filter_windows(
            incremental.windows(reader, WINDOW),
            ledger.delivered_among,
            cfg.resend_changed,
            plan,
            unsettled=unsettled,
        )
        run_id = ledger.start_run(command)
        stats = LoadStats()
        try:
            stats = asyncio.run(
                load_batches(
                    kept,
                    ledger,
                    endpoint,
                    cfg,
                    progress=progress,
                    retry_failed=retry_failed,
                    handle_signals=handle_signals,
                    heartbeat=heartbeat,
                    transport=transport,
                    account=account,
                    hold=WINDOW,
                    on_settled=unsettled.settle,
                    expected_messages=_manifest_count(workdir, "batched"),
                    left_out=lambda: plan.already_messages + plan.duplicate_messages,
                )
            )
            if stats.stopped:
                stats.unread = reader.unread()
        finally:
            if plan.changed and not cfg.resend_changed:
                log.warning(
                    "%d delivered messages changed since; not resent"
                    " (resend_changed: true sends them)",
                    len(plan.changed),
                )
            stats.already_batches += plan.already_batches
            stats.already_messages += plan.already_messages
            stats.duplicate_messages = plan.duplicate_messages
            stats.changed = plan.changed
            stats.already_messages += already_excluded
            stats.messages += plan.already_messages + already_excluded
            if record_idle or _did_work(stats):
                ledger.end_run(run_id, run_counts(stats))
            else:
                ledger.drop_run(run_id)
        return stats


class _CountingReader:
    """The batch file's batches, counted as they are read: after a stop, `unread` tells
    how many the load left for the next run (`LoadStats.unread`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.read = 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in read_batches(self.workdir):
            self.read += 1
            yield batch

    def unread(self) -> int:
        """Batches not read yet: the manifest's count less those read (without a manifest,
        the rest of the file's lines are counted, not decoded)."""
        total = _manifest_count(self.workdir, "batches")
        if total is None:
            with batches_path(self.workdir).open("rb") as fh:
                total = sum(1 for line in fh if line.strip())
        return max(0, total - self.read)


def _did_work(stats: LoadStats) -> bool:
    """Whether a load sent, checked, failed or left anything: worth a history line."""
    return bool(
        stats.requests
        or stats.sent_batches
        or stats.verified_landed
        or stats.failed
        or stats.pending
        or stats.stopped
    )


def _manifest(workdir: Path) -> dict[str, Any]:
    """The batch file's manifest (empty when missing or unreadable: it only informs)."""
    try:
        manifest = orjson.loads(manifest_path(workdir).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _manifest_count(workdir: Path, name: str) -> int | None:
    """A count the manifest records for the batch file (`batched`: its messages, each once;
    `batches`: its lines), or None."""
    value = _manifest(workdir).get(name)
    return value if isinstance(value, int) and value >= 0 else None


def batch_file_cut_for(workdir: Path) -> str | None:
    """The destination id `run` cut the batch file for (leaving out what it had), if any."""
    cut_for = _manifest(workdir).get("excluded_for")
    return str(cut_for) if cut_for else None


def _check_batch_file_is_for(workdir: Path, destination: Destination) -> None:
    """Refuse a batch file `run` cut for another destination: it leaves out what that
    destination already had, which this one may lack (`chunk` batches everything)."""
    cut_for = batch_file_cut_for(workdir)
    if cut_for and cut_for != destination.id:
        raise InputError(
            f"the batch file in {workdir} was made by `run` for another destination and "
            f"leaves out messages {destination.describe()} may not have; run "
            f"`memos-etl chunk --workdir {shlex.quote(str(workdir))}` first (nothing is "
            "sent twice: messages a destination has are skipped)"
        )


def load_settings(
    cfg: Config, config_path: Path | None, destination: Destination
) -> dict[str, Any]:
    """What a resume command must repeat to reach the same destination the same way (the
    normalized URL is spelled out, so the command works without `MEMOS_BASE_URL`)."""
    return {
        "config": str(config_path) if config_path else None,
        "workdir": str(cfg.workdir),
        "target": cfg.load.target,
        "base_url": None if destination.base_url == EMBEDDED else destination.base_url,
        "rate": cfg.load.rate,
        "max_in_flight": cfg.load.max_in_flight,
        "allow_insecure_http": cfg.load.allow_insecure_http,
    }


def load_command(
    cfg: Config,
    *,
    base_url: str | None = None,
    retry_failed: bool = False,
    progress: Progress | None = None,
    handle_signals: bool = False,
    heartbeat: float | None = None,
    env: Mapping[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    command: str = "memos-etl load",
) -> LoadStats:
    """`memos-etl load`: lock the workdir, open the target, check it answers (preflight),
    load the batch file into that destination."""
    if not batches_path(cfg.workdir).exists():
        raise ConfigError(f"no batches in {cfg.workdir}; run `memos-etl chunk` first")
    destination = destination_for(cfg.load, cfg.workdir, base_url=base_url, env=env)
    with (
        workdir_lock(cfg.workdir),
        open_target(cfg.load, cfg.workdir, base_url=base_url, env=env) as endpoint,
    ):
        preflight(
            endpoint,
            server=cfg.load.target == "memos-server",
            auth_scheme=cfg.load.auth_scheme,
            timeout=min(cfg.load.timeout, 10.0),
        )
        return load_workdir(
            cfg.workdir,
            endpoint,
            cfg.load,
            destination=destination,
            command=command,
            settings=settings,
            progress=progress,
            retry_failed=retry_failed,
            handle_signals=handle_signals,
            heartbeat=heartbeat,
            account=cfg.account,
        )
