"""Benchmark: streamed ChatGPT extract vs the naive `json.load` + pandas approach.

    python tests/bench/bench_chatgpt.py --conversations 20000 [--dir /tmp/x] [--no-naive]

Generates a synthetic export (tests/bench/gen_chatgpt_export.py; ~35 KB and ~20 nodes per
conversation, so 20,000 conversations are ~700 MB) into `--dir` (default: a temporary
folder, removed afterwards; never the repository), then runs each approach in its own
child process so that each reports its own peak memory (ru_maxrss). Figures:
- ours: `pipeline.extract.extract_source` end to end (stream, canonical thread, counts,
  Parquet staging table), with `parallel: off` and `parallel: on` (a helper process
  parses the second half of the file and spools its rows; see
  connectors/chatgpt/split.py); messages staged per second of wall time, and per CPU
  second of the busier process (main or helper): the rate the run reaches when its cores
  are not shared with other work;
- naive: `json.load` of the whole file, every node into a pandas DataFrame, user and
  assistant text to Parquet (no thread reconstruction: it does less work, not more).
The machine is shared and noisy: run it twice and compare within one run.
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

from gen_chatgpt_export import write_single  # noqa: E402

OURS = """
import resource, sys, time, orjson
from pathlib import Path
from pipeline.core.config import SourceConfig
from pipeline.extract import extract_source
import pyarrow.parquet, pandas  # imports are not part of the measured time
src = SourceConfig(kind="chatgpt", path=Path(sys.argv[1]), options={"parallel": sys.argv[3]})
wall, cpu = time.perf_counter(), time.process_time()
stats = extract_source(src, Path(sys.argv[2]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
helper = resource.getrusage(resource.RUSAGE_CHILDREN)
print(orjson.dumps({"wall": wall, "cpu": cpu, "staged": stats.staged, "read": stats.read,
                    "balanced": stats.balanced, "cpu_helper": helper.ru_utime + helper.ru_stime,
                    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "rss_helper_mb": helper.ru_maxrss / 1024}).decode())
"""

NAIVE = """
import json, resource, sys, time, orjson
import pandas as pd
import pyarrow.parquet
wall, cpu = time.perf_counter(), time.process_time()
with open(sys.argv[1], encoding="utf-8") as fh:
    data = json.load(fh)
rows = []
for conv in data:
    for nid, node in conv["mapping"].items():
        msg = node.get("message")
        if msg:
            rows.append({"conversation_id": conv["id"], "node_id": nid,
                         "parent": node.get("parent"), "role": msg["author"]["role"],
                         "content": msg["content"], "create_time": msg.get("create_time")})
df = pd.DataFrame(rows)
df = df[df["role"].isin(["user", "assistant"])].copy()
df["text"] = df["content"].map(
    lambda c: "\\n".join(p for p in c.get("parts", []) if isinstance(p, str)))
df = df[df["text"].str.len() > 0].drop(columns=["content"])
df.to_parquet(sys.argv[2])
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(orjson.dumps({"wall": wall, "cpu": cpu, "staged": len(df), "read": len(rows),
                    "balanced": None,
                    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}).decode())
"""


def _child(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return orjson.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, help="where to generate (default: a temp folder)")
    parser.add_argument("--no-naive", action="store_true", help="skip the json.load baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chatgpt-") as tmp:
        root = args.dir or Path(tmp)
        export = root / "export"
        t = time.perf_counter()
        path = write_single(export, args.conversations)
        size = path.stat().st_size / 1e6
        print(
            f"generated {args.conversations} conversations, {size:.0f} MB "
            f"in {time.perf_counter() - t:.1f}s"
        )
        results = {
            "ours, 1 process": _child(OURS, str(export), str(root / "work1"), "off"),
            "ours, 2 processes": _child(OURS, str(export), str(root / "work2"), "on"),
        }
        if not args.no_naive:
            results["json.load + pandas"] = _child(NAIVE, str(path), str(root / "naive.parquet"))
        print(
            f"{'approach':<22}{'staged':>8}{'wall s':>8}{'msg/s wall':>11}"
            f"{'cpu s':>7}{'helper cpu s':>13}{'msg/s cpu':>10}{'peak MB':>9}{'helper MB':>10}"
            f"{'sum MB':>8}"
        )
        for name, r in results.items():
            helper = r.get("cpu_helper", 0.0)
            critical = max(r["cpu"], helper)  # with 2 free cores, the busier process
            print(
                f"{name:<22}{int(r['staged']):>8}{r['wall']:>8.2f}"
                f"{r['staged'] / r['wall']:>11,.0f}{r['cpu']:>7.2f}{helper:>13.2f}"
                f"{r['staged'] / critical:>10,.0f}"
                f"{r['rss_mb']:>9.0f}{r.get('rss_helper_mb', 0.0):>10.0f}"
                f"{r['rss_mb'] + r.get('rss_helper_mb', 0.0):>8.0f}"
            )
        print(
            "msg/s cpu = staged / CPU seconds of the busier process (the rate when the cores"
            " are free); peak MB = peak RSS of the main process, helper MB of the helper,"
            " sum MB both (an upper bound: the two peaks need not coincide)"
        )
        for name in ("ours, 1 process", "ours, 2 processes"):
            ours = results[name]
            print(f"{name}: read {int(ours['read'])} nodes, counts balanced: {ours['balanced']}")


if __name__ == "__main__":
    main()
