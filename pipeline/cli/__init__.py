"""The `memos-etl` command line: parse options, call one library function, render the result.

stdout carries results (a short summary, or one JSON object with `--json`); stderr carries
logs, progress and errors (`error: ...` on one line; tracebacks only with `-vv`). One module
per command (or pair of commands); `common` holds what they share.
"""

from __future__ import annotations

import os

# Arrow picks its allocator when it is imported: with its default (mimalloc) a command that
# chains stages (`run`, `validate`) kept what one stage freed resident through the next
# (174 MB at 5M messages). A user's own choice of the variable is kept.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import click  # noqa: E402

from pipeline import __version__
from pipeline.cli.chunk import chunk
from pipeline.cli.common import ErrorMappingGroup
from pipeline.cli.delivery import check, history, reset
from pipeline.cli.extract import extract
from pipeline.cli.load import load, status
from pipeline.cli.run import run
from pipeline.cli.serve import search, serve
from pipeline.cli.validate import validate


@click.group(cls=ErrorMappingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memos-etl")
def main() -> None:
    """Move chat history (Slack, ChatGPT, Claude, Telegram, Discord, WhatsApp, CSV) into
    MemOS memory, exactly once.

    The flow is extract -> chunk -> load; `run CONFIG` does all of them.
    """


for command in (extract, chunk, load, run, status, validate, serve, search, check, reset, history):
    main.add_command(command)
