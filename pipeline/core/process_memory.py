"""This process's memory: which allocator Arrow uses, the C heap's arenas, and handing
freed pages back to the system.

Chunk, the dry run and `run` read, use and drop one staging bucket after another, so what
a bucket freed must not stay resident under the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import pyarrow as pa


def release_freed_memory() -> None:
    """Make Arrow allocate with the system allocator from now on (unless the user chose one
    with `ARROW_DEFAULT_MEMORY_POOL`).

    Chunk and the dry run read, use and drop one bucket after another. Arrow's default
    allocator (mimalloc) keeps freed segments for reuse, so the process's resident memory
    crept up bucket by bucket (345 MB against 262 MB for the same 200k-message chunk); the
    system allocator hands them back, at no measurable cost in time here.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())


MALLOC_ARENAS = 1
"""glibc malloc arenas per process (`limit_malloc_arenas`)."""


def limit_malloc_arenas() -> None:
    """Cap the C heap at `MALLOC_ARENAS` arenas in this process and the ones it starts
    (unless the user set `MALLOC_ARENA_MAX`; glibc only).

    glibc gives threads their own arenas, up to eight per core, and Arrow's compute
    threads allocate through the system allocator (`release_freed_memory`), so each
    process kept several partly used arenas that `malloc_trim` cannot merge. A 5M-message
    dry run on two processes peaked at 542 MB with the default, 508 MB with two arenas and
    496 MB with one, at no loss in time: the heavy allocations here are made one thread
    at a time (docs/performance.md, "Dry run on two processes"). Child processes read the
    variable when they start; this process is capped through `mallopt`.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


_M_ARENA_MAX = -8
"""glibc's `mallopt` parameter number for the arena cap."""


def hand_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc only).

    Between stages of one process, and after each staging bucket of chunk and the dry run:
    the pages a bucket freed otherwise stay resident and fragmented, and the next bucket's
    peak lands on top of them (a chunk process crept from 200 to 270 MB over 16 buckets,
    against 190-206 MB with this after each one).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
