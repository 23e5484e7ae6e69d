"""`memos-etl chunk` over a workdir: bucket by bucket, optionally on several processes.

Staging is bucketed by conversation (`pipeline.core.staging_buckets`), and batches never mix
conversations, so each bucket is chunked alone: memory is bounded by the largest bucket, not
by the export, and buckets can be chunked in parallel (`workers`). The batch file holds the
buckets' batches in bucket order (inside a bucket, by user and conversation, as before);
the batches themselves and their ids do not depend on the bucket count or the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Container, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pipeline.chunk.batching import (
    AUTHOR_COLUMNS,
    CHUNK_COLUMNS,
    ChunkLimits,
    ChunkStats,
    chunk_table,
)
from pipeline.core.batches import encode_batch, write_json_atomic
from pipeline.core.diskfull import disk_full_error, is_disk_full
from pipeline.core.redact import DEFAULT_POLICY, Policy
from pipeline.core.staging import read_labeled_bucket, staged_bucket_count, staged_sources
from pipeline.core.staging_buckets import hand_back_memory, release_freed_memory
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
    write = out.write
    for batch in batches:
        write(encode_batch(batch))
    del table, batches
    hand_back_memory()
    return stats, users


_worker: dict[str, Any] = {}


def _init_worker(job: BucketJob, exclude_ids: Container[str] | None) -> None:
    release_freed_memory()
    _worker["job"], _worker["exclude"] = job, exclude_ids


def _bucket_in_worker(bucket: int) -> tuple[ChunkStats, set[str], str]:
    job: BucketJob = _worker["job"]
    path = batches_dir(job.workdir) / f".bucket-{bucket:04d}.jsonl.tmp"
    with path.open("wb") as out:
        stats, users = chunk_bucket(job, bucket, _worker["exclude"], out)
    return stats, users, str(path)


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
    workers: int = 1,
) -> ChunkStats:
    """Read the staging table bucket by bucket, write `<workdir>/batches/`, return the counts.

    `tags` maps source names to the MemOS tags of their batches (see `Config.tags_by_source`);
    `group` names the sources in group-chat mode (see `Config.group_sources`).
    `excluded_for` names the destination `exclude_ids` came from; the manifest keeps it, so
    a load into another destination knows the batch file leaves messages out.
    `policy` is the redaction policy (see `RedactConfig.policy`). The manifest records the
    policy's actions and the redaction counts next to the other counts. `workers` > 1
    chunks that many buckets at a time in worker processes.
    """
    release_freed_memory()
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
    folder = batches_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = batches_path(workdir).with_suffix(".jsonl.tmp")
    try:
        with tmp.open("wb", buffering=1 << 20) as out:
            if workers <= 1 or job.buckets == 1:
                for bucket in range(job.buckets):
                    part, owners = chunk_bucket(job, bucket, exclude_ids, out)
                    stats.merge(part)
                    users |= owners
            else:
                _parallel(job, exclude_ids, workers, out, stats, users)
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


def _parallel(
    job: BucketJob,
    exclude_ids: Container[str] | None,
    workers: int,
    out: IO[bytes],
    stats: ChunkStats,
    users: set[str],
) -> None:
    """Buckets on `workers` processes; their files appended to `out` in bucket order."""
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with ProcessPoolExecutor(
        max_workers=min(workers, job.buckets),
        mp_context=context,
        initializer=_init_worker,
        initargs=(job, exclude_ids),
    ) as pool:
        futures = [pool.submit(_bucket_in_worker, b) for b in range(job.buckets)]
        try:
            for future in futures:
                part, owners, path = future.result()
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                os.unlink(path)
                stats.merge(part)
                users |= owners
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # then the caller removes temp files
            raise
