"""`memos-etl validate`: the dry run."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.core.config import Config
from pipeline.core.progress import Progress

if TYPE_CHECKING:
    pass

from pipeline.cli.accounts import account_option, select_account
from pipeline.cli.common import emit, load_cli_config, setup, sigterm_as_interrupt
from pipeline.cli.redaction import apply_redact_flags, redact_options


@click.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Override the config's workdir.")
@click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--since", type=click.DateTime(), help="Only messages from this date (UTC) on.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes checking staging buckets at once (default: 2 on a machine with two "
    "cores or more when the staging has 8 buckets or more, else 1); the report is the same.",
)
@account_option
@redact_options
def validate(
    config_file: Path,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
    since: datetime | None,
    workers: int | None,
    account: str | None,
    redact_actions: tuple[str, ...],
    redact_patterns: tuple[str, ...],
) -> None:
    """Dry run: extract and chunk CONFIG_FILE's sources, check everything, send nothing.

    Prints a summary (or the report as JSON with --json) and writes report.json and a
    self-contained report.html into the workdir. Exits 3 when the API would reject
    something (see docs/report.md), 0 otherwise. A config with several `accounts:` is
    checked one account at a time (--account NAME).

    Example: memos-etl validate configs/quickstart.yaml
    """
    progress = setup(verbose, quiet, no_progress)
    cfg = load_cli_config(config_file, {"workdir": workdir})
    cfg = select_account(cfg, account).config
    cfg = apply_redact_flags(cfg, redact_actions, redact_patterns)
    when = since.replace(tzinfo=timezone.utc) if since and since.tzinfo is None else since
    dry_run_report(cfg, progress, when, as_json, workers)


def dry_run_report(
    cfg: Config,
    progress: Progress,
    since: datetime | None,
    as_json: bool,
    workers: int | None = None,
) -> None:
    """Shared by `validate` and `run --dry-run`: report, render, exit 3 on blocking problems.

    SIGTERM stops it like Ctrl-C (exit 130, workers stopped, no temp files)."""
    from pipeline.core.workdir import report_paths
    from pipeline.dryrun.report import summary_text
    from pipeline.dryrun.validate import validate as run_validation

    with sigterm_as_interrupt():
        report = run_validation(cfg, progress, since=since, workers=workers)
    emit(report.data, as_json, summary_text(report, report_paths(cfg.workdir)))
    if report.exit_code:
        click.get_current_context().exit(report.exit_code)
