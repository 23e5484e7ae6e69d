"""Which bucket a conversation belongs to: the one rule shared by staging, chunk and the engines.

Work is split by conversation, never inside one: a conversation's messages must be chunked
together (batches never mix conversations and keep their order) and delivered in order. A
stable hash of `conversation_id` modulo the bucket count gives every conversation exactly one
bucket, the same on every machine and in every run (Python's `hash()` is salted per process,
so it cannot be used). Only the distinct conversation ids are hashed, so assigning the rows of
a large table costs one dictionary encoding and a few thousand digests.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

TARGET_BUCKET_BYTES = 64 * 1024 * 1024
"""Input bytes per bucket the bucket count aims at: small enough that one bucket's rows fit
comfortably in memory, large enough that a small export is one bucket."""
MAX_BUCKETS = 1024


def bucket_of(conversation_id: str, buckets: int) -> int:
    """The bucket (0 ≤ b < `buckets`) of one conversation; stable across processes and runs."""
    if buckets < 1:
        raise ValueError("buckets must be positive")
    if buckets == 1:
        return 0
    data = conversation_id.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def bucket_indices(conversation_ids: pa.Array | pa.ChunkedArray, buckets: int) -> pa.Array:
    """`bucket_of` of every row of a `conversation_id` column, as an int32 array.

    Hashes each distinct id once (a table of a million rows has a few thousand conversations).
    """
    if isinstance(conversation_ids, pa.ChunkedArray):
        conversation_ids = conversation_ids.combine_chunks()
    if buckets == 1:
        return pa.array([0] * len(conversation_ids), type=pa.int32())
    encoded = pc.dictionary_encode(conversation_ids)
    per_id = pa.array(
        [bucket_of(str(value), buckets) for value in encoded.dictionary.to_pylist()],
        type=pa.int32(),
    )
    return pc.take(per_id, encoded.indices)


def bucket_count(input_bytes: int, *, target_bytes: int = TARGET_BUCKET_BYTES) -> int:
    """How many buckets an input of `input_bytes` is split into: a power of two, at least 1."""
    wanted = max(1, -(-input_bytes // max(1, target_bytes)))
    count = 1
    while count < wanted and count < MAX_BUCKETS:
        count *= 2
    return count
