"""Pieces every command shares: option bundles, logging set-up, output, and the mapping of
errors to exit codes."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from pipeline.core.config import DEFAULT_WORKDIR, Config, load_config
from pipeline.core.diskfull import disk_full_error, is_disk_full
from pipeline.core.errors import MemosError
from pipeline.core.progress import NullProgress, Progress, TqdmProgress

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("memos_etl")


class ErrorMappingGroup(click.Group):
    """Maps every error to one stderr line and an exit code (see pipeline.core.errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MemosError as exc:
            fail(ctx, str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            fail(ctx, "interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - the one place that catches everything
            if is_disk_full(exc):  # not a bug: say where, and how much space is left
                workdir = ctx.meta.get("memos_etl.workdir", DEFAULT_WORKDIR)
                full = disk_full_error(workdir, exc)
                fail(ctx, f"{full} ({type(exc).__name__}: {exc})", full.exit_code)
            fail(ctx, f"unexpected failure: {type(exc).__name__}: {exc}", 1, bug=True)


def fail(ctx: click.Context, message: str, code: int, *, bug: bool = False) -> None:
    verbose = ctx.meta.get("memos_etl.verbose", 0)
    if verbose >= 2 or (bug and verbose >= 1):
        traceback.print_exc(file=sys.stderr)
    hint = " (run with -vv for the traceback)" if bug and verbose < 2 else ""
    click.echo(f"error: {message}{hint}", err=True)
    ctx.exit(code)


def common_options(func: F) -> F:
    """Options every command shares, identical everywhere."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path),
            help="Pipeline YAML file (see configs/).",
        ),
        click.option(
            "--workdir",
            type=click.Path(path_type=Path),
            help="Folder for staging, batches, ledger and reports "
            "[env MEMOS_ETL_WORKDIR; default .memos-etl].",
        ),
        click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks."),
        click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
        click.option("--no-progress", is_flag=True, help="Hide progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def setup(verbose: int, quiet: bool, no_progress: bool) -> Progress:
    """Configure logging for this process and choose the progress reporter."""
    click.get_current_context().meta["memos_etl.verbose"] = verbose
    level = (
        logging.ERROR
        if quiet
        else (logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(message)s", force=True
    )
    if quiet or no_progress:
        return NullProgress()
    return TqdmProgress(disable=None)


def emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """Print a command's result: JSON (sorted keys) or the human summary."""
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode())
    else:
        click.echo(text)


def load_cli_config(config_path: Path | None, overrides: dict[str, Any]) -> Config:
    cfg = load_config(config_path, overrides)
    click.get_current_context().meta["memos_etl.workdir"] = cfg.workdir
    return cfg


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
