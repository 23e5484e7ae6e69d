"""`--source auto`: pick the connector whose layout an export has.

Each registered connector module MAY define `looks_like(path: Path) -> bool`: cheap (it
reads a file listing and at most a few kilobytes), and it never raises. `detect` asks every
module that has one; `auto` takes the single match and says what it chose. No match, or
more than one, is an `InputError` (exit 3) listing the kinds, so a wrong guess never
quarantines a whole export in silence. The helpers below give modules a common, bounded
way to look inside a folder or a ZIP.
"""

from __future__ import annotations

import importlib
import re
import zipfile
from pathlib import Path

from connectors.base import known_sources, module_name
from pipeline.core.errors import InputError

PEEK_BYTES = 65_536
"""How much of a file `peek` reads."""


def member_names(path: Path, depth: int = 2) -> list[str]:
    """Relative names of the files of a folder (at most `depth` levels) or a ZIP; [] for
    anything else or on any error."""
    try:
        if path.is_dir():
            out: list[str] = []
            for level in range(1, depth + 1):
                pattern = "/".join(["*"] * level)
                out += [p.relative_to(path).as_posix() for p in path.glob(pattern) if p.is_file()]
                if len(out) > 10_000:
                    break
            return out
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return [n for n in archive.namelist() if not n.endswith("/")][:100_000]
    except (OSError, zipfile.BadZipFile, ValueError):
        return []
    return []


def find_member(path: Path, pattern: str) -> str | None:
    """The shallowest member whose base name matches the regular expression `pattern`."""
    regex = re.compile(pattern)
    hits = [n for n in member_names(path) if regex.fullmatch(n.rsplit("/", 1)[-1])]
    return min(hits, key=lambda n: (n.count("/"), n)) if hits else None


def peek(path: Path, member: str | None = None) -> bytes:
    """The first `PEEK_BYTES` of a file, or of `member` inside a folder or ZIP; b"" on error."""
    try:
        if member is None:
            with path.open("rb") as fh:
                return fh.read(PEEK_BYTES)
        if path.is_dir():
            with (path / member).open("rb") as fh:
                return fh.read(PEEK_BYTES)
        with zipfile.ZipFile(path) as archive, archive.open(member) as fh:
            return fh.read(PEEK_BYTES)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, RuntimeError):
        return b""


def json_export_has(path: Path, key: bytes) -> bool:
    """Whether the export's `conversations.json` (or its first shard
    `conversations-000.json`, or `path` itself, a JSON file) mentions the JSON key `key`
    near its start (ChatGPT: `"mapping"`, Claude: `"chat_messages"`)."""
    if path.is_file() and path.suffix.lower() == ".json":
        head = peek(path)
    else:
        member = find_member(path, r"conversations(-\d+)?\.json")
        head = peek(path, member) if member else b""
    return b'"' + key + b'"' in head


def detect(path: Path) -> list[str]:
    """Kinds whose connector says `path` looks like its export (sorted)."""
    found = []
    for kind in known_sources():
        try:
            module = importlib.import_module(module_name(kind))
        except ImportError:
            continue
        looks_like = getattr(module, "looks_like", None)
        if looks_like is None:
            continue
        try:
            if looks_like(path):
                found.append(kind)
        except Exception:  # noqa: BLE001 - a detector must never break extract
            continue
    return found


def choose(path: Path) -> str:
    """The one kind `path` looks like, or an `InputError` naming the candidates."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    kinds = detect(path)
    if len(kinds) == 1:
        return kinds[0]
    choices = ", ".join(known_sources())
    if not kinds:
        raise InputError(
            f"{path}: cannot tell which kind of export this is; give --source ({choices})"
        )
    raise InputError(
        f"{path} looks like more than one kind of export ({', '.join(kinds)}); "
        f"give --source ({choices})"
    )
