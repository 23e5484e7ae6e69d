"""`memos-etl chunk`: cut staged messages into addMessage batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    pass

from pipeline.cli.common import common_options, emit, load_cli_config, setup


@click.command()
@click.option(
    "--max-tokens",
    type=int,
    help="Token budget per request (default 4000; ≤ 40000, the newest documented limit).",
)
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
    from pipeline.core.lock import workdir_lock

    setup(verbose, quiet, no_progress)
    cfg = load_cli_config(
        config_path,
        {"workdir": workdir, "chunk": {"max_tokens": max_tokens, "max_messages": max_messages}},
    )
    require_staging(cfg.workdir)
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    with workdir_lock(cfg.workdir):
        stats = chunk_workdir(
            cfg.workdir, limits, tags=cfg.tags_by_source(), group=cfg.group_sources()
        )
    result = {**stats.to_json(), "workdir": str(cfg.workdir)}
    emit(
        result,
        as_json,
        f"{stats.batches} batches from {stats.batched} messages in {stats.conversations} "
        f"conversations ({stats.tokens} tokens; {stats.split_messages} messages split"
        + (f"; {stats.duplicates} duplicates left out" if stats.duplicates else "")
        + ")",
    )


def require_staging(workdir: Path) -> None:
    from pipeline.core.staging import staged_sources

    if not staged_sources(workdir):
        raise ConfigError(f"nothing staged in {workdir}; run `memos-etl extract` first")
