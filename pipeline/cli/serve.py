"""`memos-etl serve` and `memos-etl search`: the local MemOS-compatible server and its store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.core.config import Config
from pipeline.core.memos_api import MAX_CALL_TOKENS
from pipeline.core.workdir import local_db

if TYPE_CHECKING:
    from pipeline.server.app import ServerStats

from pipeline.cli.common import common_options, emit, load_cli_config, setup


def _local_db(cfg: Config, db_path: Path | None) -> Path:
    """--db, else the config's `load.local_db`, else `<workdir>/local-memos.sqlite`."""
    return local_db(cfg.workdir, db_path or cfg.load.local_db)


@click.command()
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
    "--max-call-tokens",
    "--max-input-tokens",
    "max_input_tokens",
    type=click.IntRange(min=1),
    default=MAX_CALL_TOKENS,
    show_default=True,
    help="Input tokens one add/message call may carry (above it: --too-long-code).",
)
@click.option(
    "--too-long-code",
    type=click.Choice(["40305", "40013"]),
    default="40305",
    show_default=True,
    help="Code answered above --max-call-tokens (40013: the newest docs' 'messages too long').",
)
@click.option(
    "--sync",
    "synchronous",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="SQLite synchronous: full also survives power loss.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=16 * 1024 * 1024,
    show_default=True,
    help="Largest request body; above it: HTTP 413, code 40305, nothing read.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    help="Open connections at most; one more gets 503 "
    "[default: 512, or the open-file limit minus 64 if lower].",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a request's headers may take to arrive.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a request's body may take to arrive.",
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
    "--limit-mode",
    type=click.Choice(["sliding", "fixed", "bucket"]),
    default="bucket",
    show_default=True,
    help="How --qps-limit and --tpm count: any window ending now, aligned windows, or a "
    "token bucket (bursts up to the limit).",
)
@click.option(
    "--tpm",
    "tpm_limit",
    type=click.IntRange(min=1),
    help="Fault: input tokens per minute of add/message calls (above it: code 40309).",
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
    too_long_code: str,
    synchronous: str,
    max_body_bytes: int,
    max_connections: int | None,
    header_timeout: float,
    body_timeout: float,
    latency_ms: float,
    jitter_ms: float,
    qps_limit: float | None,
    limit_mode: str,
    tpm_limit: int | None,
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
    from pipeline.server import LocalServer, ServerConfig, ServerLimits, run_until_signal
    from pipeline.server.faults import FaultConfig, parse_forced

    setup(verbose, quiet, no_progress)
    cfg = load_cli_config(config_path, {"workdir": workdir})
    try:
        answers = tuple(parse_forced(spec) for spec in forced)
        faults = FaultConfig(
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            qps_limit=qps_limit,
            limit_mode="sliding"
            if limit_mode == "sliding"
            else "fixed"
            if limit_mode == "fixed"
            else "bucket",
            tpm_limit=tpm_limit,
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
    limits = ServerLimits(
        max_body_bytes=max_body_bytes,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        **({"max_connections": max_connections} if max_connections else {}),
    )
    config = ServerConfig(
        db_path=_local_db(cfg, db_path),
        limits=limits,
        host=host,
        port=port,
        token=token or None,
        max_input_tokens=max_input_tokens,
        too_long_code=int(too_long_code),
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
        {
            "requests": stats.requests,
            "add_requests": stats.add_requests,
            "ok": stats.ok,
            "rejected": stats.rate_limited + stats.token_limited,
            "rate_limited": stats.rate_limited,
            "token_limited": stats.token_limited,
            "messages_stored": stats.messages_stored,
        },
        as_json,
        _stopped_line(stats),
    )


def _stopped_line(stats: ServerStats) -> str:
    """The closing line in the loader's vocabulary: its `requests` are this server's add
    requests, and rejections are split the way the loader's limiter sees them."""
    rejected = stats.rate_limited + stats.token_limited
    return (
        f"stopped: requests {stats.requests} (add {stats.add_requests}; ok {stats.ok}, "
        f"rejected {rejected}: rate limit {stats.rate_limited}, "
        f"tokens per minute {stats.token_limited}), "
        f"messages stored {stats.messages_stored}"
    )


@click.command()
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
    cfg = load_cli_config(config_path, {"workdir": workdir})
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
