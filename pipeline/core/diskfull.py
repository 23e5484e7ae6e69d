"""Recognise "the disk is full" in any error and say it plainly: which path, how much is free.

A full disk is not a bug (exit 1) but a condition the user can fix, so every layer that
writes maps it to `DiskFullError` (exit 7). Writers remove their temp files before the
error leaves them, so freeing space and rerunning the same command is always enough.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from pipeline.core.errors import DiskFullError

_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded", "database or disk is full")


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, reports a full disk or quota.

    Covers OSError (ENOSPC, EDQUOT), pyarrow's OSError (errno only in its text) and
    SQLite's SQLITE_FULL ("database or disk is full").
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE_ERRNOS:
            return True
        if isinstance(current, (OSError, sqlite3.Error)):
            text = str(current).lower()
            if any(t in text for t in _NO_SPACE_TEXTS):
                return True
        current = current.__cause__ or current.__context__
    return False


def free_space(path: Path) -> str:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    size = float(free)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def disk_full_error(path: Path, exc: BaseException | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that failed for lack of space."""
    where = getattr(exc, "filename", None) or path
    return DiskFullError(
        f"disk full: cannot write {where} ({free_space(Path(where))} free there); "
        "free some space, then run the same command again"
    )
