"""`memos-etl chunk`: cut staged messages into addMessage batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    pass

from pipeline.cli.common import (
    common_options,
    emit,
    load_cli_config,
    setup,
    sigterm_as_interrupt,
)
from pipeline.cli.redaction import apply_redact_flags, redact_options


@click.command()
@click.option(
    "--max-tokens",
    type=int,
    help="Token budget per request (default 4000; ≤ 40000, the newest documented limit).",
)
@click.option("--max-messages", type=int, help="Messages per request (default 50).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes chunking staging buckets at once (default: 2 on a machine with two "
    "cores or more when the staging has 8 buckets or more, else 1; each holds ~200 MB).",
)
@redact_options
@common_options
def chunk(
    max_tokens: int | None,
    max_messages: int | None,
    workers: int | None,
    redact_actions: tuple[str, ...],
    redact_patterns: tuple[str, ...],
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Group staged messages into API-sized batches per conversation.

    Credentials are masked in what is sent (see docs/redaction.md); the staged
    messages keep the original, so chunking again applies a changed policy.

    Example: memos-etl chunk --workdir w --max-tokens 20000 --redact email=mask
    """
    from pipeline.chunk import ChunkLimits, chunk_workdir
    from pipeline.core.lock import workdir_lock

    progress = setup(verbose, quiet, no_progress)
    cfg = load_cli_config(
        config_path,
        {"workdir": workdir, "chunk": {"max_tokens": max_tokens, "max_messages": max_messages}},
    )
    cfg = apply_redact_flags(cfg, redact_actions, redact_patterns)
    require_staging(cfg.workdir)
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    with workdir_lock(cfg.workdir), sigterm_as_interrupt():
        stats = chunk_workdir(
            cfg.workdir,
            limits,
            tags=cfg.tags_by_source(),
            group=cfg.group_sources(),
            policy=cfg.redact.policy(),
            workers=workers,
            progress=progress,
        )
    result = {**stats.to_json(), "workdir": str(cfg.workdir)}
    lines = [
        f"{stats.batches} batches from {stats.batched} messages in {stats.conversations} "
        f"conversations (at most {stats.tokens} tokens; {stats.split_messages} messages split"
        + (f"; {stats.duplicates} duplicates left out" if stats.duplicates else "")
        + ")",
    ]
    redacted = redaction_line(result["redacted"])
    if redacted:
        lines.append(redacted)
    emit(result, as_json, "\n".join(lines))


def redaction_line(redacted: dict[str, Any]) -> str | None:
    """One summary line of a chunk's redaction counts, or None when nothing was redacted."""
    if not redacted["masked_messages"] and not redacted["dropped_messages"]:
        return None
    masked = ", ".join(f"{k} {n}" for k, n in redacted["masked"].items()) or "none"
    dropped = ", ".join(f"{k} {n}" for k, n in redacted["dropped"].items()) or "none"
    return (
        f"redacted: {redacted['masked_messages']} messages masked ({masked}); "
        f"{redacted['dropped_messages']} messages dropped ({dropped})"
    )


def require_staging(workdir: Path) -> None:
    from pipeline.core.staging import staged_sources

    if not staged_sources(workdir):
        raise ConfigError(f"nothing staged in {workdir}; run `memos-etl extract` first")
