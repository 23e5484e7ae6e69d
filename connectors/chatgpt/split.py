"""Read one ChatGPT export on two CPU cores, staging exactly what one process stages.

The conversations are split in two at a byte offset (or, for a sharded export, at a
file boundary): this process reads the first share while a helper process
(`connectors.chatgpt.helper`) reads the second and writes its rows as one Parquet part (into
the staging folder when the extract gives one, see `WRITES_PARTS`). Each process parses
only its own share, so the two together do little more work than one, and nothing is
copied between them.

Rows name their place (`conversations[N]`), so the helper must know how many
conversations precede its share: it counts them first (`count_elements`, a skim of the
bytes with no Python objects, about a tenth of the time parsing them takes). This
process checks that count when it reaches the split; should it be off, the helper's rows
are renumbered on their way through this process instead of adopted as they are.

The split point is a guess (`find_element_start`: a `}, {` whose object parses as a
conversation), so it is verified: this process reads from the start of the file and must
find a conversation beginning exactly there. The helper's work is used only when

- the split was confirmed (else the bytes were inside a conversation);
- the helper finished (a failed helper is logged, not fatal);
- no conversation id occurs in both shares (else the later copy is a duplicate, which
  only a single reader can tell).

Otherwise the helper's part is deleted and this process reads the helper's share itself,
so the outcome is always that of a one-process read: the same rows in the same order
(the helper's part sorts after this process's rows), the same skip counts, the same
quarantine entries, and a damaged file still stops at its first bad byte with every
earlier conversation staged.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.chatgpt.helper import Helper
from connectors.chatgpt.read import Context, Options, asset_names, consume, read_file
from connectors.export_files import ExportFiles, stream_array_file
from connectors.json_stream import StreamedElement, count_elements, find_element_start
from pipeline.core.models import Event, MessageTable, Quarantined, Skipped, StagedPart
from pipeline.core.staging import PART_ROW_GROUP_ROWS, PartWriter, part_path

log = logging.getLogger(__name__)

MAIN_SHARE = 0.58
"""Share of the bytes read by this process. Each process writes its own rows; the helper
also pays for starting Python and counting the conversations before its share (0.55,
0.58 and 0.61 side by side on the 685 MB bench export: 0.58 left neither process
waiting for the other)."""


@dataclass(frozen=True)
class Split:
    """Where the helper's share begins: `files[file]` from byte `offset`. Offset 0 means
    the whole file; a non-zero offset is only used when there is a single file."""

    file: int
    offset: int


def choose_split(export: ExportFiles, files: list[str], share: float = MAIN_SHARE) -> Split | None:
    """A split point about `share` of the way through the conversation bytes, or None when
    there is none worth having (one conversation, a single file inside a ZIP...)."""
    if len(files) == 1:
        name = files[0]
        if export.zipped or name not in export.names:
            return None
        with export.open(name) as fh:
            offset = find_element_start(fh, int(export.size(name) * share), _conversation_like)
        return None if offset is None else Split(0, offset)
    sizes = [export.size(name) for name in files]
    target = sum(sizes) * share
    before = [sum(sizes[:k]) for k in range(1, len(files))]
    best = min(range(len(before)), key=lambda i: abs(before[i] - target))
    return Split(best + 1, 0)


def _conversation_like(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("mapping"), dict)


_PART = "part.parquet"


@dataclass(frozen=True)
class _Job:
    """What the helper needs to read its share of the same export (picklable)."""

    path: Path
    options: dict[str, Any]
    user_id: str
    files: list[str]
    split: Split
    part: str | None
    """Where the helper writes its rows: a part in the staging folder, or None for a file
    in its own temporary folder."""


@dataclass(frozen=True)
class _Result:
    """The helper's events other than rows, and the part holding its rows. Conversation
    numbers in the split file assume `first` conversations before the split (the
    helper's own count, which this process confirms or corrects)."""

    skipped: dict[str, int]
    quarantined: list[tuple[str, str, str, str]]
    seen: set[str]
    first: int
    part: StagedPart | None


def _helper_work(job: _Job, folder: Path) -> _Result:
    """Helper side: read `files[split.file]` from `split.offset`, then the later files,
    into one Parquet part."""
    pa.set_memory_pool(pa.system_memory_pool())  # hands freed memory back (this process only)
    options = Options.model_validate(job.options)
    skipped: Counter[str] = Counter()
    quarantined: list[tuple[str, str, str, str]] = []
    writer = PartWriter(Path(job.part) if job.part is not None else folder / _PART)
    with ExportFiles(job.path, limits=options.limits()) as export:
        first = _conversations_before(export, job.files[job.split.file], job.split.offset)
        ctx = Context(user_id=job.user_id, options=options, asset_names=asset_names(export))
        for i, name in enumerate(job.files[job.split.file :]):
            start, index = (job.split.offset, first) if i == 0 else (0, 0)
            for event in read_file(export, name, ctx, start=start, index=index):
                if isinstance(event, MessageTable):
                    _add(writer, event.table)
                elif isinstance(event, Skipped):
                    skipped[event.reason] += event.count
                elif isinstance(event, Quarantined):
                    quarantined.append(
                        (event.source_file, event.position, event.reason, event.excerpt)
                    )
        table = ctx.rows.take()
        if table is not None:
            _add(writer, table.table)
    return _Result(dict(skipped), quarantined, ctx.seen, first, writer.close())


def _conversations_before(export: ExportFiles, name: str, offset: int) -> int:
    """The number of the conversation at `offset` in `name` (0 when the count fails:
    this process then renumbers the helper's rows)."""
    if not offset:
        return 0
    with export.open(name) as fh:
        found = count_elements(fh, offset)
    return 0 if found is None else found


def _add(writer: PartWriter, table: pa.Table) -> None:
    """Queue a staged table in the helper's part."""
    for batch in table.to_batches():
        writer.add(batch)


def read_in_two(
    export: ExportFiles,
    files: list[str],
    ctx: Context,
    split: Split | None = None,
    parts_dir: Path | None = None,
) -> Iterator[Event]:
    """Events of every conversation file, read by this process and a helper (see the
    module docstring); `split` defaults to `choose_split`. With `parts_dir`, the helper's
    rows come as one `StagedPart` written there, else as `MessageTable`s."""
    split = split or choose_split(export, files)
    if split is None:
        log.info("no split point in %s: reading it in one process", export.path)
        for name in files:
            yield from read_file(export, name, ctx)
    else:
        part = part_path(parts_dir, 0) if parts_dir is not None else None
        adopted = False
        try:
            adopted = yield from _read_split(export, files, ctx, split, part)
        finally:  # a part not handed over (helper failed, or renumbered) must not stay
            if part is not None and not adopted:
                part.unlink(missing_ok=True)
    table = ctx.rows.take()
    if table is not None:
        yield table


def _read_split(
    export: ExportFiles, files: list[str], ctx: Context, split: Split, part: Path | None
) -> Generator[Event, None, bool]:
    """Events of the split read; True when the helper's part was handed over as is."""
    job = _Job(
        export.path,
        ctx.options.model_dump(),
        ctx.user_id,
        files,
        split,
        None if part is None else str(part),
    )
    with Helper(_helper_work, job) as helper:
        for name in files[: split.file]:
            yield from read_file(export, name, ctx)
        held: StreamedElement | None = None
        rest: Iterator[StreamedElement | Quarantined] = iter(())
        label = export.label(files[split.file])
        if split.offset:
            rest = stream_array_file(export, files[split.file], "chatgpt")
            held = yield from consume(rest, ctx, label, stop=split.offset)
            confirmed = held is not None and held.offset == split.offset
        else:
            confirmed = True
        result: _Result | None = helper.result() if confirmed else None
        if result is not None and result.seen.isdisjoint(ctx.seen):
            table = ctx.rows.take()
            if table is not None:
                yield table
            first = held.index if held is not None else 0
            return (yield from _helper_events(result, first - result.first, label, part))
        if not confirmed:
            log.info("split point of %s not confirmed: reading on in one process", label)
        elif result is not None:
            log.info("a conversation occurs on both sides of the split: reading on in one process")
        helper.stop()
        if split.offset:
            if held is not None:
                yield from consume(chain([held], rest), ctx, label)
            later = files[split.file + 1 :]
        else:
            later = files[split.file :]
        for name in later:
            yield from read_file(export, name, ctx)
    return False


def _helper_events(
    result: _Result, shift: int, label: str, part: Path | None
) -> Generator[Event, None, bool]:
    """The helper's outcome as events, its conversation numbers in `label` moved by
    `shift` (0 unless its count was off): its part as is when it was written to `part`
    and needs no renumbering (then True), else its rows as tables."""
    adopted = part is not None and result.part is not None and not shift
    if result.part is not None:
        if adopted:
            yield result.part
        else:
            if shift:
                log.info("the helper miscounted the conversations before its share: renumbering")
            with pq.ParquetFile(result.part.path) as parquet:
                for batch in parquet.iter_batches(batch_size=PART_ROW_GROUP_ROWS):
                    table = pa.Table.from_batches([batch])
                    yield MessageTable(_shift_positions(table, shift))
    for reason, count in result.skipped.items():
        yield Skipped(reason, count)
    for source_file, position, reason, excerpt in result.quarantined:
        if source_file == label:
            position = _shift_position(position, shift)
        yield Quarantined(source_file, position, reason, excerpt)
    return adopted


_POSITION = re.compile(r"(conversations\[|conversation #)(\d+)")


def _shift_position(position: str, by: int) -> str:
    """A helper's quarantine position with its conversation number made global."""
    return _POSITION.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + by}", position, count=1)


def _shift_positions(table: pa.Table, by: int) -> pa.Table:
    """The helper's rows with `conversations[N]` in `source_position` made global
    (vectorized: the helper cannot know N before this process has read its share)."""
    if not by or table.num_rows == 0:
        return table
    parts = pc.extract_regex(
        table.column("source_position"), r"(?s)^conversations\[(?P<n>\d+)\](?P<rest>.*)$"
    )
    number = pc.add(pc.cast(pc.struct_field(parts, "n"), pa.int64()), by)
    position = pc.binary_join_element_wise(
        "conversations[", pc.cast(number, pa.string()), "]", pc.struct_field(parts, "rest"), ""
    )
    index = table.schema.get_field_index("source_position")
    return table.set_column(index, table.schema.field(index), position)
