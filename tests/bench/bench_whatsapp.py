"""Benchmark: WhatsApp chat export -> staging table, end to end.

    python tests/bench/bench_whatsapp.py --messages 1000000 [--format android|ios|both]
        [--dir /tmp/x] [--zip]

Generates a synthetic export (tests/bench/gen_whatsapp.py: multi-line messages, attachments,
deleted and system lines) into `--dir` (default: a temporary folder, removed afterwards;
never the repository), then runs `pipeline.extract.extract_source` on it in a child
process, which reports its own peak memory (ru_maxrss, and that of its worker processes).
Printed: messages read per second of wall time, and per CPU second of the main process.
`--zip` zips the chat first (`WhatsApp Chat - Bench.zip` with `_chat.txt`); the helper
process then decompresses up to its half.
The machine may be shared and noisy: run it twice and compare within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_whatsapp import write  # noqa: E402

OURS = """
import resource, sys, time, orjson
from pathlib import Path
from pipeline.core.config import SourceConfig
from pipeline.extract import extract_source
import pyarrow.parquet  # imports are not part of the measured time
src = SourceConfig(kind="whatsapp", path=Path(sys.argv[1]), user_id="bench", options={})
wall, cpu = time.perf_counter(), time.process_time()
stats = extract_source(src, Path(sys.argv[2]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(orjson.dumps({"wall": wall, "cpu": cpu, "read": stats.read, "staged": stats.staged,
                    "balanced": stats.balanced, "skipped": stats.skipped,
                    "cpu_workers": kids.ru_utime + kids.ru_stime,
                    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "rss_worker_mb": kids.ru_maxrss / 1024}).decode())
"""


def run(export: Path, work: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", OURS, str(export), str(work)],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE.parents[1],
    )
    result: dict[str, object] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["android", "ios", "both"], default="both")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--zip", action="store_true")
    args = parser.parse_args()
    formats = ["android", "ios"] if args.format == "both" else [args.format]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for fmt in formats:
            folder = root / fmt
            folder.mkdir()
            chat = folder / "WhatsApp Chat with Bench.txt"
            started = time.perf_counter()
            size = write(chat, args.messages, fmt)
            print(
                f"{fmt}: generated {args.messages:,} messages, {size / 1e6:.0f} MB "
                f"in {time.perf_counter() - started:.1f} s"
            )
            export: Path = chat
            if args.zip:
                export = folder / "WhatsApp Chat - Bench.zip"
                with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
                    zf.write(chat, "_chat.txt")
                chat.unlink()
            r = run(export, root / f"work-{fmt}")
            wall, cpu = float(r["wall"]), float(r["cpu"])  # type: ignore[arg-type]
            read = int(r["read"])  # type: ignore[call-overload]
            print(
                f"{fmt}{' (zip)' if args.zip else ''}: read {read:,} staged {r['staged']:,} "
                f"balanced={r['balanced']} in {wall:.2f} s wall = {read / wall:,.0f} msg/s; "
                f"main CPU {cpu:.2f} s ({read / cpu:,.0f} msg/CPU-s), workers CPU "
                f"{float(r['cpu_workers']):.2f} s; peak RSS main {float(r['rss_mb']):.0f} MB, "  # type: ignore[arg-type]
                f"largest worker {float(r['rss_worker_mb']):.0f} MB"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
