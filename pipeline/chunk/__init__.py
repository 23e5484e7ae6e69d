"""Chunk stage: staged rows -> per-conversation addMessage batches (see `batching`), written
bucket by bucket (see `stage`)."""

from pipeline.chunk.batching import (
    AUTHOR_COLUMNS,
    CHUNK_COLUMNS,
    DROPPED_EXAMPLES,
    ChunkLimits,
    ChunkStats,
    chunk_conversation,
    chunk_table,
)
from pipeline.chunk.stage import chunk_workdir
from pipeline.core.memos_api import api_id

__all__ = [
    "AUTHOR_COLUMNS",
    "CHUNK_COLUMNS",
    "DROPPED_EXAMPLES",
    "ChunkLimits",
    "ChunkStats",
    "api_id",
    "chunk_conversation",
    "chunk_table",
    "chunk_workdir",
]
