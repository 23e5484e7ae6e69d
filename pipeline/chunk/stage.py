"""`memos-etl chunk` over a workdir: bucket by bucket, optionally on several processes.

Staging is bucketed by conversation (`pipeline.core.staging_buckets`), and batches never mix
conversations, so each bucket is chunked alone: memory is bounded by the largest bucket, not
by the export, and buckets can be chunked in parallel (`workers`). The batch file holds the
buckets' batches in bucket order (inside a bucket, by user and conversation, as before);
the batches themselves and their ids do not depend on the bucket count or the workers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from pipeline.chunk.batching import (
    AUTHOR_COLUMNS,
    CHUNK_COLUMNS,
    ChunkLimits,
    ChunkStats,
    chunk_table,
)
from pipeline.core.batches import encode_batch, write_json_atomic
from pipeline.core.bucket_workers import InOrder, in_parallel
from pipeline.core.diskfull import disk_full_error, is_disk_full
from pipeline.core.process_memory import hand_back_memory, release_freed_memory
from pipeline.core.process_start import pyarrow_without_pandas
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.redact import DEFAULT_POLICY, Policy
from pipeline.core.staging import (
    read_labeled_bucket,
    staged_bucket_count,
    staged_row_count,
    staged_sources,
)
from pipeline.core.workdir import batches_dir, batches_path, manifest_path


@dataclass(frozen=True)
class BucketJob:
    """What every bucket of one chunk run shares (sent once to each worker process)."""

    workdir: Path
    labels: tuple[str, ...]
    columns: tuple[str, ...]
    buckets: int
    limits: ChunkLimits
    since: datetime | None
    tags: Mapping[str, Sequence[str]] | None
    group: Container[str]
    policy: Policy


def chunk_bucket(
    job: BucketJob, bucket: int, exclude_ids: Container[str] | None, out: IO[bytes]
) -> tuple[ChunkStats, set[str]]:
    """Chunk one bucket's rows into `out`; its counts and the owners it batched."""
    table = read_labeled_bucket(job.workdir, job.labels, list(job.columns), bucket, job.buckets)
    stats = ChunkStats()
    users: set[str] = set()
    batches = chunk_table(
        table,
        job.limits,
        stats,
        exclude_ids,
        since=job.since,
        tags=job.tags,
        group=job.group,
        policy=job.policy,
        users=users,
    )
    del table  # the chunker sorts a copy: the unsorted rows go as soon as it has
    write = out.write
    for batch in batches:
        write(encode_batch(batch))
    del batches
    hand_back_memory()
    return stats, users


def _bucket_to_file(job: BucketJob, exclude_ids: Container[str] | None, bucket: int) -> BucketDone:
    """Chunk one bucket into its own temp file (the parallel path's per-bucket work)."""
    path = batches_dir(job.workdir) / f".bucket-{bucket:04d}.jsonl.tmp"
    with path.open("wb", buffering=1 << 20) as out:
        stats, users = chunk_bucket(job, bucket, exclude_ids, out)
    return BucketDone(bucket, stats, users, path)


@dataclass(frozen=True)
class BucketDone:
    """A bucket chunked into a temp file, waiting its turn in the batch file."""

    bucket: int
    stats: ChunkStats
    users: set[str]
    path: Path


def chunk_workdir(
    workdir: Path,
    limits: ChunkLimits,
    exclude_ids: Container[str] | None = None,
    *,
    since: datetime | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
    excluded_for: str | None = None,
    group: Container[str] = frozenset(),
    policy: Policy = DEFAULT_POLICY,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ChunkStats:
    """Read the staging table bucket by bucket, write `<workdir>/batches/`, return the counts.

    `tags` maps source names to the MemOS tags of their batches (see `Config.tags_by_source`);
    `group` names the sources in group-chat mode (see `Config.group_sources`).
    `excluded_for` names the destination `exclude_ids` came from; the manifest keeps it, so
    a load into another destination knows the batch file leaves messages out.
    `policy` is the redaction policy (see `RedactConfig.policy`). The manifest records the
    policy's actions and the redaction counts next to the other counts. `workers` > 1
    chunks that many buckets at a time (this process and `workers - 1` others); None
    chooses (`default_workers`). `progress` advances by a bucket's messages as the
    bucket lands in the batch file.
    """
    release_freed_memory()
    pyarrow_without_pandas()  # before a worker is forked: it inherits the answer
    labels = tuple(staged_sources(workdir))
    columns = CHUNK_COLUMNS + AUTHOR_COLUMNS if group else CHUNK_COLUMNS
    job = BucketJob(
        workdir,
        labels,
        tuple(columns),
        staged_bucket_count(workdir, labels),
        limits,
        since,
        tags,
        frozenset(group) if isinstance(group, (set, frozenset)) else group,
        policy,
    )
    stats = ChunkStats()
    users: set[str] = set()
    progress = progress or NullProgress()
    progress.start("chunk", total=staged_row_count(workdir, labels), unit="msg")
    folder = batches_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = batches_path(workdir).with_suffix(".jsonl.tmp")
    try:
        with tmp.open("wb", buffering=1 << 20) as out:
            if workers is None:
                workers = default_workers(job.buckets, exclude_ids)
            if workers <= 1 or job.buckets == 1:
                for bucket in range(job.buckets):
                    part, owners = chunk_bucket(job, bucket, exclude_ids, out)
                    stats.merge(part)
                    users |= owners
                    progress.advance(part.messages)
            else:
                in_order = InBucketOrder(out, stats, users, progress)
                work = functools.partial(_bucket_to_file, job, exclude_ids)
                in_parallel(work, job.buckets, workers, in_order, what="chunk")
        progress.close()
        os.replace(tmp, batches_path(workdir))
        stats.users = len(users)
        manifest: dict[str, object] = {
            "max_tokens": limits.max_tokens,
            "max_messages": limits.max_messages,
            "redact": policy.actions(),
            "buckets": job.buckets,
        }
        if excluded_for is not None and stats.excluded > stats.duplicates:
            manifest["excluded_for"] = excluded_for
        write_json_atomic(manifest_path(workdir), {**manifest, **stats.to_json()})
    except BaseException as exc:
        # a half-written temp file (disk full, Ctrl-C) would keep the disk full: remove it;
        # the previous batch file, if any, is untouched
        for stale in [*folder.glob("*.tmp"), *folder.glob(".bucket-*.tmp")]:
            stale.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise disk_full_error(folder, exc) from exc
        raise
    return stats


PARALLEL_MIN_BUCKETS = 8
"""Staging buckets (about 16 MB of messages each) from which chunk uses a second process
by default: below, starting it costs more than it saves."""


def default_workers(buckets: int, exclude_ids: Container[str] | None = None) -> int:
    """Processes chunk uses unless told: two on a machine with two cores or more, for a
    staging of `PARALLEL_MIN_BUCKETS` buckets or more, else one.

    Never more than two by default: each process holds a bucket and its own tokenizer
    (about 200 MB), and two keep a chunk within 512 MB; `--workers` asks for more. An
    `exclude_ids` that plans as it is asked (`run`'s, `incremental.BucketPlan`) keeps its
    totals in this process, so it is chunked here alone.
    """
    if exclude_ids is not None and not isinstance(exclude_ids, (set, frozenset)):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cpus or 1) >= 2 and buckets >= PARALLEL_MIN_BUCKETS else 1


class InBucketOrder(InOrder[BucketDone]):
    """Appends chunked buckets to the batch file in bucket order, whatever order they are
    finished in (a bucket waits in its temp file until the ones before it are in)."""

    def __init__(
        self,
        out: IO[bytes],
        stats: ChunkStats,
        users: set[str],
        progress: Progress | None = None,
    ):
        super().__init__(self._append)
        self.out, self.stats, self.users = out, stats, users
        self.progress = progress or NullProgress()

    def _append(self, part: BucketDone) -> None:
        _append(part.path, self.out)
        self.stats.merge(part.stats)
        self.users.update(part.users)
        self.progress.advance(part.stats.messages)


def _append(path: Path, out: IO[bytes]) -> None:
    """Append a bucket's temp file to the batch file in the kernel, then remove it."""
    out.flush()
    with path.open("rb") as src:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            offset += os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
    path.unlink()
