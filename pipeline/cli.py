"""The `memos-etl` command line: parse options, call one library function, render the result.

stdout carries results (a short summary, or one JSON object with `--json`); stderr carries
logs, progress and errors (`error: ...` on one line; tracebacks only with `-vv`).
"""

from __future__ import annotations

import logging
import shlex
import sys
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from pipeline import __version__
from pipeline.core.config import Config, SourceConfig, load_config
from pipeline.core.errors import ConfigError, MemosError
from pipeline.core.progress import NullProgress, Progress, TqdmProgress

if TYPE_CHECKING:
    from pipeline.load.loader import LoadStats as LoadStatsT

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("memos_etl")


class _Group(click.Group):
    """Maps every error to one stderr line and an exit code (see pipeline.core.errors)."""

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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _extract_line(r: dict[str, Any]) -> str:
    skipped = sum(r["skipped"].values())
    return (
        f"{r['source']}: read {r['read']}, staged {r['staged']}, skipped {skipped}, "
        f"quarantined {r['quarantined']} ({_plural(r['conversations'], 'conversation')}, "
        f"{_plural(r['users'], 'user')})"
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
    from pipeline.chunk import ChunkLimits, chunk_workdir

    setup(verbose, quiet, no_progress)
    cfg = _config(
        config_path,
        {"workdir": workdir, "chunk": {"max_tokens": max_tokens, "max_messages": max_messages}},
    )
    _require_staging(cfg.workdir)
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    stats = chunk_workdir(cfg.workdir, limits, tags=cfg.tags_by_source())
    result = {**stats.to_json(), "workdir": str(cfg.workdir)}
    emit(
        result,
        as_json,
        f"{stats.batches} batches from {stats.batched} messages in {stats.conversations} "
        f"conversations ({stats.tokens} tokens; {stats.split_messages} messages split)",
    )


def _require_staging(workdir: Path) -> None:
    from pipeline.core.staging import staged_sources

    if not staged_sources(workdir):
        raise ConfigError(f"nothing staged in {workdir}; run `memos-etl extract` first")


@main.command()
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
def run(
    config_file: Path,
    workdir: Path | None,
    since: datetime | None,
    dry_run: bool,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run extract -> chunk -> load for every source in CONFIG_FILE, incrementally.

    Messages already delivered are skipped, so a scheduled re-run sends only what is new.
    With --dry-run nothing is sent: the validation report is written instead.

    Example: memos-etl run configs/quickstart.yaml
    """
    from pipeline.load.loader import run_pipeline

    progress = setup(verbose, quiet, no_progress)
    cfg = _config(config_file, {"workdir": workdir})
    if not cfg.sources:
        raise ConfigError(f"{config_file}: no sources configured")
    when = since.replace(tzinfo=timezone.utc) if since and since.tzinfo is None else since
    if dry_run:
        _dry_run_report(cfg, progress, when, as_json)
        return
    result = run_pipeline(
        cfg, since=when, progress=progress, handle_signals=True, heartbeat=_heartbeat(quiet)
    )
    extract_totals = _sum_counts(result.extract)
    out: dict[str, Any] = {
        "extract": {**extract_totals, "sources": result.extract},
        "chunk": result.chunk,
        "changed": {"count": len(result.changed), "message_ids": result.changed[:20]},
        "load": result.load.to_json(),
        "resumed": result.resumed.to_json() if result.resumed else None,
        "workdir": str(cfg.workdir),
    }
    lines = [_extract_line(r) for r in result.extract]
    if result.resumed and (result.resumed.sent_batches or result.resumed.stopped):
        lines.append("finished a previous run: " + _load_line(result.resumed))
    if result.chunk:
        lines.append(
            f"chunk: {result.chunk['batches']} batches from {result.chunk['batched']} "
            f"new messages ({result.chunk['excluded']} already delivered or excluded)"
        )
    if result.changed:
        lines.append(
            f"{len(result.changed)} delivered messages changed since; not resent "
            "(set load.resend_changed: true to send the new version)"
            if not cfg.load.resend_changed
            else f"{len(result.changed)} changed messages resent"
        )
    if result.resumed is None or not result.resumed.stopped:
        lines.append(_load_summary(result.load))
    if result.local_db and result.user_ids and result.load.complete:
        owner = cfg.user_id if cfg.user_id in result.user_ids else result.user_ids[0]
        search = (
            f"memos-etl search --db {shlex.quote(str(result.local_db))} "
            f'--user-id {shlex.quote(owner)} "your question"'
        )
        out["search_command"] = search
        lines.append(f"try: {search}")
    emit(out, as_json, "\n".join(lines))
    _finish_load(result.load, f"memos-etl run {shlex.quote(str(config_file))}")


def _heartbeat(quiet: bool) -> float | None:
    """A periodic progress log line when stderr is not a terminal (tqdm hides itself there)."""
    if quiet or sys.stderr.isatty():
        return None
    logging.getLogger("memos_etl.progress").setLevel(logging.INFO)
    return 10.0


def _load_line(stats: LoadStatsT) -> str:
    return (
        f"sent {stats.sent_batches} batches ({stats.sent_messages} messages), "
        f"already delivered {stats.already_batches}, failed {stats.failed}, "
        f"pending {stats.pending}"
    )


def _load_summary(stats: LoadStatsT) -> str:
    data = stats.to_json()
    retries = ", ".join(f"{k} {v}" for k, v in data["retries"].items()) or "none"
    lines = [
        f"load: {_load_line(stats)} (blocked behind a failure {stats.blocked}); "
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


def _finish_load(stats: LoadStatsT, command: str) -> None:
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


@main.command()
@click.option(
    "--target",
    type=click.Choice(["memos", "local"]),
    help="memos (MEMOS_BASE_URL / MEMOS_API_KEY) or local (embedded server).",
)
@click.option("--base-url", help="API base URL (a running server for --target local).")
@click.option("--rate", type=float, help="Request ceiling per second (default 10; MemOS ≤ 50).")
@click.option("--max-in-flight", type=int, help="Concurrent requests (default 16).")
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
    cfg = _config(
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
        heartbeat=_heartbeat(quiet),
    )
    emit({**stats.to_json(), "workdir": str(cfg.workdir)}, as_json, _load_summary(stats))
    parts = ["memos-etl load"]
    if config_path:
        parts.append(f"--config {shlex.quote(str(config_path))}")
    parts.append(f"--workdir {shlex.quote(str(cfg.workdir))} --target {cfg.load.target}")
    if base_url:
        parts.append(f"--base-url {shlex.quote(base_url)}")
    _finish_load(stats, " ".join(parts))


@main.command()
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
    cfg = _config(config_path, {"workdir": workdir})
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


def _local_db(cfg: Config, db_path: Path | None) -> Path:
    """--db, else the config's `load.local_db`, else `<workdir>/local-memos.sqlite`."""
    return db_path or cfg.load.local_db or cfg.workdir / "local-memos.sqlite"


@main.command()
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="SQLite store file [default: load.local_db, else <workdir>/local-memos.sqlite].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback requires a token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port; 0 picks a free one (printed on stdout).",
)
@click.option(
    "--token",
    envvar="MEMOS_ETL_SERVE_TOKEN",
    show_envvar=True,
    help="Require 'Authorization: Token <T>' (prefer the environment variable).",
)
@click.option(
    "--max-input-tokens",
    type=click.IntRange(min=1),
    default=20000,
    show_default=True,
    help="addMessage token limit (above it: code 40305).",
)
@click.option(
    "--sync",
    "synchronous",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="SQLite synchronous: full also survives power loss.",
)
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0, help="Fault: added delay.")
@click.option(
    "--jitter-ms",
    type=click.FloatRange(min=0),
    default=0,
    help="Fault: extra random delay, 0..N ms.",
)
@click.option(
    "--qps-limit",
    type=click.FloatRange(min=0, min_open=True),
    help="Fault: answer rate-limited above this many requests per second.",
)
@click.option(
    "--rate-limit-style",
    type=click.Choice(["http429", "code40300"]),
    default="http429",
    show_default=True,
    help="HTTP 429 + Retry-After, or HTTP 200 with body code 40300.",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Retry-After seconds sent with rate-limited answers.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fault: share of requests failing with HTTP 500/503 or code 50000/50004.",
)
@click.option(
    "--drop-before-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fault: share of connections dropped before storing.",
)
@click.option(
    "--drop-after-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fault: share of connections dropped after storing (lost acknowledgement).",
)
@click.option("--seed", type=int, help="Fault: random seed, for repeatable runs.")
@click.option(
    "--force",
    "forced",
    multiple=True,
    metavar="SPEC",
    help="Fault: forced answer CODE[/STATUS][xN][@CONVERSATION_ID] or "
    "drop-before/drop-after[xN][@CONVERSATION_ID]; repeatable.",
)
@common_options
def serve(
    db_path: Path | None,
    host: str,
    port: int,
    token: str | None,
    max_input_tokens: int,
    synchronous: str,
    latency_ms: float,
    jitter_ms: float,
    qps_limit: float | None,
    rate_limit_style: str,
    retry_after: float,
    fail_rate: float,
    drop_before_rate: float,
    drop_after_rate: float,
    seed: int | None,
    forced: tuple[str, ...],
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run a local MemOS-compatible API server on SQLite until Ctrl-C or SIGTERM.

    It speaks MemOS Cloud's /add/message, /get/message, /search/memory and /get/status,
    stores raw messages (no LLM memory extraction), and can inject faults.

    Example: memos-etl serve --db w/local-memos.sqlite --port 8765 -v
    """
    from pipeline.server.app import LocalServer, ServerConfig, run_until_signal
    from pipeline.server.faults import FaultConfig, parse_forced

    setup(verbose, quiet, no_progress)
    cfg = _config(config_path, {"workdir": workdir})
    try:
        answers = tuple(parse_forced(spec) for spec in forced)
        faults = FaultConfig(
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            qps_limit=qps_limit,
            rate_limit_style="code40300" if rate_limit_style == "code40300" else "http429",
            retry_after=retry_after,
            fail_rate=fail_rate,
            drop_before_rate=drop_before_rate,
            drop_after_rate=drop_after_rate,
            seed=seed,
            forced=answers,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config = ServerConfig(
        db_path=_local_db(cfg, db_path),
        host=host,
        port=port,
        token=token or None,
        max_input_tokens=max_input_tokens,
        faults=faults,
        synchronous="FULL" if synchronous == "full" else "NORMAL",
    )

    def ready(server: LocalServer) -> None:
        info = {"url": server.url, "db": str(config.db_path), "auth": bool(config.token)}
        emit(
            info,
            as_json,
            f"listening on {server.url} (store {config.db_path}; "
            f"auth {'on' if config.token else 'off'}); Ctrl-C stops",
        )

    stats = run_until_signal(config, ready)
    emit(
        {"requests": stats.requests, "ok": stats.ok, "messages_stored": stats.messages_stored},
        as_json,
        f"stopped: {stats.requests} requests, {stats.ok} ok, "
        f"{stats.messages_stored} messages stored",
    )


@main.command()
@click.argument("query", required=False)
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="SQLite store file [default: load.local_db, else <workdir>/local-memos.sqlite].",
)
@click.option("--user-id", help="Whose memory to search (required with QUERY).")
@click.option("--conversation-id", help="Rank this conversation's messages first.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=10, show_default=True, help="Results to show."
)
@common_options
def search(
    query: str | None,
    db_path: Path | None,
    user_id: str | None,
    conversation_id: str | None,
    limit: int,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Search what a load stored in the local server's store (BM25 over messages).

    Without QUERY, list message counts per user and conversation instead.

    Example: memos-etl search --db w/local-memos.sqlite --user-id alice "refund policy"
    """
    from pipeline.server.store import message_counts, search_store

    setup(verbose, quiet, no_progress)
    cfg = _config(config_path, {"workdir": workdir})
    db = _local_db(cfg, db_path)
    if query is None:
        counts: list[dict[str, Any]] = [
            {"user_id": u, "conversation_id": c, "messages": n}
            for (u, c), n in message_counts(db).items()
            if user_id is None or u == user_id
        ]
        total = sum(int(c["messages"]) for c in counts)
        lines = [f"{c['user_id']}\t{c['conversation_id']}\t{c['messages']}" for c in counts]
        lines.append(f"{total} messages in {len(counts)} conversations")
        emit({"db": str(db), "conversations": counts, "messages": total}, as_json, "\n".join(lines))
        return
    if not user_id:
        raise click.UsageError("--user-id is required with a QUERY")
    rows = search_store(db, user_id, query, limit, conversation_id)
    hits = [
        {
            "id": r["id"],
            "conversation_id": r["conversation_id"],
            "role": r["role"],
            "relativity": round(r["relativity"], 4),
            "chat_time": r["chat_time"],
            "content": r["content"],
        }
        for r in rows
    ]
    lines = [
        f"{h['relativity']:.3f}  {h['conversation_id']}  {h['role']}: "
        f"{' '.join(h['content'].split())[:120]}"
        for h in hits
    ]
    lines.append(f"{len(hits)} results for user {user_id}")
    emit(
        {"db": str(db), "user_id": user_id, "query": query, "results": hits},
        as_json,
        "\n".join(lines),
    )


@main.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Override the config's workdir.")
@click.option("-v", "--verbose", count=True, help="More logging; -vv adds tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--since", type=click.DateTime(), help="Only messages from this date (UTC) on.")
def validate(
    config_file: Path,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
    since: datetime | None,
) -> None:
    """Dry run: extract and chunk CONFIG_FILE's sources, check everything, send nothing.

    Prints a summary (or the report as JSON with --json) and writes report.json and a
    self-contained report.html into the workdir. Exits 3 when the API would reject
    something (see docs/report.md), 0 otherwise.

    Example: memos-etl validate configs/quickstart.yaml
    """
    progress = setup(verbose, quiet, no_progress)
    cfg = _config(config_file, {"workdir": workdir})
    when = since.replace(tzinfo=timezone.utc) if since and since.tzinfo is None else since
    _dry_run_report(cfg, progress, when, as_json)


def _dry_run_report(cfg: Config, progress: Progress, since: datetime | None, as_json: bool) -> None:
    """Shared by `validate` and `run --dry-run`: report, render, exit 3 on blocking problems."""
    from pipeline.dryrun.html import report_paths
    from pipeline.dryrun.report import summary_text
    from pipeline.dryrun.validate import validate as run_validation

    report = run_validation(cfg, progress, since=since)
    emit(report.data, as_json, summary_text(report, report_paths(cfg.workdir)))
    if report.exit_code:
        click.get_current_context().exit(report.exit_code)
