"""ChatGPT data export -> the conversations the user actually saw, as staging rows.

The connector's entry point: `read` picks one process or two (`connectors.chatgpt.split`)
and yields the events; the layout and thread rules are in `connectors.chatgpt.read`, the
rendering of a message in `connectors.chatgpt.content`. See docs/chatgpt-claude.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from connectors.chatgpt.read import (
    Context,
    Options,
    _owner,
    asset_names,
    conversation_files,
    read_file,
)
from connectors.chatgpt.split import read_in_two
from connectors.export_files import ExportFiles
from pipeline.core.models import Event

__all__ = ["WRITES_PARTS", "Options", "read"]


WRITES_PARTS = True
"""`read` takes `parts_dir=` (see connectors/base.py): the helper process of a two-process
read writes its share there as one part."""


def read(path: Path, options: Options, parts_dir: Path | None = None) -> Iterator[Event]:
    """Yield events covering every node of every conversation in the export at `path`.

    Staged messages come in `MessageTable` events (bulk), and with `parts_dir` also as one
    `StagedPart` (the helper's share); skipped nodes as `Skipped`. With `parallel: on` (or
    `auto` and a big export) two processes share the work (`connectors.chatgpt.split`);
    what is staged is the same either way, in the same order.
    """
    with ExportFiles(path, limits=options.limits()) as export:
        yield from export.skipped("chatgpt")
        files = conversation_files(export)
        user_id = _owner(export, options)
        ctx = Context(user_id=user_id, options=options, asset_names=asset_names(export))
        if _two_processes(export, files, options):
            yield from read_in_two(export, files, ctx, parts_dir=parts_dir)
            return
        for name in files:
            yield from read_file(export, name, ctx)
        table = ctx.rows.take()
        if table is not None:
            yield table


PARALLEL_MIN_BYTES = 64 * 1024 * 1024
"""With `parallel: auto`, exports whose conversation files are smaller stay in-process."""


def _two_processes(export: ExportFiles, files: list[str], options: Options) -> bool:
    if options.parallel != "auto":
        return options.parallel == "on"
    if (os.cpu_count() or 1) < 2:
        return False
    return sum(export.size(name) for name in files) >= PARALLEL_MIN_BYTES


def looks_like(path: Path) -> bool:
    """`--source auto`: a `conversations.json` (or the file itself) holding a message
    `mapping` (cheap; never raises)."""
    from connectors.detect import json_export_has

    return json_export_has(path, b"mapping")
