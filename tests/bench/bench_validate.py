"""validate vs extract + chunk alone, side by side on the same export.

    python tests/bench/bench_validate.py --generate 1000000            # synthetic CSV
    python tests/bench/bench_validate.py --kind slack --path export.zip # any connector

Each round runs extract + chunk (what `run` does before loading) and `validate` (extract +
chunk + every check + report.json + report.html) in fresh workdirs, alternating which
goes first; prints wall and CPU time of each, the per-stage split of validate, and the
ratios validate / (extract + chunk) of the medians. CPU time (all threads of this process
plus its finished worker processes) is the steadier figure on a shared machine; use
--rounds 3 for wall time.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.core.config import Config
from pipeline.dryrun.validate import validate
from pipeline.extract import extract_source

WORDS = [
    "the", "release", "we", "shipped", "today", "fixes", "login", "bugs", "and", "deploy",
    "config", "yaml", "parser", "timeout", "retry", "customer", "invoice", "refund", "thanks",
    "please", "check", "order", "tracking", "性能", "提升", "😀",
]  # fmt: skip


def generate_csv(path: Path, n: int, seed: int = 7) -> None:
    """A synthetic CSV export of `n` rows over one year: ~n/20 conversations, ~n/500 users,
    1% of messages with an e-mail address."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    users = max(1, n // 500)
    convs = max(1, n // 20)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["conversation_id", "user_id", "role", "content", "timestamp"])
        for i in range(n):
            conv = rng.randrange(convs)
            words = rng.choices(WORDS, k=rng.randrange(3, 60))
            if rng.random() < 0.01:
                words.append(f"user{i}@example.com")
            ts = start + timedelta(seconds=i * 365 * 86400 // n + rng.randrange(60))
            out.writerow(
                [
                    f"conv-{conv}",
                    f"user-{conv % users}",
                    rng.choice(("customer", "agent")),
                    " ".join(words),
                    ts.isoformat(),
                ]
            )


def _config(kind: str, path: Path, workdir: Path) -> Config:
    options: dict[str, Any] = {}
    return Config.model_validate(
        {
            "workdir": str(workdir),
            "user_id": "bench",
            "sources": [{"kind": kind, "name": "bench", "path": str(path), "options": options}],
        }
    )


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of `fn()` (CPU includes worker processes a connector used)."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, _cpu_seconds() - c0, result


def baseline(cfg: Config) -> dict[str, float]:
    """extract + chunk, as `memos-etl run` does before loading."""
    sources = cfg.sources
    t_x, c_x, _ = _timed(
        lambda: [extract_source(s, cfg.workdir, default_user_id=cfg.user_id) for s in sources]
    )
    limits = ChunkLimits(cfg.chunk.max_tokens, cfg.chunk.max_messages)
    t_c, c_c, _ = _timed(lambda: chunk_workdir(cfg.workdir, limits))
    return {"extract": t_x, "chunk": t_c, "total": t_x + t_c, "cpu": c_x + c_c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="csv", help="connector of --path (csv, slack, ...)")
    parser.add_argument("--path", type=Path, help="the export to read")
    parser.add_argument(
        "--generate", type=int, metavar="N",
        help="write a synthetic CSV of N rows and use it (--kind csv)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("pipeline.dryrun.validate").setLevel(logging.INFO)  # per-stage timings
    tmp = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    try:
        path = args.path
        if args.generate:
            path = tmp / "synthetic.csv"
            t, _, _ = _timed(lambda: generate_csv(path, args.generate))
            size = path.stat().st_size / 1e6
            print(f"generated {args.generate:,} rows in {t:.1f}s ({size:.0f} MB)")
        if path is None:
            parser.error("give --path or --generate")
        wall: dict[str, list[float]] = {"baseline": [], "validate": []}
        cpu: dict[str, list[float]] = {"baseline": [], "validate": []}
        for r in range(args.rounds):
            order = ["baseline", "validate"] if r % 2 == 0 else ["validate", "baseline"]
            for which in order:
                workdir = tmp / f"{which}-{r}"
                cfg = _config(args.kind, path, workdir)
                if which == "baseline":
                    parts = baseline(cfg)
                    wall[which].append(parts["total"])
                    cpu[which].append(parts["cpu"])
                    print(
                        f"round {r}: extract+chunk {parts['total']:.1f}s wall, "
                        f"{parts['cpu']:.1f}s cpu (extract {parts['extract']:.1f}s, "
                        f"chunk {parts['chunk']:.1f}s)"
                    )
                else:
                    t, c, report = _timed(lambda cfg=cfg: validate(cfg))
                    wall[which].append(t)
                    cpu[which].append(c)
                    totals = report.data["totals"]
                    print(
                        f"round {r}: validate {t:.1f}s wall, {c:.1f}s cpu "
                        f"({totals['staged']:,} staged, {totals['batches']:,} batches, "
                        f"exit {report.exit_code})"
                    )
                shutil.rmtree(workdir, ignore_errors=True)
        for label, figures in (("wall", wall), ("cpu", cpu)):
            b, v = statistics.median(figures["baseline"]), statistics.median(figures["validate"])
            print(
                f"median {label}: extract+chunk {b:.1f}s, validate {v:.1f}s, "
                f"ratio {v / b:.2f}x (target <= 1.5x)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
