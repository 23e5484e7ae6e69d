"""Run a group-chat connector's jobs in worker processes that write their own Parquet parts.

Parsing and normalizing chat JSON costs far more than anything else in an extract, and it
splits cleanly by conversation (a channel with all its files). A job is a list of such
units; each worker process stages its job's rows straight into one Parquet part
(`pipeline.core.staging.PartWriter`) and sends back only the part's name, counts and
quarantined records, so rows never cross a process boundary. Results are passed on in job
order, whichever worker finished first, so the staged parts do not depend on scheduling.
The same job function runs in-process when there is no parts folder or little data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from connectors.group_chat_workers import init_group_chat_worker
from pipeline.core.models import Event, MessageTable, Quarantined, Skipped, StagedPart
from pipeline.core.process_start import main_module_hidden
from pipeline.core.staging import PartWriter

PARALLEL_MIN_BYTES = 16 << 20
"""Below this much input, jobs run in-process (starting workers costs ~0.3 s)."""
JOB_BYTES = 32 << 20
"""Units are grouped into jobs of about this many input bytes."""


@dataclass(frozen=True)
class Job:
    """Consecutive units staged together into the part at `part_path` (None: in-process)."""

    units: tuple[Any, ...]
    context: Any
    """What every job of the export shares (options, owners, the export's path, ...)."""
    part_path: str | None = None


@dataclass
class JobResult:
    """What a worker sends back: its part, skip counts and quarantined records."""

    part: StagedPart | None
    skipped: dict[str, int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)


JobFn = Callable[[Job], Iterator[Event]]


def group_units(units: list[tuple[Any, int]], job_bytes: int | None = None) -> list[list[Any]]:
    """Consecutive `(unit, size)` pairs grouped into lists of about `job_bytes` (default
    `JOB_BYTES`)."""
    job_bytes = job_bytes or JOB_BYTES
    groups: list[list[Any]] = []
    size = job_bytes
    for unit, unit_size in units:
        if size >= job_bytes:
            groups.append([])
            size = 0
        groups[-1].append(unit)
        size += unit_size
    return groups


def worker_count(workers: int | None, total_bytes: int) -> int:
    """Processes to use: `workers`, else one per core for inputs over `PARALLEL_MIN_BYTES`."""
    if workers is not None:
        return workers
    cores = os.cpu_count() or 1
    return cores if total_bytes >= PARALLEL_MIN_BYTES else 1


def run_in_worker(job_fn: JobFn, job: Job) -> JobResult:
    """Run one job, writing its tables into the job's part (in a worker process)."""
    assert job.part_path is not None
    writer = PartWriter(Path(job.part_path))
    skipped: dict[str, int] = {}
    quarantined: list[Quarantined] = []
    for event in job_fn(job):
        if isinstance(event, MessageTable):
            for batch in event.table.to_batches():
                writer.add(batch)
        elif isinstance(event, Skipped):
            skipped[event.reason] = skipped.get(event.reason, 0) + event.count
        elif isinstance(event, Quarantined):
            quarantined.append(event)
    return JobResult(writer.close(), skipped, quarantined)


def run_jobs(job_fn: JobFn, jobs: list[Job], workers: int) -> Iterator[Event]:
    """The events of every job, in job order: in-process (`workers` 1 or parts-less jobs),
    else from `workers` spawned processes, one staged part per job."""
    if workers <= 1 or any(job.part_path is None for job in jobs):
        for job in jobs:
            yield from job_fn(job)
        return
    with JobPool(job_fn, workers) as pool:
        for job in jobs:
            pool.submit(job)
        yield from pool.results()


class JobPool:
    """Worker processes that take jobs as they are planned, for a planner that finds its
    jobs while reading (Telegram's chat scan): the first jobs run while later ones are
    still being found. A worker process is started at a submission that finds none idle,
    up to `workers`. Use as a context manager; `results()` yields in submission order.
    """

    def __init__(self, job_fn: JobFn, workers: int) -> None:
        self._job_fn = job_fn
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[tuple[Job, Future[JobResult]]] = []

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(self, job: Job) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=get_context("spawn"),
                initializer=init_group_chat_worker,
            )
        with main_module_hidden():
            self._futures.append((job, self._pool.submit(run_in_worker, self._job_fn, job)))

    def discard(self) -> None:
        """Drop every job submitted so far: cancel those not started, wait for the others
        and delete the parts they wrote (the planner will stage their units another way)."""
        for job, future in self._futures:
            if not future.cancel():
                future.exception()  # wait; whatever it did is thrown away
            if job.part_path is not None:
                Path(job.part_path).unlink(missing_ok=True)
        self._futures.clear()

    def results(self) -> Iterator[Event]:
        """Each submitted job's part, skip counts and quarantined records, in order."""
        for _, future in self._futures:
            result = future.result()
            if result.part is not None:
                yield result.part
            for reason, count in sorted(result.skipped.items()):
                yield Skipped(reason, count)
            yield from result.quarantined
        self._futures.clear()
