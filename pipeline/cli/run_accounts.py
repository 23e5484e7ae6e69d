"""`memos-etl run` over a multi-account config: each account's pipeline in turn, then one
summary per account and per source with totals that add up."""

from __future__ import annotations

import os
import shlex
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.common import emit
from pipeline.cli.load import finish_load, load_line

if TYPE_CHECKING:
    from pipeline.core.progress import Progress
    from pipeline.tenants import AccountPipeline, AccountRun


def run_accounts(
    pipelines: list[AccountPipeline],
    *,
    config_file: Path,
    workdir: Path | None,
    since: datetime | None,
    progress: Progress,
    heartbeat: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run each account's pipeline in turn, print the summary, exit like `run` does.

    An account whose load did not complete (failed or pending batches) does not stop the
    next one; a Ctrl-C does. The exit code is the first unfinished account's.
    """
    from pipeline.core.destination import destination_for
    from pipeline.load.entry import load_settings
    from pipeline.tenants import run_account

    runs: list[AccountRun] = []
    commands: list[str] = []
    for pipeline in pipelines:
        cfg = pipeline.config
        command = f"memos-etl run {shlex.quote(str(config_file))}"
        if workdir is not None:
            command += f" --workdir {shlex.quote(str(workdir))}"
        command += f" --account {shlex.quote(pipeline.account)}"
        if not quiet:
            click.echo(
                f"account {pipeline.account}: {len(cfg.sources)} source(s) -> {cfg.workdir}",
                err=True,
            )
        env = pipeline.environment(os.environ)
        dest = destination_for(cfg.load, cfg.workdir, env=env)
        settings = {**load_settings(cfg, config_file, dest), "account": pipeline.account}
        done = run_account(
            pipeline,
            env=os.environ,
            since=since,
            progress=progress,
            handle_signals=True,
            heartbeat=heartbeat,
            command=command,
            settings=settings,
        )
        runs.append(done)
        commands.append(command)
        if not quiet:
            click.echo(f"account {pipeline.account}: {load_line(done.result.load)}", err=True)
        if done.result.load.stopped == "interrupted":
            break
    out = summary(runs)
    emit(out, as_json, summary_text(out))
    for done, command in zip(runs, commands, strict=True):
        finish_load(done.result.load, command)


def summary(runs: list[AccountRun]) -> dict[str, Any]:
    """The `--json` summary: `accounts`, `sources` (by name) and `totals`.

    Message counts add up at every level: a source's `staged` is its `delivered` plus
    `not_delivered`; an account's counts are its sources' sums; `totals` are the accounts'.
    """
    counted = ("staged", "quarantined", "sent", "delivered", "not_delivered")
    sources: dict[str, dict[str, Any]] = {}
    accounts: dict[str, dict[str, Any]] = {}
    for done in runs:
        rows = [s.to_json() for s in done.sources]
        for source, row in zip(done.sources, rows, strict=True):
            sources[source.source] = row
        load = done.result.load
        accounts[done.pipeline.account] = {
            "search_command": search_command(done),
            "workdir": str(done.pipeline.config.workdir),
            "destination": done.destination.describe(),
            "sources": [s.source for s in done.sources],
            **{key: sum(int(row[key]) for row in rows) for key in counted},
            "load": load.to_json(),
            "complete": load.complete,
        }
    totals: dict[str, Any] = {
        "accounts": len(accounts),
        "sources": len(sources),
        **{key: sum(int(a[key]) for a in accounts.values()) for key in counted},
        "requests": sum(done.result.load.requests for done in runs),
    }
    return {"accounts": accounts, "sources": sources, "totals": totals}


def search_command(done: AccountRun) -> str | None:
    """For an account loaded into the embedded local store: how to search what it holds."""
    result, owner = done.result, done.pipeline.config.user_id
    if not (result.local_db and result.user_ids and result.load.complete):
        return None
    user = owner if owner in result.user_ids else result.user_ids[0]
    return (
        f"memos-etl search --db {shlex.quote(str(result.local_db))} "
        f'--user-id {shlex.quote(user)} "your question"'
    )


def summary_text(out: dict[str, Any]) -> str:
    """The summary for people: one block per account, one line per source, the totals."""

    def counts(row: dict[str, Any]) -> str:
        return (
            f"staged {row['staged']}, sent {row['sent']}, delivered {row['delivered']}, "
            f"not delivered {row['not_delivered']}, quarantined {row['quarantined']}"
        )

    lines: list[str] = []
    for name, account in out["accounts"].items():
        load = account["load"]
        state = "complete" if account["complete"] else "INCOMPLETE"
        lines.append(f"account {name} ({account['destination']}): {counts(account)}; {state}")
        lines.append(
            f"  load: sent {load['sent']['messages']} messages, verified landed "
            f"{load['verified_messages']}, failed {load['failed']} batches, pending "
            f"{load['pending']} batches, requests {load['requests']}"
        )
        for source in account["sources"]:
            lines.append(f"  source {source}: {counts(out['sources'][source])}")
        if account["search_command"]:
            lines.append(f"  try: {account['search_command']}")
    totals = out["totals"]
    lines.append(
        f"total: {totals['accounts']} accounts, {totals['sources']} sources: {counts(totals)}"
    )
    return "\n".join(lines)
