"""Per-bucket work on this process and a few others, results taken in bucket order.

Staging is bucketed by conversation (`pipeline.core.staging_buckets`), so a stage that works
bucket by bucket (`chunk`, the dry run) can spread its buckets over processes: each process
claims the next untaken bucket from a shared counter, and the results are handed on in
bucket order, so what is merged is the same whatever the number of processes. The stages
decide what a bucket's work is and how many processes to use; this module only runs them.

On Linux the other processes are forked (`worker_context`): a forked worker starts working
at once, where a spawned one first spends about a second of CPU importing pyarrow, the
tokenizer and pandas again (about 7% of the CPU of a 1M-message chunk). A forked worker
inherits the work as it is, so the work must hold nothing open that two processes cannot
share (a ledger connection is opened by each process on first use).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeAlias, TypeVar

from pipeline.core.parent_watch import die_with_parent
from pipeline.core.process_memory import release_freed_memory
from pipeline.core.process_start import pyarrow_without_pandas

R = TypeVar("R")
Context: TypeAlias = "multiprocessing.context.ForkContext | multiprocessing.context.SpawnContext"
"""The two ways `in_parallel` starts workers (a string: Windows has no fork context)."""


def _claim(counter: Any, buckets: int) -> int | None:
    """The next bucket nobody has taken, or None when all are taken."""
    with counter.get_lock():
        bucket = int(counter.value)
        if bucket >= buckets:
            return None
        counter.value = bucket + 1
    return bucket


def worker_context() -> Context:
    """How `in_parallel` starts its workers: forked on Linux while this process runs no
    Python thread but its main one, else spawned.

    A thread of ours could hold a lock (a progress bar's, logging's) at the moment of the
    fork and leave it held for ever in the child, so a threaded caller spawns. The native
    threads every pyarrow process has (jemalloc's background thread, OpenBLAS's workers)
    reset themselves in a forked child. Elsewhere (macOS, Windows) fork is unsafe or absent.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_loop(
    work: Callable[[int], object],
    buckets: int,
    counter: Any,
    results: Any,
    parent: int | None = None,
) -> None:
    """A worker process: claim buckets until none is left, report each one's
    `(bucket, work(bucket))` (or the error), then `None`.

    It ends with `parent` (a killed parent leaves no worker behind). Ctrl-C reaches the
    whole process group: the worker stops quietly and the parent reports the interruption.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the caller's
    if parent is not None:
        die_with_parent(parent)
    release_freed_memory()
    pyarrow_without_pandas()  # a spawned worker; a forked one has the caller's answer
    try:
        while (bucket := _claim(counter, buckets)) is not None:
            results.put((bucket, work(bucket)))
    except KeyboardInterrupt:
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(_picklable(exc))
    results.put(None)  # this worker is done


def _picklable(exc: Exception) -> Exception:
    """`exc`, or a `RuntimeError` with its text when it cannot cross to the parent."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle or unpickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class InOrder(Generic[R]):
    """Takes per-bucket results in whatever order they are finished and hands them on
    (`take`) in bucket order: a result waits until the ones before it are in. What is
    merged in order is the same whatever the number of processes."""

    def __init__(self, take: Callable[[R], None]):
        self._take = take
        self.ready: dict[int, R] = {}
        self.written = 0
        """Buckets handed on: 0 to `written - 1`."""

    def add(self, bucket: int, result: R) -> None:
        """Take a finished bucket; hand it on with any it was holding up."""
        self.ready[bucket] = result
        while self.written in self.ready:
            self._take(self.ready.pop(self.written))
            self.written += 1


def in_parallel(
    work: Callable[[int], R],
    buckets: int,
    workers: int,
    in_order: InOrder[R],
    *,
    what: str = "chunk",
    context: Context | None = None,
) -> None:
    """`work(bucket)` for every bucket, on this process and `workers - 1` others, each
    result handed to `in_order` (so to its consumer in bucket order).

    `work` must be picklable (a module-level function, or a `functools.partial` of one
    over picklable arguments) and hold no open connection or file: each worker gets a
    copy, pickled or forked. Every process claims the next untaken bucket from a shared
    counter, so a slow bucket never leaves a core idle, and this process works too (one
    process fewer to start and to hold in memory). A worker's exception is raised here;
    Ctrl-C or SIGTERM here stops the workers. `what` names the stage in the errors.
    `context` starts the workers (default `worker_context()`); a caller that made shared
    objects for `work` (a lock) passes the context it made them in.
    """
    context = context or worker_context()
    counter = context.Value("i", 0)
    results = context.Queue()
    helpers = [
        context.Process(
            target=_worker_loop,
            args=(work, buckets, counter, results, os.getpid()),
            daemon=True,
        )
        for _ in range(min(workers, buckets) - 1)
    ]
    with warnings.catch_warnings():
        # Python 3.12+ warns of any fork beside native threads; see `worker_context`
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        for process in helpers:
            process.start()
    running = len(helpers)

    def take(done: tuple[int, R] | BaseException | None) -> None:
        nonlocal running
        if done is None:
            running -= 1
        elif isinstance(done, BaseException):
            raise done
        else:
            in_order.add(*done)

    try:
        while (bucket := _claim(counter, buckets)) is not None:
            in_order.add(bucket, work(bucket))
            while not results.empty():
                take(results.get())
        while running:
            try:
                take(results.get(timeout=1.0))
            except queue.Empty:
                if not any(p.is_alive() for p in helpers) and results.empty():
                    raise ChildProcessError(
                        f"a {what} worker process ended without finishing its buckets"
                    ) from None
        if in_order.written != buckets:
            raise ChildProcessError(f"a {what} worker process lost a bucket")
    finally:
        for process in helpers:
            if process.is_alive():
                process.terminate()
            process.join()
