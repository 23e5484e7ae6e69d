"""`memos-etl load` and `memos-etl status`: deliver batches, and show the delivery state."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pipeline.load.loader import LoadStats as LoadStatsT

from pipeline.cli.common import common_options, emit, load_cli_config, setup


def heartbeat_seconds(quiet: bool) -> float | None:
    """A periodic progress log line when stderr is not a terminal (tqdm hides itself there)."""
    if quiet or sys.stderr.isatty():
        return None
    logging.getLogger("memos_etl.progress").setLevel(logging.INFO)
    return 10.0


def load_line(stats: LoadStatsT) -> str:
    return (
        f"sent {stats.sent_batches} batches ({stats.sent_messages} messages), "
        f"already delivered {stats.already_batches}, failed {stats.failed}, "
        f"pending {stats.pending}"
    )


def load_summary(stats: LoadStatsT) -> str:
    data = stats.to_json()
    retries = ", ".join(f"{k} {v}" for k, v in data["retries"].items()) or "none"
    lines = [
        f"load: {load_line(stats)} (blocked behind a failure {stats.blocked}); "
        f"split {stats.split}; verified already landed {stats.verified_landed}",
        f"retries: {retries}",
        f"requests: {stats.requests} in {data['duration_s']:.1f} s "
        f"({data['requests_per_s']:.1f}/s)",
    ]
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
    type=click.Choice(["memos", "local"]),
    help="memos (MEMOS_BASE_URL / MEMOS_API_KEY) or local (embedded server).",
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
@common_options
def load(
    target: str | None,
    base_url: str | None,
    rate: float | None,
    max_in_flight: int | None,
    retry_failed: bool,
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
    from pipeline.load.loader import load_command

    progress = setup(verbose, quiet, no_progress)
    cfg = load_cli_config(
        config_path,
        {
            "workdir": workdir,
            "load": {
                "target": target,
                "base_url": base_url,
                "rate": rate,
                "max_in_flight": max_in_flight,
            },
        },
    )
    stats = load_command(
        cfg,
        retry_failed=retry_failed,
        progress=progress,
        handle_signals=True,
        heartbeat=heartbeat_seconds(quiet),
    )
    emit({**stats.to_json(), "workdir": str(cfg.workdir)}, as_json, load_summary(stats))
    parts = ["memos-etl load"]
    if config_path:
        parts.append(f"--config {shlex.quote(str(config_path))}")
    parts.append(f"--workdir {shlex.quote(str(cfg.workdir))} --target {cfg.load.target}")
    if base_url:
        parts.append(f"--base-url {shlex.quote(base_url)}")
    finish_load(stats, " ".join(parts))


@click.command()
@common_options
def status(
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
    cfg = load_cli_config(config_path, {"workdir": workdir})
    info = ledger_status(cfg.workdir)
    if not info["exists"]:
        emit(info, as_json, f"no ledger in {cfg.workdir} yet; nothing was loaded")
        return
    counts = info["batches"]
    lines = [f"ledger: {info['ledger']}"]
    lines += [
        f"{name:>8}: {c['batches']} batches, {c['messages']} messages"
        for name, c in counts.items()
        if c["batches"]
    ]
    lines.append(f"delivered messages: {info['delivered_messages']}")
    if info["uncertain"]:
        lines.append(f"uncertain (checked before resending): {info['uncertain']} batches")
    lines += [
        f"failed: conversation {f['conversation_id']} batch {f['batch_id']}: {f['error']}"
        for f in info["failures"]
    ]
    if info["failures"]:
        lines.append(
            "after fixing the cause: memos-etl load --retry-failed "
            f"--workdir {shlex.quote(str(cfg.workdir))}"
        )
    emit(info, as_json, "\n".join(lines))


# --- local MemOS-compatible server: serve, search -------------------------------------------
