"""Write and read the Parquet staging table under `<workdir>/staging/<source name>/`.

The writer streams: rows are buffered per column and flushed as row groups, so memory
stays bounded however large the export. A source's files are written to a hidden
temporary folder and swapped in only when the extract finished, so a crash never leaves
a half-written source behind. Before the swap the rows are bucketed by conversation
(`pipeline.core.staging_buckets`): `staging/<source>/bucket=NNNN/part-*.parquet`. pandas,
pyarrow and DuckDB read the result as-is, e.g. `pandas.read_parquet("<workdir>/staging")` or
`duckdb.sql("select * from '<workdir>/staging/*/*/*.parquet'")`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.diskfull import disk_full_error, is_disk_full
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import STAGING_SCHEMA, Distinct, Message, StagedPart
from pipeline.core.workdir import staging_dir

ROW_GROUP_ROWS = 65_536
ROW_GROUP_CHARS = 64 * 1024 * 1024
PART_ROW_GROUP_ROWS = 16_384
PART_ROW_GROUP_BYTES = 32 * 1024 * 1024
"""Row group size of parts written by connector workers, in rows or Arrow bytes, whichever
comes first (bounds each worker's memory whatever the message sizes)."""
_COLUMNS = STAGING_SCHEMA.names
DICTIONARY_COLUMNS = [
    "source",
    "source_file",
    "source_position",
    "conversation_id",
    "user_id",
    "role",
    "author_id",
    "author_name",
]
"""Columns with few distinct values. Dictionary-encoding the others (ids, content,
metadata) only costs time: Parquet gives up on them after the first page anyway."""
_OWN_PART = "part-00000.parquet"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_text(value: Any) -> Any:
    """Replace lone surrogates (from broken JSON escapes) that Arrow cannot store as UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    return value


def replace_surrogates(value: Any) -> Any:
    """`value` with lone surrogates (from broken JSON escapes), which UTF-8 cannot hold,
    replaced; anything but a string is returned as is."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def large_string_array(values: list[Any]) -> pa.Array:
    """A `large_string` array built as `string` and cast: pyarrow (26) converts Python
    strings straight to `large_string` about ten times slower."""
    try:
        return pa.array(values, pa.string()).cast(pa.large_string())
    except pa.ArrowCapacityError:  # over 2 GB of text in one array
        return pa.array(values, pa.large_string())


def table_from_columns(columns: dict[str, list[Any]]) -> pa.Table:
    """A table in `STAGING_SCHEMA` from one Python list per column."""
    arrays = [
        large_string_array(columns[f.name])
        if f.type == pa.large_string()
        else pa.array(columns[f.name], f.type)
        for f in STAGING_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=STAGING_SCHEMA)


def part_path(parts_dir: Path, index: int) -> Path:
    """Where a connector writes its part number `index` (0-based) inside `parts_dir`."""
    return parts_dir / f"part-{index + 1:05d}.parquet"


STAGING_COMPRESSION = "snappy"
"""Staging is a local intermediate: on chat text Snappy writes in about a third of zstd's
time, for files about a third larger."""


def open_part_writer(path: Path) -> pq.ParquetWriter:
    """A Parquet writer in `STAGING_SCHEMA` with the staging table's file settings."""
    return pq.ParquetWriter(
        path, STAGING_SCHEMA, compression=STAGING_COMPRESSION, use_dictionary=DICTIONARY_COLUMNS
    )


class PartWriter:
    """Writes one staging part from record batches, in row groups of about
    `PART_ROW_GROUP_ROWS` rows; for connector worker processes (see `StagedPart`)."""

    def __init__(self, path: Path, row_group_rows: int = PART_ROW_GROUP_ROWS):
        self.path = path
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._distinct: list[Distinct] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        """Queue a batch in `STAGING_SCHEMA`."""
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        if self._pending_rows >= self.row_group_rows or self._pending_bytes >= PART_ROW_GROUP_BYTES:
            self._write()

    def _write(self) -> None:
        if not self._pending_rows:
            return
        table = pa.Table.from_batches(self._pending, schema=STAGING_SCHEMA)
        if self._writer is None:
            self._writer = open_part_writer(self.path)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows
        self._distinct.append(Distinct.of_table(table))
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> StagedPart | None:
        """Finish the file; None (and no file) when no rows were added."""
        self._write()
        if self._writer is None:
            return None
        self._writer.close()
        return StagedPart(str(self.path), self.rows, Distinct.merge(self._distinct))


def source_dir(workdir: Path, name: str) -> Path:
    """`<workdir>/staging/<name>`, guaranteed to be a direct child of the staging folder.

    The writer renames, replaces and deletes this folder, so a name that is a path
    (`..`, `a/b`, an absolute path, a leading dot used by temp folders) is refused with
    `ConfigError` here even if it slipped past config validation.
    """
    root = staging_dir(workdir)
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if (
        not name
        or name.startswith(".")
        or "\0" in name
        or any(sep in name for sep in seps)
        or Path(name).is_absolute()
    ):
        raise ConfigError(f"source name {name!r} cannot be used as a staging folder name")
    path = root / name
    if Path(os.path.normpath(path)).parent != Path(os.path.normpath(root)):
        raise ConfigError(f"source name {name!r} leaves the staging folder {root}")
    return path


class StagingWriter:
    """Streams messages of one source into `staging/<name>/`, bucketed by conversation.

    Use as a context manager: on a clean exit the new files replace the source's old
    ones atomically (per folder); on an exception they are discarded.
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        row_group_rows: int = ROW_GROUP_ROWS,
        buckets: int | None = None,
    ):
        self.final_dir = source_dir(workdir, name)
        self.buckets = buckets
        """Bucket count (a power of two); None: chosen from the staged size."""
        self.tmp_dir = self.final_dir.with_name(f".{name}.tmp")
        self.row_group_rows = row_group_rows
        self.rows_written = 0
        self._buffer: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        self._buffered_chars = 0
        self._writer: pq.ParquetWriter | None = None
        self._adopted = 0

    @property
    def parts_dir(self) -> Path:
        """The folder where connectors write their own parts (see `part_path`)."""
        return self.tmp_dir

    def __enter__(self) -> StagingWriter:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        return self

    def write(self, message: Message) -> None:
        """Buffer one message; flushes a row group when the buffer is full."""
        buf = self._buffer
        for column in _COLUMNS:
            buf[column].append(getattr(message, column))
        self._buffered_chars += len(message.content)
        if len(buf["message_id"]) >= self.row_group_rows or self._buffered_chars >= ROW_GROUP_CHARS:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Write a ready table in (or castable to) `STAGING_SCHEMA`."""
        self.flush()
        table = table.select(_COLUMNS)
        if not table.schema.equals(STAGING_SCHEMA, check_metadata=False):
            table = table.cast(STAGING_SCHEMA)
        self._write(table)

    def adopt(self, part: StagedPart) -> None:
        """Count a part a connector wrote into `parts_dir` as staged by this writer."""
        path = Path(part.path)
        if path.parent != self.tmp_dir or not path.name.endswith(".parquet"):
            raise ValueError(f"staged part {path} is not in {self.tmp_dir}")
        if path.name == _OWN_PART or not path.is_file():
            raise ValueError(f"staged part {path} is missing or reserved")
        self._adopted += 1
        self.rows_written += part.rows

    def flush(self) -> None:
        """Write buffered rows as one row group."""
        if not self._buffer["message_id"]:
            return
        try:
            table = table_from_columns(self._buffer)
        except UnicodeEncodeError:
            table = table_from_columns(
                {c: [_clean_text(v) for v in vals] for c, vals in self._buffer.items()}
            )
        self._buffer = {c: [] for c in _COLUMNS}
        self._buffered_chars = 0
        self._write(table)

    def _write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._writer = open_part_writer(self.tmp_dir / _OWN_PART)
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows_written += table.num_rows

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()
            if exc is not None and is_disk_full(exc):
                raise disk_full_error(self.tmp_dir, exc) from exc
            return
        try:
            self.flush()
            if self._writer is not None:
                self._writer.close()
            from pipeline.core.staging_buckets import bucket_parts

            bucket_parts(self.tmp_dir, open_part_writer, self.buckets)
        except OSError as error:  # e.g. the disk filled up on the last row group
            self._discard()
            if is_disk_full(error):
                raise disk_full_error(self.tmp_dir, error) from error
            raise
        old = self.final_dir.with_name(f".{self.final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.tmp_dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)

    def _discard(self) -> None:
        """Close the writer (ignoring a second failure) and remove the temp folder."""
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def staged_sources(workdir: Path) -> list[str]:
    """Names of the sources currently staged in `workdir`, sorted."""
    root = staging_dir(workdir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_labeled(workdir: Path, labels: Iterable[str], columns: list[str]) -> pa.Table:
    """The staged rows of the named sources only, plus a `label` column naming the source.

    `label` is the configured source name (a row's `source` is what its connector wrote);
    other sources staged earlier in the same workdir are left out.
    """
    return _read_sources(workdir, labels, columns, with_label=True)


def read_staging(workdir: Path, columns: list[str] | None = None) -> pa.Table:
    """Read every staged source into one table in `STAGING_SCHEMA` (optionally some columns)."""
    return _read_sources(
        workdir, staged_sources(workdir), columns or STAGING_SCHEMA.names, with_label=False
    )


def _read_sources(
    workdir: Path, labels: Iterable[str], columns: list[str], *, with_label: bool
) -> pa.Table:
    schema = pa.schema([STAGING_SCHEMA.field(c) for c in columns])
    if with_label:
        schema = schema.append(pa.field("label", pa.string()))
    from pipeline.core.staging_buckets import all_files

    parts = []
    for label in labels:
        files = all_files(source_dir(workdir, label))
        if not files:
            continue
        part = read_parquet_files(files, columns)
        if with_label:
            part = part.append_column("label", pa.repeat(label, part.num_rows))
        parts.append(part)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts).cast(schema)


def read_parquet_files(files: Iterable[Path], columns: list[str]) -> pa.Table:
    """`columns` of staged Parquet files, in `STAGING_SCHEMA` types (a column a file lacks,
    staged by an older version, is null).

    Read file by file with `pyarrow.parquet` rather than as a `pyarrow.dataset`: importing
    the dataset module alone adds about 50 MB to every process that reads staging (chunk
    and the dry run, and each of their worker processes), for no gain on a handful of files.
    """
    schema = pa.schema([STAGING_SCHEMA.field(c) for c in columns])
    parts = []
    for path in files:
        with _staged_file(path):
            parquet = pq.ParquetFile(path)
            present = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in columns if c in present], use_threads=False)
        for name in columns:
            if name not in present:
                table = table.append_column(
                    name, pa.nulls(table.num_rows, STAGING_SCHEMA.field(name).type)
                )
        parts.append(table.select(columns).cast(schema))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)


def staged_row_count(workdir: Path, labels: Iterable[str]) -> int:
    """Rows staged by the named sources, from the Parquet footers (nothing is read)."""
    from pipeline.core.staging_buckets import all_files

    total = 0
    for label in labels:
        for path in all_files(source_dir(workdir, label)):
            with _staged_file(path):
                total += pq.ParquetFile(path).metadata.num_rows
    return total


@contextlib.contextmanager
def _staged_file(path: Path) -> Iterator[None]:
    """Reading a staged file: a damaged one is an `InputError` naming it (a full disk is
    left as it is)."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise
        reason = " ".join(str(exc).split())
        raise InputError(
            f"{path}: staged file is damaged ({reason}); stage the source again with "
            "`memos-etl extract`"
        ) from exc


def staged_bucket_count(workdir: Path, labels: Iterable[str]) -> int:
    """The bucket count to read the named sources with: the largest of theirs (all are
    powers of two, so each source's bucket of a conversation is this count's modulo its own)."""
    from pipeline.core.staging_buckets import read_layout

    return max((read_layout(source_dir(workdir, label)).buckets for label in labels), default=1)


def read_labeled_bucket(
    workdir: Path, labels: Iterable[str], columns: list[str], bucket: int, buckets: int
) -> pa.Table:
    """`read_labeled` restricted to the conversations of bucket `bucket` of `buckets`.

    A source staged with fewer buckets (or unbucketed, by an older version) is read from its
    bucket `bucket % own count` and filtered by the rule, so the result is the same whatever
    counts the sources were staged with.
    """
    import pyarrow.compute as pc

    from pipeline.core.buckets import bucket_indices
    from pipeline.core.staging_buckets import read_layout

    schema = pa.schema([STAGING_SCHEMA.field(c) for c in columns]).append(
        pa.field("label", pa.string())
    )
    wanted = list(dict.fromkeys([*columns, "conversation_id"]))
    parts = []
    for label in labels:
        layout = read_layout(source_dir(workdir, label))
        files = layout.files_for(bucket, buckets)
        if not files:
            continue
        part = read_parquet_files(files, wanted)
        if layout.buckets < buckets:
            mine = bucket_indices(part.column("conversation_id"), buckets)
            part = part.filter(pc.equal(mine, bucket))
        part = part.select(columns)
        part = part.append_column("label", pa.repeat(label, part.num_rows))
        parts.append(part)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts).cast(schema)
