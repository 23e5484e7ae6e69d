"""Collect staged rows column by column and hand them out as `MessageTable` events.

Building one `Message` dataclass and one `datetime` per row costs more than parsing the
JSON it came from; bulk connectors append plain tuples to `RowBuffer.rows` instead (times
as epoch microseconds) and yield a table every `ROWS_PER_TABLE` rows.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.models import STAGING_SCHEMA, MessageTable

ROWS_PER_TABLE = 16_384
_COLUMNS = STAGING_SCHEMA.names


def _clean(value: Any) -> Any:
    """Lone surrogates (from broken JSON escapes) cannot be stored as UTF-8: replace them."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


Row = tuple[
    str, str, str, str, str, str, str, str | None, str | None, str, int | None, int, str | None
]
"""One row in `STAGING_SCHEMA` column order; `created_at` as epoch microseconds."""


class RowBuffer:
    """Rows as tuples in `STAGING_SCHEMA` order; `created_at` holds epoch microseconds."""

    def __init__(self, rows_per_table: int = ROWS_PER_TABLE) -> None:
        self.rows_per_table = rows_per_table
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def full(self) -> bool:
        """True when a table should be handed out now."""
        return len(self.rows) >= self.rows_per_table

    def take(self) -> MessageTable | None:
        """The buffered rows as one table (None when empty); the buffer starts over."""
        if not self.rows:
            return None
        rows, self.rows = self.rows, []
        cols = dict(zip(_COLUMNS, zip(*rows, strict=True), strict=True))
        try:
            table = pa.Table.from_pydict(cols, schema=STAGING_SCHEMA)
        except UnicodeEncodeError:
            cleaned = {k: [_clean(v) for v in vals] for k, vals in cols.items()}
            table = pa.Table.from_pydict(cleaned, schema=STAGING_SCHEMA)
        return MessageTable(table)
