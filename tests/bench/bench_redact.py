"""Chunk with the default redaction policy vs chunk without redaction, side by side.

    python tests/bench/bench_redact.py --kind slack --path /tmp/slack-1m --rounds 3
    python tests/bench/bench_redact.py --messages 200000      # synthetic staging table

The export is extracted once into a temporary workdir; then `chunk_workdir` runs on the
same staging table with `Policy.off()` and with the default policy (every secret kind
masked), alternating which goes first. Prints wall and CPU seconds of each run, the
medians and their ratio (target: default redaction within 1.2x of no redaction), and the
time of the redaction scan alone over the content column, as staged and with a secret
added to a share of the messages (`--secret-share`, default 1%).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.core.config import Config
from pipeline.core.redact import DEFAULT_POLICY, Policy, redact
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, t0 = _cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, _cpu_seconds() - c0, result


def _stage(args: argparse.Namespace, workdir: Path) -> None:
    if args.path is None:
        from bench_chunk import synthetic  # tests/bench is on sys.path when run as a script

        synthetic(workdir, args.messages)
        return
    cfg = Config.model_validate(
        {
            "workdir": str(workdir),
            "user_id": "bench",
            "sources": [{"kind": args.kind, "name": "bench", "path": str(args.path)}],
        }
    )
    for source in cfg.sources:
        extract_source(source, workdir, default_user_id=cfg.user_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="slack", help="connector of --path")
    parser.add_argument("--path", type=Path, help="the export to read")
    parser.add_argument("--messages", type=int, default=200_000, help="synthetic rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--secret-share", type=float, default=0.01,
        help="share of messages given a secret for the scan-with-matches figure",
    )  # fmt: skip
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-redact-"))
    try:
        t, _, _ = _timed(lambda: _stage(args, tmp))
        content = read_staging(tmp, columns=["content"]).column("content")
        print(f"staged {len(content):,} messages in {t:.1f}s")
        t, c, scan = _timed(lambda: redact(content, DEFAULT_POLICY))
        masked = scan.masked_counts()
        print(
            f"redaction scan alone: {t:.2f}s wall, {c:.2f}s cpu; "
            f"{len(scan.masked_by_row):,} messages masked {dict(sorted(masked.items()))}"
        )
        step = max(1, round(1 / args.secret_share)) if args.secret_share > 0 else 0
        if step:
            texts = content.to_pylist()
            for i in range(0, len(texts), step):
                texts[i] += f" key AKIA{i % 10**16:016d} and sk-{'x' * 24}{i}"
            salted = pa.array(texts, pa.large_string())
            t, c, scan = _timed(lambda: redact(salted, DEFAULT_POLICY))
            print(
                f"redaction scan with a secret in 1 of {step} messages: {t:.2f}s wall, "
                f"{c:.2f}s cpu; {len(scan.masked_by_row):,} messages masked "
                f"{dict(sorted(scan.masked_counts().items()))}"
            )
        policies = {"off": Policy.off(), "default": DEFAULT_POLICY}
        wall: dict[str, list[float]] = {"off": [], "default": []}
        cpu: dict[str, list[float]] = {"off": [], "default": []}
        limits = ChunkLimits()
        for r in range(args.rounds):
            order = ["off", "default"] if r % 2 == 0 else ["default", "off"]
            for which in order:
                t, c, stats = _timed(
                    lambda which=which: chunk_workdir(tmp, limits, policy=policies[which])
                )
                wall[which].append(t)
                cpu[which].append(c)
                print(
                    f"round {r}: chunk, redaction {which:<7} {t:6.1f}s wall, {c:6.1f}s cpu "
                    f"({stats.batches:,} batches, {stats.masked_messages:,} messages masked)"
                )
        for label, figures in (("wall", wall), ("cpu", cpu)):
            off, on = statistics.median(figures["off"]), statistics.median(figures["default"])
            print(
                f"median {label}: no redaction {off:.1f}s, default redaction {on:.1f}s, "
                f"ratio {on / off:.3f}x (target <= 1.2x)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
