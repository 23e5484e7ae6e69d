"""The input-limit options of connectors that read through `connectors.export_files`.

Kept apart from the reader so worker processes, which import the reader, do not load
pydantic. Defaults and what each limit bounds: docs/input-limits.md.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from connectors.export_files import Limits


class InputLimitOptions(BaseModel):
    """The limit options of connectors that read through `ExportFiles` (mixed into their
    `Options`; see docs/input-limits.md)."""

    max_member_bytes: int = Field(default=Limits.max_member_bytes, ge=1)
    """Largest uncompressed ZIP member accepted."""
    max_total_bytes: int = Field(default=Limits.max_total_bytes, ge=1)
    """Largest total uncompressed size of a ZIP."""
    max_compression_ratio: float = Field(default=Limits.max_ratio, gt=1)
    """Largest compression ratio of a member over 1 MiB, and of a whole ZIP over 16 MiB."""
    max_members: int = Field(default=Limits.max_members, ge=1)
    """Most entries a ZIP may list."""
    max_record_bytes: int = Field(default=Limits.max_element_bytes, ge=1024)
    """Largest single record (a conversation) of a streamed JSON file; a larger one ends
    that file's read with a quarantine entry. Parsing takes up to ~18x this in memory."""

    def limits(self) -> Limits:
        """These options as `Limits`."""
        return Limits(
            max_member_bytes=self.max_member_bytes,
            max_total_bytes=self.max_total_bytes,
            max_ratio=self.max_compression_ratio,
            max_members=self.max_members,
            max_element_bytes=self.max_record_bytes,
        )
