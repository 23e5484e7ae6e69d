"""`memos-etl run`: extract -> chunk -> load for every source of a config."""

from __future__ import annotations

import shlex
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.core.config import Config
    from pipeline.core.progress import Progress

from pipeline.cli.accounts import account_option, select_account
from pipeline.cli.chunk import redaction_line
from pipeline.cli.common import emit, load_cli_config, setup
from pipeline.cli.extract import extract_line, sum_counts
from pipeline.cli.load import finish_load, heartbeat_seconds, load_line, load_summary
from pipeline.cli.redaction import apply_redact_flags, redact_options
from pipeline.cli.run_accounts import run_accounts
from pipeline.cli.validate import dry_run_report


@click.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Override the config's workdir.")
@click.option("--since", type=click.DateTime(), help="Only messages from this date (UTC) on.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Send nothing and touch no delivery state: write the validation report instead "
    "(same as `memos-etl validate CONFIG_FILE`).",
)
@click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@account_option
@click.option(
    "--engine",
    type=click.Choice(["embedded", "inprocess", "ray"]),
    default="embedded",
    show_default=True,
    help="embedded: one loader; inprocess / ray: one load per conversation bucket sharing "
    "the account's budget, in this process or as Ray tasks (memos-etl[ray]; RAY_ADDRESS "
    "joins a cluster). See docs/ray.md.",
)
@click.option(
    "--buckets",
    type=click.IntRange(min=1, max=1024),
    default=8,
    show_default=True,
    help="Conversation buckets per destination with --engine inprocess or ray.",
)
@redact_options
def run(
    config_file: Path,
    workdir: Path | None,
    since: datetime | None,
    dry_run: bool,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
    account: str | None,
    engine: str,
    buckets: int,
    redact_actions: tuple[str, ...],
    redact_patterns: tuple[str, ...],
) -> None:
    """Run extract -> chunk -> load for every source in CONFIG_FILE, incrementally.

    Messages already delivered are skipped, so a scheduled re-run sends only what is new.
    With --dry-run nothing is sent: the validation report is written instead.

    A config with `accounts:` runs each account's pipeline in turn (or only --account
    NAME's) and prints a summary per account and per source (docs/accounts.md).

    Example: memos-etl run configs/quickstart.yaml
    """
    from pipeline.core.destination import destination_for
    from pipeline.load.entry import load_settings
    from pipeline.run import run_pipeline
    from pipeline.tenants import account_pipelines

    progress = setup(verbose, quiet, no_progress)
    cfg = load_cli_config(config_file, {"workdir": workdir})
    if not cfg.sources:
        raise ConfigError(f"{config_file}: no sources configured")
    when = since.replace(tzinfo=timezone.utc) if since and since.tzinfo is None else since
    if engine != "embedded" and not dry_run:
        # the engines iterate every account of the config themselves (pipeline.tenants)
        command = f"memos-etl run {shlex.quote(str(config_file))}"
        if workdir is not None:
            command += f" --workdir {shlex.quote(str(workdir))}"
        command += f" --engine {engine} --buckets {buckets}"
        cfg = apply_redact_flags(cfg, redact_actions, redact_patterns)
        engine_run(cfg, engine, buckets, when, progress, as_json, command)
        return
    if cfg.accounts:
        pipelines = [select_account(cfg, account)] if account or dry_run else account_pipelines(cfg)
        pipelines = [
            replace(p, config=apply_redact_flags(p.config, redact_actions, redact_patterns))
            for p in pipelines
        ]
        if dry_run:
            dry_run_report(pipelines[0].config, progress, when, as_json)
            return
        run_accounts(
            pipelines,
            config_file=config_file,
            workdir=workdir,
            since=when,
            progress=progress,
            heartbeat=heartbeat_seconds(quiet, verbose),
            quiet=quiet,
            as_json=as_json,
        )
        return
    select_account(cfg, account)  # refuses --account without `accounts:`
    cfg = apply_redact_flags(cfg, redact_actions, redact_patterns)
    if dry_run:
        dry_run_report(cfg, progress, when, as_json)
        return
    command = f"memos-etl run {shlex.quote(str(config_file))}"
    if workdir is not None:
        command += f" --workdir {shlex.quote(str(workdir))}"
    result = run_pipeline(
        cfg,
        since=when,
        progress=progress,
        handle_signals=True,
        heartbeat=heartbeat_seconds(quiet, verbose),
        command=command,
        settings=load_settings(cfg, config_file, destination_for(cfg.load, cfg.workdir)),
    )
    extract_totals = sum_counts(result.extract)
    out: dict[str, Any] = {
        "extract": {**extract_totals, "sources": result.extract},
        "chunk": result.chunk,
        "changed": {"count": len(result.changed), "message_ids": result.changed[:20]},
        "load": result.load.to_json(),
        "resumed": result.resumed.to_json() if result.resumed else None,
        "workdir": str(cfg.workdir),
    }
    lines = [extract_line(r) for r in result.extract]
    if result.resumed and (result.resumed.sent_batches or result.resumed.stopped):
        lines.append("finished a previous run: " + load_line(result.resumed))
    if result.chunk:
        lines.append(
            f"chunk: {result.chunk['batches']} batches from {result.chunk['batched']} "
            f"new messages ({result.chunk['excluded']} already delivered or excluded"
            + (
                f", of them {result.chunk['duplicates']} duplicates"
                if result.chunk.get("duplicates")
                else ""
            )
            + ")"
        )
        redacted = redaction_line(result.chunk["redacted"])
        if redacted:
            lines.append(redacted)
    if result.changed:
        lines.append(
            f"{len(result.changed)} delivered messages changed since; not resent "
            "(set load.resend_changed: true to send the new version)"
            if not cfg.load.resend_changed
            else f"{len(result.changed)} changed messages resent"
        )
    if result.resumed is None or not result.resumed.stopped:
        lines.append(load_summary(result.load))
    if result.local_db and result.user_ids and result.load.complete:
        owner = cfg.user_id if cfg.user_id in result.user_ids else result.user_ids[0]
        search = (
            f"memos-etl search --db {shlex.quote(str(result.local_db))} "
            f'--user-id {shlex.quote(owner)} "your question"'
        )
        out["search_command"] = search
        lines.append(f"try: {search}")
    emit(out, as_json, "\n".join(lines))
    finish_load(result.load, command)


def engine_run(
    cfg: Config,
    engine: str,
    buckets: int,
    since: datetime | None,
    progress: Progress,
    as_json: bool,
    command: str,
) -> None:
    """`run --engine inprocess|ray`: every account by bucket; one summary line per account."""
    from pipeline.engines.driver import run_with_engine
    from pipeline.load.stats import LoadStats

    runs = run_with_engine(
        cfg,
        "ray" if engine == "ray" else "inprocess",
        buckets=buckets,
        since=since,
        progress=progress,
        command=command,
    )
    out: dict[str, Any] = {"engine": engine, "buckets": buckets, "accounts": []}
    lines: list[str] = []
    worst = LoadStats()
    for r in runs:
        load = r.load
        out["accounts"].append(
            {
                "account": r.account,
                "destination": r.destination.describe(),
                "extract": {**sum_counts(r.extract), "sources": r.extract},
                "chunk": r.chunk,
                "load": load.to_json(),
                "buckets": {str(b): s.to_json() for b, s in sorted(r.buckets.items())},
                "budget_peaks": r.peaks,
            }
        )
        lines.extend(extract_line(e) for e in r.extract)
        lines.append(f"{r.account}: {len(r.buckets)} buckets; " + load_summary(load))
        if not load.complete and (worst.complete or load.stopped):
            worst = load
    emit(out, as_json, "\n".join(lines))
    finish_load(worst, command)
