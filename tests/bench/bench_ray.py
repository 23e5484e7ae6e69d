"""`run --engine ray` against `run --engine inprocess`: throughput and the shared budget.

Run: .venv/bin/python tests/bench/bench_ray.py [--conversations N --per M --latency-ms L]
(needs the extra: pip install -e '.[dev,ray]')

Each engine runs `memos-etl run CONFIG --engine E --buckets 8 --json` in its own process,
into its own `memos-etl serve` with a 50 req/s ceiling (sliding window, 429 above it) and a
latency, from the same CSV export; the account's budget is 50 req/s. Ray starts a local
2-CPU cluster inside the run (its start-up is in the wall time, not in the load time).
Prints, side by side: messages, requests, load seconds (the longest bucket), requests/s
and messages/s over the load, wall seconds, requests rejected by the server, and the
busiest second of the account's shared schedule (must stay within 50).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "sk-bench-ray-0123456789"
CEILING = 50


def write_export(folder: Path, conversations: int, per: int) -> Path:
    path = folder / "chats.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["message_id", "conversation_id", "user_id", "role", "content", "timestamp"]
        )
        for k in range(per):
            for c in range(conversations):
                writer.writerow(
                    [
                        f"c{c}-m{k}",
                        f"conv-{c}",
                        "bench-user",
                        "user" if k % 2 == 0 else "assistant",
                        f"conversation {c} message {k}: a benchmark message of a few words",
                        f"2025-03-01T{k // 60 % 24:02d}:{k % 60:02d}:{c % 60:02d}Z",
                    ]
                )
    return path


def start_server(db: Path, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-c", "from pipeline.cli import main; main()", "serve", "--json",
        "--port", "0", "--db", str(db), "--token", KEY, "--qps-limit", str(CEILING),
        "--limit-mode", "sliding", "--latency-ms", str(latency_ms),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["url"]


def run_engine(engine: str, export: Path, folder: Path, latency_ms: float) -> dict[str, Any]:
    proc, url = start_server(folder / f"{engine}-server.sqlite", latency_ms)
    try:
        config = folder / f"{engine}.yaml"
        config.write_text(
            f"workdir: {folder / engine}\nsources:\n  - kind: csv\n    path: {export}\n"
            "chunk:\n  max_messages: 2\n"
            f"account:\n  requests_per_second: {CEILING}\n"
            f"load:\n  target: memos\n  base_url: {url}\n"
        )
        env = {**os.environ, "MEMOS_API_KEY": KEY}
        env.pop("RAY_ADDRESS", None)
        cmd = [
            sys.executable, "-c", "from pipeline.cli import main; main()", "run", str(config),
            "--engine", engine, "--buckets", "8", "--json", "-q",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    if done.returncode != 0:
        raise SystemExit(f"{engine}: exit {done.returncode}\n{done.stderr[-2000:]}")
    (account,) = json.loads(done.stdout)["accounts"]
    load = account["load"]
    seconds = load["duration_s"]
    messages = load["sent"]["messages"] + load["verified_messages"]
    return {
        "engine": engine,
        "messages": messages,
        "requests": load["requests"],
        "load_s": seconds,
        "req_per_s": round(load["requests"] / seconds, 2),
        "msg_per_s": round(messages / seconds, 1),
        "wall_s": round(wall, 1),
        "rejected": load["retries"].get("rate_limited", 0),
        "busiest_second": account["budget_peaks"].get("requests_per_1s"),
        "complete": load["complete"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument(
        "--per",
        type=int,
        default=100,
        help="messages per conversation (100: about a minute of load, so the start-up of"
        " Ray's worker processes does not dominate)",
    )
    parser.add_argument("--latency-ms", type=float, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export = write_export(folder, args.conversations, args.per)
        rows = [run_engine(e, export, folder, args.latency_ms) for e in ("inprocess", "ray")]
    for row in rows:
        print(json.dumps(row))
    ratio = rows[1]["req_per_s"] / rows[0]["req_per_s"]
    print(
        f"ray / inprocess throughput over the load: {ratio:.3f} "
        f"({'within' if ratio >= 0.9 else 'NOT within'} 10%); server rejections "
        f"{rows[0]['rejected']} / {rows[1]['rejected']}; busiest second of the shared "
        f"budget {rows[0]['busiest_second']} / {rows[1]['busiest_second']} (budget {CEILING})"
    )


if __name__ == "__main__":
    main()
