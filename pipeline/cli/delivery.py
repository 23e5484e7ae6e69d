"""`memos-etl check`, `memos-etl reset` and `memos-etl history`: the destination's side of
the ledger (is it reachable, forget what it received, what past loads did)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from pipeline.cli.accounts import account_option, select_account
from pipeline.cli.common import common_options, emit, load_cli_config, setup
from pipeline.core.config import Config


def _target_options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--base-url", help="API base URL (a running server for local).")(func)
    return click.option(
        "--target",
        type=click.Choice(["memos", "local"]),
        help="memos (MEMOS_BASE_URL / MEMOS_API_KEY) or local (embedded server).",
    )(func)


@click.command()
@_target_options
@account_option
@common_options
def check(
    target: str | None,
    base_url: str | None,
    account: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Check the destination answers and accepts the key (one cheap request).

    Exit 0 when it does, 3 when it cannot be reached, 6 when the key is rejected. `load`
    and `run` do the same check before sending anything.

    Example: MEMOS_API_KEY=... memos-etl check --target memos
    """
    from pipeline.core.destination import destination_for
    from pipeline.load.preflight import preflight
    from pipeline.load.targets import open_target

    setup(verbose, quiet, no_progress)
    cfg, env, guard = _account_config(config_path, workdir, target, base_url, account)
    with guard:
        dest = destination_for(cfg.load, cfg.workdir, base_url=base_url, env=env)
        with open_target(cfg.load, cfg.workdir, base_url=base_url, env=env) as endpoint:
            result = preflight(
                endpoint,
                server=cfg.load.target == "memos-server",
                auth_scheme=cfg.load.auth_scheme,
                timeout=min(cfg.load.timeout, 10.0),
            )
    note = f" ({result.note})" if result.note else ""
    emit(
        {**result.to_json(), "destination": dest.describe()},
        as_json,
        f"OK: {dest.describe()} reachable, key accepted, {result.latency_ms:.0f} ms{note}",
    )


@click.command()
@_target_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@account_option
@common_options
def reset(
    target: str | None,
    base_url: str | None,
    yes: bool,
    account: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Forget every delivery to one destination; the next load sends it everything again.

    Other destinations of the workdir are untouched. Asks first unless --yes.

    Example: memos-etl reset --workdir w --target local --yes
    """
    from pipeline.core.destination import destination_for
    from pipeline.core.lock import workdir_lock
    from pipeline.core.workdir import ledger_path
    from pipeline.load.ledger import Ledger, ledger_status

    setup(verbose, quiet, no_progress)
    cfg, env, guard = _account_config(config_path, workdir, target, base_url, account)
    with guard:
        dest = destination_for(cfg.load, cfg.workdir, base_url=base_url, env=env)
    known = ledger_path(cfg.workdir).exists() and any(
        d["dest_id"] == dest.id for d in ledger_status(cfg.workdir)["destinations"]
    )
    if not known:
        emit(
            {"forgotten": 0, "destination": dest.describe()},
            as_json,
            f"no deliveries to {dest.describe()} in {cfg.workdir}; nothing to forget",
        )
        return
    if not yes:
        click.confirm(
            f"forget every delivery to {dest.describe()}? The next load sends it everything again",
            abort=True,
            err=True,
        )
    with workdir_lock(cfg.workdir), Ledger.open(cfg.workdir, dest) as ledger:
        n = ledger.forget()
    emit(
        {"forgotten": n, "destination": dest.describe()},
        as_json,
        f"forgot {n} delivered messages to {dest.describe()}",
    )


def _account_config(
    config_path: Path | None,
    workdir: Path | None,
    target: str | None,
    base_url: str | None,
    account: str | None,
) -> tuple[Config, dict[str, str], contextlib.AbstractContextManager[None]]:
    """The config, environment and error prefix of the account `check` / `reset` act on
    (a config without `accounts:`: the config itself and the process environment)."""
    from pipeline.tenants import account_errors

    flags = {"target": target, "base_url": base_url}
    cfg = load_cli_config(config_path, {"workdir": workdir, "load": flags})
    pipeline = select_account(cfg, account, flags)
    with account_errors(pipeline):
        env = pipeline.environment(os.environ)
    return pipeline.config, env, account_errors(pipeline)


@click.command()
@click.option("--limit", type=int, default=20, show_default=True, help="Runs to show.")
@account_option
@common_options
def history(
    limit: int,
    account: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """List past loads, newest first: when, where to, and their counts.

    Counts are messages: sent (by this run), verified (found already landed after an
    uncertain send, not resent), already delivered before; failed and pending batches.

    Example: memos-etl history --workdir w
    """
    from pipeline.load.ledger import run_history

    setup(verbose, quiet, no_progress)
    cfg = select_account(load_cli_config(config_path, {"workdir": workdir}), account).config
    runs = run_history(cfg.workdir, limit)
    lines = [
        f"{r['started_at']} -> {r['ended_at'] or 'unfinished'}  {r['destination']}: "
        f"sent {r['sent']}, verified {r['verified']}, already delivered "
        f"{r['already_delivered']}, failed {r['failed']}, pending {r['pending']}, "
        f"requests {r['requests']}, {r['duration_s'] or 0:.1f} s"
        + (f" ({r['stopped']})" if r["stopped"] else "")
        for r in runs
    ]
    emit({"runs": runs}, as_json, "\n".join(lines) or f"no loads recorded in {cfg.workdir}")
