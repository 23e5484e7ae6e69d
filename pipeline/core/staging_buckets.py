"""Staging bucketed by conversation: `staging/<source>/bucket=NNNN/part-*.parquet`.

Chunk, the dry run and `run` work one bucket at a time, so their memory is bounded by the
largest bucket instead of the export. Every conversation lives in exactly one bucket
(`pipeline.core.buckets.bucket_of`); the bucket count B is a power of two chosen from the
staged data's size, so a conversation's bucket under a smaller count is its bucket under a
larger one modulo the smaller (sources staged with different counts can be read together).

An extract writes its rows (and the parts its connector's workers wrote) unbucketed first;
`bucket_parts` then streams them, a few thousand rows at a time, into one Arrow IPC spool
file per bucket, writes each bucket's Parquet file from its spool, and removes the flat
parts. Rows keep their staged order inside a bucket. `_buckets.json` beside the
bucket folders records the count and rows per bucket (a leading `_` keeps pandas, pyarrow and
DuckDB from taking it for data). A folder without it is an older, unbucketed source: all its
files are one bucket (B = 1), still readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.buckets import bucket_count, bucket_indices
from pipeline.core.models import STAGING_SCHEMA
from pipeline.core.process_memory import release_freed_memory

BUCKETS_FILE = "_buckets.json"
STAGING_BUCKET_BYTES = 16 * 1024 * 1024
"""Uncompressed staged bytes per bucket the count aims at: chunk turns a bucket's rows into
Python objects (several times their Arrow size), and `chunk --workers N` holds N buckets."""
ROW_GROUP_BYTES = 16 * 1024 * 1024
"""Arrow bytes of a bucket file's row groups."""
READ_ROWS = 8192
"""Rows read from the flat parts at a time (their row groups can be tens of MB)."""
READ_AHEAD = 2
"""Split batches of `READ_ROWS` rows read ahead of the spool (memory: ~2 × 5 MB)."""
TAIL_THREADS = 2
"""Buckets written at once at the end (each holds at most one `ROW_GROUP_BYTES` row
group): rewriting the parts is serial work after a connector's workers have finished, on
cores they no longer use."""
LAYOUT_VERSION = 1


def bucket_dir(source: Path, bucket: int) -> Path:
    """`<source>/bucket=NNNN`: hive-style, so pandas and pyarrow add a `bucket` column."""
    return source / f"bucket={bucket:04d}"


@dataclass(frozen=True)
class SourceLayout:
    """How one staged source is stored: `buckets` folders, or one flat folder (B = 1)."""

    buckets: int
    files: dict[int, list[Path]]
    """Parquet files per bucket (buckets without rows are absent)."""

    def files_for(self, bucket: int, of: int) -> list[Path]:
        """Files holding the rows of bucket `bucket` of `of` (`of` a multiple of `buckets`)."""
        return self.files.get(bucket % self.buckets, [])


def read_layout(source: Path) -> SourceLayout:
    """The layout of a staged source folder (bucketed, or flat from an older version)."""
    marker = source / BUCKETS_FILE
    if not marker.is_file():
        return SourceLayout(1, {0: sorted(source.glob("*.parquet"))})
    meta = orjson.loads(marker.read_bytes())
    buckets = int(meta["buckets"])
    files: dict[int, list[Path]] = {}
    for name in meta.get("rows", {}):
        found = sorted(bucket_dir(source, int(name)).glob("*.parquet"))
        if found:
            files[int(name)] = found
    return SourceLayout(buckets, files)


def all_files(source: Path) -> list[Path]:
    """Every Parquet file of a staged source, bucketed or not."""
    layout = read_layout(source)
    return [f for b in sorted(layout.files) for f in layout.files[b]]


def choose_buckets(files: list[Path], target_bytes: int = STAGING_BUCKET_BYTES) -> int:
    """Bucket count for staged `files`, from their uncompressed size in the Parquet footers."""
    size = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return bucket_count(size, target_bytes=target_bytes)


class _BucketSpool:
    """Rows per bucket spooled to Arrow IPC streams, then each bucket written as Parquet alone.

    An open Parquet writer per bucket kept a few MB each (128 buckets: hundreds of MB); an
    IPC stream writer keeps nothing, so memory stays at one read batch, then one bucket's
    row group, whatever the bucket count.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.spool = folder / ".spool"
        self.spool.mkdir()
        self.streams: dict[int, tuple[Any, Any]] = {}
        self.rows: dict[int, int] = {}

    def add(self, bucket: int, table: pa.Table) -> None:
        stream = self.streams.get(bucket)
        if stream is None:
            sink = pa.OSFile(str(self.spool / f"{bucket:04d}.arrow"), "wb")
            stream = self.streams[bucket] = (sink, pa.ipc.new_stream(sink, STAGING_SCHEMA))
        stream[1].write_table(table)
        self.rows[bucket] = self.rows.get(bucket, 0) + table.num_rows

    def _close_streams(self) -> None:
        for sink, writer in self.streams.values():
            writer.close()
            sink.close()
        self.streams = {}

    def finish(self, open_writer: Any) -> None:
        """Write every spooled bucket as `bucket=NNNN/part-00000.parquet`, `TAIL_THREADS`
        buckets at a time (Arrow reads, encodes and compresses without holding the GIL)."""
        buckets = sorted(self.streams)
        self._close_streams()
        with ThreadPoolExecutor(TAIL_THREADS) as pool:
            for done in [pool.submit(self._write_bucket, b, open_writer) for b in buckets]:
                done.result()
        self.spool.rmdir()

    def _write_bucket(self, bucket: int, open_writer: Any) -> None:
        path = self.spool / f"{bucket:04d}.arrow"
        folder = bucket_dir(self.folder, bucket)
        folder.mkdir()
        writer = open_writer(folder / "part-00000.parquet")
        try:
            with pa.OSFile(str(path), "rb") as source:
                pending: list[pa.RecordBatch] = []
                size = 0
                for batch in pa.ipc.open_stream(source):
                    pending.append(batch)
                    size += batch.nbytes
                    if size >= ROW_GROUP_BYTES:
                        writer.write_table(pa.Table.from_batches(pending, STAGING_SCHEMA))
                        pending, size = [], 0
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, STAGING_SCHEMA))
        finally:
            writer.close()
        path.unlink()

    def abort(self) -> None:
        """Close and remove the spool (after a failure)."""
        with contextlib.suppress(OSError):
            self._close_streams()
        shutil.rmtree(self.spool, ignore_errors=True)


def _split(table: pa.Table, buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """The rows of `table` per bucket, each in their original order."""
    index = bucket_indices(table.column("conversation_id"), buckets)
    order = pc.sort_indices(index)  # stable: rows keep their order inside a bucket
    ordered = table.take(order)
    counts = pc.value_counts(index)
    sizes = sorted(
        zip(
            counts.field("values").to_pylist(),
            counts.field("counts").to_pylist(),
            strict=True,
        )
    )
    start = 0
    for bucket, size in sizes:
        yield bucket, ordered.slice(start, size)
        start += size


def _split_parts(parts: list[Path], count: int) -> Iterator[list[tuple[int, pa.Table]]]:
    """The rows of the flat `parts`, `READ_ROWS` at a time, split by bucket."""
    for path in parts:
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=READ_ROWS, use_threads=False):
            table = pa.Table.from_batches([batch])
            if not table.schema.equals(STAGING_SCHEMA, check_metadata=False):
                table = table.cast(STAGING_SCHEMA)
            yield list(_split(table, count))


_DONE = object()


def _read_ahead(items: Iterator[Any], ahead: int = READ_AHEAD) -> Iterator[Any]:
    """`items`, produced in a helper thread up to `ahead` items before they are taken: the
    flat parts are read and split while the spool writes what came before."""
    queue: Queue[Any] = Queue(ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            queue.put((_DONE, exc))
            return
        queue.put((_DONE, None))

    thread = threading.Thread(target=produce, name="bucket-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if type(item) is tuple and len(item) == 2 and item[0] is _DONE:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get_nowait()
            thread.join(0.01)


def bucket_parts(folder: Path, open_writer: Any, buckets: int | None = None) -> int:
    """Rewrite the flat parts in `folder` (in name order) as bucket folders; return B.

    Streams row group by row group; buffered rows stay under `FLUSH_TOTAL_BYTES`. Writes
    `_buckets.json` last, then removes the flat parts.
    """
    release_freed_memory()
    parts = sorted(folder.glob("*.parquet"))
    count = buckets or choose_buckets(parts)
    writers = _BucketSpool(folder)
    if count == 1 and parts:  # one bucket: the parts move in as they are
        bucket_dir(folder, 0).mkdir()
        for path in parts:
            os.replace(path, bucket_dir(folder, 0) / path.name)
            writers.rows[0] = (
                writers.rows.get(0, 0)
                + pq.ParquetFile(bucket_dir(folder, 0) / path.name).metadata.num_rows
            )
        parts = []
    try:
        for pieces in _read_ahead(_split_parts(parts, count)):
            for bucket, rows in pieces:
                writers.add(bucket, rows)
        writers.finish(open_writer)
    except BaseException:
        writers.abort()
        raise
    if not writers.rows:  # nothing staged: one readable empty file
        bucket_dir(folder, 0).mkdir()
        pq.write_table(STAGING_SCHEMA.empty_table(), bucket_dir(folder, 0) / "part-00000.parquet")
        writers.rows[0] = 0
    meta = {
        "version": LAYOUT_VERSION,
        "buckets": count,
        "rule": "blake2b (8 bytes, big-endian) of conversation_id, modulo buckets",
        "rows": {f"{b:04d}": n for b, n in sorted(writers.rows.items())},
    }
    tmp = folder / f"{BUCKETS_FILE}.tmp"
    tmp.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    os.replace(tmp, folder / BUCKETS_FILE)
    for path in parts:
        path.unlink()
    return count
