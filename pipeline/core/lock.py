"""Workdir lock: one memos-etl run per workdir at a time (e.g. cron overlapping a manual run).

An advisory `flock` on `<workdir>/.memos-etl.lock`; the operating system releases it when
the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import LockError
from pipeline.core.workdir import lock_path


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the workdir lock for the block; raise `LockError` at once if another run has it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = lock_path(workdir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockError(
                f"another memos-etl run (pid {holder}) is using {workdir}; "
                "wait for it to finish, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
