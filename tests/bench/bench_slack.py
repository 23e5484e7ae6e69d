"""Benchmark: Slack export -> staging, against DuckDB `read_json` -> Parquet, side by side.

Generates a synthetic export (tests/bench/gen_slack.py) into a temporary folder (or uses
--data), warms the page cache for both contenders, then runs each in a fresh subprocess
while sampling the resident memory of its whole process tree (/proc, every 20 ms):

1. memos-etl: `pipeline.extract.extract_source` with the slack connector (threads,
   names, subtypes, metadata, Parquet staging);
2. the obvious alternative: DuckDB flattening the same day files into one Parquet file,
   `COPY (SELECT * FROM read_json('<export>/*/*.json', format='array', filename=true,
   columns={ts, user, text, thread_ts, subtype, bot_id, username: VARCHAR})) TO
   'out.parquet'` (no threads, names or filtering). Explicit columns are DuckDB's best
   case: with schema auto-detection (`union_by_name=true`) it ran out of memory at 19 GB
   on 100k messages, and without it did not finish in 5 minutes.

    python tests/bench/bench_slack.py --messages 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_slack import generate  # noqa: E402

OURS = """
import json, resource, sys
from pathlib import Path
from pipeline.core.config import SourceConfig
from pipeline.extract import extract_source
options = {"user_id": "bench"}
if sys.argv[3] != "auto":
    options["workers"] = int(sys.argv[3])
src = SourceConfig(kind="slack", path=Path(sys.argv[1]), options=options)
stats = extract_source(src, Path(sys.argv[2]))
own = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
worker_code = sys.modules["connectors.slack.normalize"].__file__ or ""
print(json.dumps({"compiled": not worker_code.endswith(".py"),
                  "read": stats.read, "staged": stats.staged, "skipped": stats.skipped,
                  "quarantined": stats.quarantined, "balanced": stats.balanced,
                  "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                  "cpu_main_s": own.ru_utime + own.ru_stime,
                  "maxrss_self_mb": own.ru_maxrss / 1024,
                  "maxrss_largest_child_mb": kids.ru_maxrss / 1024}))
"""

DUCK = """
import json, resource, sys, duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET memory_limit = '2GB'")
columns = ("{ts: 'VARCHAR', user: 'VARCHAR', text: 'VARCHAR', thread_ts: 'VARCHAR', "
           "subtype: 'VARCHAR', bot_id: 'VARCHAR', username: 'VARCHAR'}")
query = (f"COPY (SELECT * FROM read_json('{sys.argv[1]}/*/*.json', format='array', "
         f"filename=true, columns={columns})) TO '{sys.argv[2]}/out.parquet' (FORMAT parquet)")
con.execute(query)
rows = con.execute(f"SELECT count(*) FROM '{sys.argv[2]}/out.parquet'").fetchone()[0]
own = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "cpu_s": own.ru_utime + own.ru_stime,
                  "maxrss_self_mb": own.ru_maxrss / 1024}))
"""


def _tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
        pids.append(p)
    return pids


def _tree_rss(pids: list[int]) -> int:
    """Summed RSS bytes of `pids`, from `statm` (cheap: no page-table walk)."""
    rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return rss


def _tree_pss(pids: list[int]) -> int:
    """Summed PSS bytes of `pids`, from `smaps_rollup` (walks each process's pages).

    PSS splits pages shared between processes (the libraries every worker maps, counted
    once per process in RSS) between the sharers, so it sums to the tree's real use.
    """
    pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return pss


PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_EVERY = 0.02
PSS_EVERY = 0.25
"""Sampling periods. Reading `smaps_rollup` of every process 50 times a second cost the
measured run about 10% of its wall time on 2 cores, so PSS is sampled less often."""


STALL_NAMES = {"io": "the disk", "cpu": "a CPU"}


def stall_seconds() -> dict[str, float]:
    """Seconds so far in which some task of this machine waited for the disk (`io`) or for
    a CPU (`cpu`): Linux pressure stall information, empty where the kernel has none.

    Page cache the warm-up filled is sometimes dropped before or during a run (seen on
    this VM after other programs wrote gigabytes), and the run then waits on the disk.
    """
    stalls: dict[str, float] = {}
    for kind in ("io", "cpu"):
        try:
            with open(f"/proc/pressure/{kind}") as fh:
                some = fh.readline().split()
            stalls[kind] = int(some[-1].removeprefix("total=")) / 1e6
        except (OSError, ValueError, IndexError):
            continue
    return stalls


def run_measured(
    args: list[str], timeout: float | None = None
) -> tuple[dict[str, object] | None, float, list[int]]:
    """Run a subprocess: its JSON output (None on timeout), wall seconds, peak tree RSS/PSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        next_pss = 0.0
        while not done.is_set():
            pids = _tree_pids(proc.pid)
            peak[0] = max(peak[0], _tree_rss(pids))
            if time.perf_counter() >= next_pss:
                peak[1] = max(peak[1], _tree_pss(pids))
                next_pss = time.perf_counter() + PSS_EVERY
            time.sleep(RSS_EVERY)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        done.set()
        sampler.join()
        return None, time.perf_counter() - start, peak
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed ({proc.returncode}): {' '.join(args[:3])}")
    return json.loads(out.strip().splitlines()[-1]), wall, peak


def warm(folder: Path) -> int:
    """Read every file once so both contenders start from the same warm page cache."""
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as fh:
                total += len(fh.read())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, help="Export folder to use (generated if missing).")
    parser.add_argument("--workers", default="auto", help="Connector workers (default: auto).")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--duckdb-timeout", type=float, default=1800, help="Seconds.")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_slack_"))
    try:
        data = args.data or scratch / "export"
        if not (data / "users.json").exists():
            t = time.perf_counter()
            gen = generate(data, args.messages)
            print(
                f"generated {gen['records']:,} records, {gen['bytes'] / 1e9:.2f} GB JSON in "
                f"{gen['files']:,} day files ({time.perf_counter() - t:.0f} s) at {data}"
            )
        size = warm(data)
        print(f"export: {size / 1e9:.2f} GB on disk, page cache warmed; cores: {os.cpu_count()}")

        stalls_before = stall_seconds()
        result, wall, peak = run_measured(
            [sys.executable, "-c", OURS, str(data), str(scratch / "work"), args.workers]
        )
        stalls = {k: v - stalls_before[k] for k, v in stall_seconds().items()}
        assert result is not None
        ours = result
        read = int(ours["read"])  # type: ignore[call-overload]
        rate = read / wall
        print(
            f"memos-etl: {read:,} records ({ours['staged']:,} staged) in {wall:.2f} s "
            f"= {rate:,.0f} msg/s; CPU {ours['cpu_s']:.1f} s (main {ours['cpu_main_s']:.1f} s); "
            f"peak tree RSS "
            f"{peak[0] / 2**20:.0f} MB, PSS {peak[1] / 2**20:.0f} MB (sampled); "
            f"balanced={ours['balanced']}"
        )
        print(f"  skipped: {ours['skipped']}")
        print(
            "  per-message code: "
            + (
                "compiled (mypyc)"
                if ours["compiled"]
                else "plain Python (not compiled, see setup.py)"
            )
        )
        print(
            f"  getrusage: self max RSS {ours['maxrss_self_mb']:.0f} MB, largest worker "
            f"{ours['maxrss_largest_child_mb']:.0f} MB"
        )
        if stalls:
            print(
                "  machine stalls during the run (PSI 'some'): "
                + ", ".join(f"waiting for {STALL_NAMES[k]} {v:.2f} s" for k, v in stalls.items())
            )
        if not args.skip_duckdb:
            duck_dir = scratch / "duck"
            duck_dir.mkdir()
            duck, dwall, dpeak = run_measured(
                [sys.executable, "-c", DUCK, str(data), str(duck_dir)], args.duckdb_timeout
            )
            if duck is None:
                print(
                    f"duckdb read_json -> parquet: not finished after {dwall:.0f} s "
                    f"(peak RSS {dpeak[0] / 2**20:.0f} MB); ratio > {dwall / wall:.2f}x"
                )
                return
            drate = int(duck["rows"]) / dwall  # type: ignore[call-overload]
            print(
                f"duckdb read_json -> parquet: {duck['rows']:,} rows in {dwall:.2f} s = "
                f"{drate:,.0f} rows/s; CPU {duck['cpu_s']:.1f} s; peak RSS "
                f"{dpeak[0] / 2**20:.0f} MB"
            )
            print(f"ratio (memos-etl msg/s / duckdb rows/s): {rate / drate:.2f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
