"""Collect staged rows column by column and hand them out as `MessageTable` events.

Building one `Message` dataclass and one `datetime` per row costs more than parsing the
JSON it came from; bulk connectors append plain values here instead (times as epoch
microseconds) and yield a table every `ROWS_PER_TABLE` rows.
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


class RowBuffer:
    """Column lists in `STAGING_SCHEMA` order; `created_at` holds epoch microseconds."""

    def __init__(self, rows_per_table: int = ROWS_PER_TABLE) -> None:
        self.rows_per_table = rows_per_table
        self._cols: dict[str, list[Any]] = {c: [] for c in _COLUMNS}

    def __len__(self) -> int:
        return len(self._cols["message_id"])

    def append(
        self,
        *,
        source: str,
        source_file: str,
        source_position: str,
        message_id: str,
        conversation_id: str,
        user_id: str,
        role: str,
        content: str,
        created_us: int | None,
        seq: int,
        metadata: str | None,
        author_id: str | None = None,
        author_name: str | None = None,
    ) -> None:
        """Add one row (same fields as `pipeline.models.Message`)."""
        c = self._cols
        c["source"].append(source)
        c["source_file"].append(source_file)
        c["source_position"].append(source_position)
        c["message_id"].append(message_id)
        c["conversation_id"].append(conversation_id)
        c["user_id"].append(user_id)
        c["role"].append(role)
        c["author_id"].append(author_id)
        c["author_name"].append(author_name)
        c["content"].append(content)
        c["created_at"].append(created_us)
        c["seq"].append(seq)
        c["metadata"].append(metadata)

    @property
    def full(self) -> bool:
        """True when a table should be handed out now."""
        return len(self) >= self.rows_per_table

    def take(self) -> MessageTable | None:
        """The buffered rows as one table (None when empty); the buffer starts over."""
        if not len(self):
            return None
        cols, self._cols = self._cols, {c: [] for c in _COLUMNS}
        try:
            table = pa.Table.from_pydict(cols, schema=STAGING_SCHEMA)
        except UnicodeEncodeError:
            cleaned = {k: [_clean(v) for v in vals] for k, vals in cols.items()}
            table = pa.Table.from_pydict(cleaned, schema=STAGING_SCHEMA)
        return MessageTable(table)
