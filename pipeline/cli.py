"""The `memos-etl` command line: parse options, call one library function, render the result.

stdout carries results (a short summary, or one JSON object with `--json`); stderr carries
logs, progress and errors (`error: ...` on one line; tracebacks only with `-vv`).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from pipeline import __version__
from pipeline.config import Config, SourceConfig, load_config
from pipeline.errors import ConfigError, MemosError
from pipeline.progress import NullProgress, Progress, TqdmProgress

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("memos_etl")


class _Group(click.Group):
    """Maps every error to one stderr line and an exit code (see pipeline.errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MemosError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - the one place that catches everything
            _fail(ctx, f"unexpected failure: {type(exc).__name__}: {exc}", 1, bug=True)


def _fail(ctx: click.Context, message: str, code: int, *, bug: bool = False) -> None:
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


def _config(config_path: Path | None, overrides: dict[str, Any]) -> Config:
    return load_config(config_path, overrides)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memos-etl")
def main() -> None:
    """Move chat history (Slack, ChatGPT, Claude, CSV) into MemOS memory, exactly once.

    The flow is extract -> chunk -> load; `run CONFIG` does all of them.
    """


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--source", "kind", help="Connector: csv, slack, chatgpt, claude.")
@click.option(
    "--name",
    help="Label of this source in the workdir (default: the source kind). "
    "Re-extracting a name replaces what it staged before.",
)
@click.option("--user-id", help="Memory owner (user_id) for sources that do not carry one.")
@common_options
def extract(
    path: Path | None,
    kind: str | None,
    name: str | None,
    user_id: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Read an export into the Parquet staging table.

    Example: memos-etl extract --source csv data/samples/support_chats.csv --workdir w
    """
    from pipeline.extract import extract_source, stats_dict

    progress = setup(verbose, quiet, no_progress)
    cfg = _config(config_path, {"workdir": workdir, "user_id": user_id})
    sources = _pick_sources(cfg, kind, path, name)
    results = [
        stats_dict(extract_source(s, cfg.workdir, default_user_id=cfg.user_id, progress=progress))
        for s in sources
    ]
    totals = _sum_counts(results)
    totals["sources"] = results
    totals["workdir"] = str(cfg.workdir)
    lines = [_extract_line(r) for r in results]
    if totals["quarantined"]:
        lines.append(f"quarantined records: {cfg.workdir / 'quarantine.jsonl'}")
    emit(totals, as_json, "\n".join(lines))


def _pick_sources(
    cfg: Config, kind: str | None, path: Path | None, name: str | None
) -> list[SourceConfig]:
    if path is not None:
        if kind is None:
            raise click.UsageError("--source is required with an input PATH")
        template = next((s for s in cfg.sources if s.kind == kind), None)
        base: dict[str, Any] = template.model_dump() if template else {"kind": kind}
        base.update(kind=kind, path=path)
        if name is not None:
            base["name"] = name
        return [SourceConfig.model_validate(base)]
    chosen = [
        s
        for s in cfg.sources
        if (kind is None or s.kind == kind) and (name is None or s.label == name)
    ]
    if not chosen:
        raise click.UsageError("give an input PATH with --source, or a --config with sources")
    return chosen


def _sum_counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    skipped: dict[str, int] = {}
    for r in results:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        "read": sum(r["read"] for r in results),
        "staged": sum(r["staged"] for r in results),
        "skipped": dict(sorted(skipped.items())),
        "quarantined": sum(r["quarantined"] for r in results),
        "conversations": sum(r["conversations"] for r in results),
        "users": sum(r["users"] for r in results),
    }


def _extract_line(r: dict[str, Any]) -> str:
    skipped = sum(r["skipped"].values())
    return (
        f"{r['source']}: read {r['read']}, staged {r['staged']}, skipped {skipped}, "
        f"quarantined {r['quarantined']} ({r['conversations']} conversations, {r['users']} users)"
    )


@main.command()
@click.option("--max-tokens", type=int, help="Token budget per request (default 4000; ≤ 20000).")
@click.option("--max-messages", type=int, help="Messages per request (default 50).")
@common_options
def chunk(
    max_tokens: int | None,
    max_messages: int | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Group staged messages into API-sized batches per conversation.

    Example: memos-etl chunk --workdir w --max-tokens 20000
    """
    from pipeline.chunker import ChunkLimits, chunk_workdir

    setup(verbose, quiet, no_progress)
    cfg = _config(
        config_path,
        {"workdir": workdir, "chunk": {"max_tokens": max_tokens, "max_messages": max_messages}},
    )
    _require_staging(cfg.workdir)
    stats = chunk_workdir(cfg.workdir, ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages))
    result = {**stats.to_json(), "workdir": str(cfg.workdir)}
    emit(
        result,
        as_json,
        f"{stats.batches} batches from {stats.batched} messages in {stats.conversations} "
        f"conversations ({stats.tokens} tokens; {stats.split_messages} messages split)",
    )


def _require_staging(workdir: Path) -> None:
    from pipeline.staging import staged_sources

    if not staged_sources(workdir):
        raise ConfigError(f"nothing staged in {workdir}; run `memos-etl extract` first")


@main.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Override the config's workdir.")
@click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def run(
    config_file: Path,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run extract -> chunk for every source in CONFIG_FILE.

    Example: memos-etl run configs/quickstart.yaml
    """
    from pipeline.chunker import ChunkLimits, chunk_workdir
    from pipeline.extract import extract_source, stats_dict

    progress = setup(verbose, quiet, no_progress)
    cfg = _config(config_file, {"workdir": workdir})
    if not cfg.sources:
        raise ConfigError(f"{config_file}: no sources configured")
    results = [
        stats_dict(extract_source(s, cfg.workdir, default_user_id=cfg.user_id, progress=progress))
        for s in cfg.sources
    ]
    stats = chunk_workdir(cfg.workdir, ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages))
    extract_totals = _sum_counts(results)
    result = {
        "extract": {**extract_totals, "sources": results},
        "chunk": stats.to_json(),
        "workdir": str(cfg.workdir),
    }
    lines = [_extract_line(r) for r in results]
    lines.append(f"chunk: {stats.batches} batches from {stats.batched} messages")
    emit(result, as_json, "\n".join(lines))


@main.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Override the config's workdir.")
@click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def validate(
    config_file: Path,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Dry run: extract and chunk CONFIG_FILE's sources, check everything, send nothing.

    Prints a summary (or the report as JSON with --json) and writes report.json and a
    self-contained report.html into the workdir. Exits 3 when the API would reject
    something (see docs/report.md), 0 otherwise.

    Example: memos-etl validate configs/quickstart.yaml
    """
    from pipeline.report import summary_text
    from pipeline.report_html import report_paths
    from pipeline.validate import validate as run_validation

    progress = setup(verbose, quiet, no_progress)
    cfg = _config(config_file, {"workdir": workdir})
    report = run_validation(cfg, progress)
    emit(report.data, as_json, summary_text(report, report_paths(cfg.workdir)))
    if report.exit_code:
        click.get_current_context().exit(report.exit_code)
