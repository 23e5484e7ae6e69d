"""Pieces every command shares: option bundles, logging set-up, output, and the mapping of
errors to exit codes."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from pipeline.core.config import DEFAULT_WORKDIR, Config, load_config
from pipeline.core.diskfull import disk_full_error, is_disk_full
from pipeline.core.errors import MemosError
from pipeline.core.process_memory import limit_malloc_arenas
from pipeline.core.process_start import pyarrow_without_pandas
from pipeline.core.progress import NullProgress, Progress, TqdmProgress

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("memos_etl")

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls except tab and newline, DEL, and C1 controls (0x9b is a one-byte CSI)."""
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f]")
"""What orjson leaves raw: it escapes C0 itself, but writes DEL and C1 as they are."""


def safe_text(text: str) -> str:
    """`text` with every terminal control character shown as a visible `\\xNN` escape.

    Message content, ids and server error texts are untrusted: an ESC sequence in them
    could retitle the window, clear the screen or recolour the terminal (OSC, CSI). With
    ESC itself made visible, the rest of a sequence is inert text. Newline and tab stay.
    """
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_json(text: str) -> str:
    """JSON text with DEL and C1 controls also escaped (`\\u009b`): still the same JSON."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeFormatter(logging.Formatter):
    """Log lines with terminal control characters neutralised (see `safe_text`)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))


class ErrorMappingGroup(click.Group):
    """Maps every error to one stderr line and an exit code (see pipeline.core.errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        limit_malloc_arenas()  # before any thread starts, and inherited by workers
        pyarrow_without_pandas()  # no command needs pandas: 0.3 s and 48 MB saved
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
    click.echo(safe_text(f"error: {message}{hint}"), err=True)
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if quiet or no_progress:
        return NullProgress()
    return TqdmProgress(disable=None)


def emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """Print a command's result: JSON (sorted keys) or the human summary, with terminal
    control characters from data or servers neutralised either way."""
    if as_json:
        click.echo(safe_json(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode()))
    else:
        click.echo(safe_text(text))


def load_cli_config(config_path: Path | None, overrides: dict[str, Any]) -> Config:
    cfg = load_config(config_path, overrides)
    click.get_current_context().meta["memos_etl.workdir"] = cfg.workdir
    return cfg


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the block like Ctrl-C (a `KeyboardInterrupt`: staging's temp folder
    is removed, worker processes stop, exit code 130); the old handler comes back after.
    Only in the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
