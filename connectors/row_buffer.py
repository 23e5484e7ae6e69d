"""Collect staged rows column by column and hand them out as `MessageTable` events.

Building one `Message` dataclass and one `datetime` per row costs more than parsing the
JSON it came from; bulk connectors append plain values to one list per column instead
(times as epoch microseconds) and yield a table every `ROWS_PER_TABLE` rows. Columns, not
row tuples: turning rows into columns (`zip(*rows)`) cost as much as building the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pyarrow as pa

from pipeline.core.models import STAGING_SCHEMA, Event, MessageTable, Quarantined, Skipped
from pipeline.core.staging import replace_surrogates, table_from_columns

ROWS_PER_TABLE = 4_096
"""Rows per table. Chat messages run to kilobytes; 16,384 rows held ~100 MB more of Arrow
data per process than 4,096 for the same speed (685 MB ChatGPT export)."""
_COLUMNS = STAGING_SCHEMA.names


def _table(columns: tuple[list[Any], ...]) -> pa.Table:
    return table_from_columns(dict(zip(STAGING_SCHEMA.names, columns, strict=True)))


Row = tuple[
    str, str, str, str, str, str, str, str | None, str | None, str, int | None, int, str | None
]
"""One row in `STAGING_SCHEMA` column order; `created_at` as epoch microseconds."""

Appenders = tuple[Callable[[Any], None], ...]
"""The `append` methods of the column lists, in `STAGING_SCHEMA` order."""


class RowBuffer:
    """One list per `STAGING_SCHEMA` column; `created_at` holds epoch microseconds.

    Hot loops append through `appenders()` (bound methods, valid for the buffer's whole
    life: `take` empties the lists in place); `append` adds a whole `Row`.
    """

    def __init__(self, rows_per_table: int = ROWS_PER_TABLE) -> None:
        self.rows_per_table = rows_per_table
        self.columns: tuple[list[Any], ...] = tuple([] for _ in _COLUMNS)
        self._key = self.columns[_COLUMNS.index("message_id")]

    def __len__(self) -> int:
        return len(self._key)

    @property
    def full(self) -> bool:
        """True when a table should be handed out now."""
        return len(self._key) >= self.rows_per_table

    def appenders(self) -> Appenders:
        """The columns' `append` methods, in schema order (one call each per row)."""
        return tuple(column.append for column in self.columns)

    def append(self, row: Row) -> None:
        """Add one row given in schema order."""
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)

    def truncate(self, rows: int) -> None:
        """Drop every row after the first `rows` (undo a record that failed half-way)."""
        for column in self.columns:
            del column[rows:]

    def take(self) -> MessageTable | None:
        """The buffered rows as one table (None when empty); the buffer starts over."""
        if not self._key:
            return None
        try:
            table = _table(self.columns)
        except UnicodeEncodeError:
            table = _table(
                tuple([replace_surrogates(v) for v in values] for values in self.columns)
            )
        for column in self.columns:
            column.clear()
        return MessageTable(table)


def guarded(
    produce: Callable[[], Iterable[Event]],
    rows: RowBuffer,
    *,
    kind: str,
    source_file: str,
    index: int,
    count: int,
    unit: str,
) -> list[Event]:
    """The events `produce` yields for one conversation, or, when a value in it cannot be
    stored (nested deeper than the JSON writer allows, an integer beyond 64 bits in
    metadata), one quarantine entry for it plus its other `count - 1` records as skipped:
    the rows it had added are taken back first, so counts stay exact."""
    mark = len(rows)
    try:
        return list(produce())
    except (orjson.JSONEncodeError, RecursionError) as exc:
        rows.truncate(mark)
        events: list[Event] = [
            Quarantined(
                source_file,
                f"conversations[{index}]",
                f"{kind}:unusable_conversation: a value cannot be stored ({exc}); "
                "conversation not loaded",
                f"{count} {unit}",
            )
        ]
        if count > 1:
            events.append(Skipped(f"{kind}:quarantined_conversation", count - 1))
        return events
