"""Benchmark: Telegram extract of a synthetic 1M-message account export.

    python tests/bench/bench_telegram.py [--messages 1000000] [--chats 200] [--dir DIR] [--runs 1]

Generates `result.json` (tests/bench/gen_telegram.py, ~560 MB for 1M messages) into
`--dir` (default: a temporary folder, removed afterwards; never the repository), then
runs `pipeline.extract.extract_source` end to end (stream, normalize, count, write the
Parquet staging table) in a child process per run, so each run reports its own peak
memory (ru_maxrss) and the bench samples the summed RSS of the extract and its worker
processes. Printed per run: records read per second of wall time and of CPU
time, staged messages, and peak RSS. The machine is shared: compare runs of one session.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_telegram import write_export  # noqa: E402

CHILD = """
import resource, sys, time, orjson
from pathlib import Path
from pipeline.core.config import SourceConfig
from pipeline.extract import extract_source
import pyarrow.parquet  # imports are not part of the measured time
src = SourceConfig(kind=sys.argv[1], path=Path(sys.argv[2]), user_id="owner")
wall, cpu = time.perf_counter(), time.process_time()
stats = extract_source(src, Path(sys.argv[3]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(orjson.dumps({"wall": wall, "cpu": cpu + kids.ru_utime + kids.ru_stime,
                    "read": stats.read, "staged": stats.staged, "balanced": stats.balanced,
                    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "rss_children_mb": kids.ru_maxrss / 1024}).decode())
"""


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants now, in MB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        todo.extend(int(k) for k in kids)
    return total / 1024


def run_child(kind: str, export: Path, workdir: Path) -> dict[str, float]:
    """One extract in a fresh interpreter: its figures as a dict, plus the peak of the
    summed RSS of it and its worker processes, sampled every 20 ms."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(export), str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.02)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"extract failed ({proc.returncode})")
    result: dict[str, float] = orjson.loads(out.strip().splitlines()[-1])
    result["tree_rss_mb"] = peak
    return result


def report(kind: str, figures: dict[str, float]) -> str:
    return (
        f"{kind}: read {figures['read']:,.0f} (staged {figures['staged']:,.0f}, balanced "
        f"{figures['balanced']}) in {figures['wall']:.2f} s wall / {figures['cpu']:.2f} s CPU "
        f"= {figures['read'] / figures['wall']:,.0f} msg/s wall, "
        f"{figures['read'] / figures['cpu']:,.0f} msg/s CPU; peak RSS "
        f"{figures['rss_mb']:.0f} MB (largest worker {figures['rss_children_mb']:.0f} MB); peak "
        f"RSS of all processes together {figures['tree_rss_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-telegram-") as tmp:
        base = args.dir or Path(tmp)
        export = base / "export"
        if not (export / "result.json").exists():
            write_export(export, args.messages, args.chats)
        size = (export / "result.json").stat().st_size
        print(f"export: {export} ({size / 1e6:.0f} MB)")  # noqa: T201
        for n in range(args.runs):
            figures = run_child("telegram", export, base / f"work{n}")
            print(report("telegram", figures))  # noqa: T201


if __name__ == "__main__":
    main()
