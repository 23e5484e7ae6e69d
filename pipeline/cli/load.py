"""`memos-etl load` and `memos-etl status`: deliver batches, and show the delivery state."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pipeline.load.stats import LoadStats as LoadStatsT

from pipeline.cli.accounts import account_option, select_account
from pipeline.cli.common import common_options, emit, load_cli_config, setup


def heartbeat_seconds(quiet: bool, verbose: int = 0) -> float | None:
    """A periodic progress log line when stderr is not a terminal (tqdm hides itself
    there) or with -v. Per-request lines (the embedded server's, httpx's) only with -vv."""
    if verbose < 2:
        for name in ("memos_etl.localapi", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if quiet or (sys.stderr.isatty() and not verbose):
        return None
    logging.getLogger("memos_etl.progress").setLevel(logging.INFO)
    return 10.0


def load_line(stats: LoadStatsT) -> str:
    """The one vocabulary of counts (messages): sent, verified landed, already delivered,
    failed and pending batches, requests."""
    return (
        f"sent {stats.sent_messages} messages ({stats.sent_batches} batches), "
        f"verified landed {stats.verified_messages}, "
        f"already delivered {stats.already_messages}, failed {stats.failed} batches, "
        f"pending {stats.pending} batches"
    )


def resume_command(settings: dict[str, Any], *extra: str) -> str:
    """A complete `memos-etl load` command for the same destination and the same settings
    (what `status`, Ctrl-C and failures print; running it as printed resumes)."""
    from pipeline.core.workdir import config_workdir

    parts = ["memos-etl load"]
    if settings.get("config"):
        parts.append(f"--config {shlex.quote(str(settings['config']))}")
    if settings.get("account"):  # an account's workdir is named by the config's and the name
        top = config_workdir(Path(settings["workdir"]))
        parts.append(f"--workdir {shlex.quote(str(top))}")
        parts.append(f"--account {shlex.quote(str(settings['account']))}")
    else:
        parts.append(f"--workdir {shlex.quote(str(settings['workdir']))}")
    parts.append(f"--target {settings['target']}")
    if settings.get("base_url"):
        parts.append(f"--base-url {shlex.quote(str(settings['base_url']))}")
    if settings.get("rate") is not None:
        parts.append(f"--rate {settings['rate']:g}")
    if settings.get("max_in_flight") is not None:
        parts.append(f"--max-in-flight {settings['max_in_flight']}")
    if settings.get("allow_insecure_http"):
        parts.append("--allow-insecure-http")
    parts.extend(extra)
    return " ".join(parts)


def load_summary(stats: LoadStatsT) -> str:
    data = stats.to_json()
    retries = ", ".join(f"{k} {v}" for k, v in data["retries"].items()) or "none"
    lines = [
        f"load: {load_line(stats)} (blocked behind a failure {stats.blocked}); "
        f"split {stats.split}"
        + (f"; duplicates skipped {stats.duplicate_messages}" if stats.duplicate_messages else "")
        + (f"; changed since delivery, not resent {len(stats.changed)}" if stats.changed else "")
        + (f"; not read after the stop {stats.unread} batches" if stats.unread else ""),
        f"retries: {retries}",
        f"requests: {stats.requests} in {data['duration_s']:.1f} s "
        f"({data['requests_per_s']:.1f}/s)",
    ]
    if data["redacted"]:
        masked = ", ".join(f"{k} {n}" for k, n in data["redacted"].items())
        lines.append(f"redacted (masked in sent batches): {masked}")
    for failure in data["failures"][:5]:
        lines.append(
            f"failed: conversation {failure['conversation_id']} batch "
            f"{failure['batch_id']}: {failure['error']}"
        )
    return "\n".join(lines)


def finish_load(stats: LoadStatsT, command: str) -> None:
    """Map a load's end state to the exit code (0, 4, 6 or 130) with one stderr line."""
    from pipeline.core.errors import AuthError, LoadError, QuotaExhaustedError

    if stats.stopped == "interrupted":
        click.echo(f"interrupted; resume with: {command}", err=True)
        click.get_current_context().exit(130)
    if stats.stopped == "auth":
        raise AuthError(stats.stop_message or "API key rejected")
    if stats.stopped == "quota":
        raise QuotaExhaustedError(f"{stats.stop_message}; resume with: {command}")
    if not stats.complete:
        raise LoadError(
            f"load incomplete: {stats.failed} batches failed, {stats.pending} pending "
            f"({stats.blocked} blocked behind a failure); fix the cause, then: "
            f"{command} --retry-failed"
        )


@click.command()
@click.option(
    "--target",
    type=click.Choice(["memos", "memos-server", "local"]),
    help="memos: MemOS Cloud (MEMOS_API_KEY); memos-server: a self-hosted MemOS server "
    "(MEMOS_BASE_URL); local: the embedded server.",
)
@click.option("--base-url", help="API base URL (a running server for --target local).")
@click.option(
    "--rate",
    type=float,
    help="Request ceiling per second [default: account.requests_per_second (50); "
    "the embedded local target: none]; lowered to what the server accepts.",
)
@click.option(
    "--max-in-flight",
    type=int,
    help="Concurrent requests [default: rate x observed latency, 4..256].",
)
@click.option("--retry-failed", is_flag=True, help="Re-queue failed batches (after a fix).")
@click.option(
    "--allow-insecure-http",
    is_flag=True,
    help="Allow sending the key over plain http to a non-loopback host (docs/security.md).",
)
@account_option
@common_options
def load(
    target: str | None,
    base_url: str | None,
    rate: float | None,
    max_in_flight: int | None,
    retry_failed: bool,
    allow_insecure_http: bool,
    account: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Deliver the batches to MemOS, exactly once, resuming from the ledger.

    Exit 0 when everything is delivered, 4 when batches remain failed or pending,
    6 when the API key is rejected, 130 on Ctrl-C.

    Example: memos-etl load --workdir w --target local
    """
    from pipeline.core.destination import destination_for
    from pipeline.load.entry import load_command, load_settings
    from pipeline.tenants import account_errors

    progress = setup(verbose, quiet, no_progress)
    flags = {
        "target": target,
        "base_url": base_url,
        "rate": rate,
        "max_in_flight": max_in_flight,
        "allow_insecure_http": True if allow_insecure_http else None,
    }
    pipeline = select_account(
        load_cli_config(config_path, {"workdir": workdir, "load": flags}), account, flags
    )
    cfg = pipeline.config
    with account_errors(pipeline):
        env = pipeline.environment(os.environ)
        dest = destination_for(cfg.load, cfg.workdir, base_url=base_url, env=env)
        settings = load_settings(cfg, config_path, dest)
        if pipeline.named:
            settings["account"] = pipeline.account
        command = resume_command(settings)
        stats = load_command(
            cfg,
            base_url=base_url,
            retry_failed=retry_failed,
            progress=progress,
            handle_signals=True,
            heartbeat=heartbeat_seconds(quiet, verbose),
            env=env,
            settings=settings,
            command=command,
        )
    out = {**stats.to_json(), "workdir": str(cfg.workdir), "destination": dest.describe()}
    emit(out, as_json, f"destination: {dest.describe()}\n{load_summary(stats)}")
    finish_load(stats, command)


@click.command()
@account_option
@common_options
def status(
    account: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Show the delivery ledger: batches by status, delivered messages, failures.

    Example: memos-etl status --workdir w
    """
    from pipeline.load.ledger import ledger_status

    setup(verbose, quiet, no_progress)
    cfg = select_account(load_cli_config(config_path, {"workdir": workdir}), account).config
    info = ledger_status(cfg.workdir)
    if not info["exists"]:
        emit(info, as_json, f"no ledger in {cfg.workdir} yet; nothing was loaded")
        return
    lines = [f"ledger: {info['ledger']}"]
    if info.get("unattributed_delivered"):
        lines.append(
            f"delivered before destinations were recorded: {info['unattributed_delivered']} "
            "messages (the first destination loaded adopts them)"
        )
    for dest in info["destinations"]:
        lines.append(f"destination: {dest['describe']}")
        lines += [
            f"  {name:>8}: {c['batches']} batches, {c['messages']} messages"
            for name, c in dest["batches"].items()
            if c["batches"]
        ]
        lines.append(f"  delivered messages: {dest['delivered_messages']}")
        if dest["uncertain"]:
            lines.append(f"  uncertain (checked before resending): {dest['uncertain']} batches")
        lines += [
            f"  failed: conversation {f['conversation_id']} batch {f['batch_id']}: {f['error']}"
            for f in dest["failures"]
        ]
        settings = dest["settings"] or _default_settings(dest, cfg.workdir)
        unfinished = dest["batches"]["pending"]["batches"] + dest["batches"]["sending"]["batches"]
        if dest["failures"]:
            hint = resume_command(settings, "--retry-failed")
            lines.append(f"  after fixing the cause: {hint}")
            dest["resume_command"] = hint
        elif unfinished:
            hint = resume_command(settings)
            lines.append(f"  resume with: {hint}")
            dest["resume_command"] = hint
    emit(info, as_json, "\n".join(lines))


def _default_settings(dest: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Resume settings for a destination loaded before settings were recorded."""
    embedded = dest["base_url"] == "embedded"
    return {
        "workdir": str(workdir),
        "target": dest["kind"],
        "base_url": None if embedded else dest["base_url"],
    }


# --- local MemOS-compatible server: serve, search -------------------------------------------
