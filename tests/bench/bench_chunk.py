"""Chunker throughput on a synthetic staging table.

    python tests/bench/bench_chunk.py --messages 200000

Prints messages/s for `chunk_workdir` and the share spent counting tokens.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.core.models import Message
from pipeline.core.staging import StagingWriter
from pipeline.core.tokens import count_tokens

WORDS = [
    "the",
    "release",
    "we",
    "shipped",
    "today",
    "fixes",
    "login",
    "bugs",
    "and",
    "性能",
    "提升",
    "明显",
    "😀",
    "deploy",
    "config",
    "yaml",
    "parser",
    "timeout",
    "retry",
    "customer",
    "invoice",
    "refund",
    "thanks",
]


def synthetic(workdir: Path, n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    contents = []
    with StagingWriter(workdir, "bench") as writer:
        for i in range(n):
            conv = rng.randrange(max(1, n // 40))
            text = " ".join(rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.2) * 8)))
            contents.append(text)
            writer.write(
                Message(
                    source="bench",
                    source_file="gen",
                    source_position=str(i),
                    message_id=f"m{i}",
                    conversation_id=f"c{conv}",
                    user_id=f"u{conv % 500}",
                    role="user" if i % 2 else "assistant",
                    content=text,
                    seq=i,
                    created_at=t0 + timedelta(seconds=i),
                )
            )
    return contents


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        contents = synthetic(workdir, args.messages)
        start = time.perf_counter()
        for text in contents:
            count_tokens(text)
        tokens_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = chunk_workdir(workdir, ChunkLimits())
        chunk_s = time.perf_counter() - start
    print(f"messages: {args.messages:,}  batches: {stats.batches:,}")
    print(f"chunk: {chunk_s:.2f} s = {args.messages / chunk_s:,.0f} messages/s")
    print(f"token counting alone: {tokens_s:.2f} s ({tokens_s / chunk_s:.0%} of chunk)")


if __name__ == "__main__":
    main()
