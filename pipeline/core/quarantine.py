"""`<workdir>/quarantine.jsonl`: one line per unreadable input record, kept per source.

Each line is `{"source", "source_file", "position", "reason", "excerpt"}`. Re-extracting a
source replaces that source's lines and keeps every other source's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.models import Quarantined, excerpt
from pipeline.core.workdir import quarantine_path


def entry(source: str, item: Quarantined) -> dict[str, Any]:
    """The JSON form of one quarantined record."""
    return {
        "source": source,
        "source_file": item.source_file,
        "position": item.position,
        "reason": item.reason,
        "excerpt": excerpt(item.excerpt),
    }


def read_quarantine(workdir: Path) -> Iterator[dict[str, Any]]:
    """Every quarantine entry in the workdir, in file order."""
    path = quarantine_path(workdir)
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def replace_source_entries(workdir: Path, source: str, entries: Iterable[dict[str, Any]]) -> None:
    """Atomically rewrite the quarantine file with `source`'s lines replaced by `entries`."""
    path = quarantine_path(workdir)
    tmp = path.with_suffix(".jsonl.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as out:
        for old in read_quarantine(workdir):
            if old.get("source") != source:
                out.write(orjson.dumps(old) + b"\n")
        for new in entries:
            out.write(orjson.dumps(new) + b"\n")
    os.replace(tmp, path)
