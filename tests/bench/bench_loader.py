"""Loader throughput against the local server with a latency and a QPS ceiling.

Run: .venv/bin/python tests/bench/bench_loader.py [--quick | --scale N]

The server runs in its own process (`memos-etl serve`), so the CPU time measured here is
the loader's alone. Scenarios, side by side in one run:
  1. 200 ms latency, 50 req/s server ceiling: loader at --rate 50 vs a sequential client
     (one request at a time, the way the official client sends); and the loader told
     --rate 75, above the server's ceiling, adapting to it;
  2. 1 s latency, same ceiling (about 50 requests in flight): loader and its connection pool;
  3. no latency, no ceiling: client CPU time per request (process_time / requests).
Prints requests/s, share of the ceiling, rejections, the most times one batch was rejected
in a row, peak in-flight requests and pooled connections, and CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pipeline.core.config import LoadConfig
from pipeline.load.ledger import Ledger
from pipeline.load.loader import _pool_sizes, load_batches
from pipeline.load.targets import Endpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.loader_fakes import make_batches  # noqa: E402

_STARTS: list[float] = []
_post = httpx.AsyncClient.post


async def _timed_post(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> httpx.Response:
    _STARTS.append(time.perf_counter())
    return await _post(self, *args, **kwargs)


httpx.AsyncClient.post = _timed_post  # type: ignore[method-assign]


def sustained_rate(starts: list[float]) -> float:
    """Requests/s between the 10th and 90th percentile start: the rate the loader holds
    once ramped up, before the last conversations drain one batch at a time."""
    starts = sorted(starts)
    lo, hi = len(starts) // 10, len(starts) * 9 // 10
    return (hi - lo) / (starts[hi] - starts[lo]) if hi > lo else 0.0


def start_server(db: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "serve",
        "--json",
        "--port",
        "0",
        "--db",
        str(db),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)["url"]


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=30)


def run_load(url: str, n_batches: int, conversations: int, **cfg: Any) -> dict[str, Any]:
    per_conv = max(1, n_batches // conversations)
    batches = make_batches(
        {f"conv-{i:03d}": per_conv * 2 for i in range(conversations)},
        per_batch=2,
        text="benchmark message number",
    )
    settings = LoadConfig.model_validate({"max_attempts": 20, "timeout": 30.0, **cfg})
    _STARTS.clear()
    with tempfile.TemporaryDirectory() as tmp, Ledger.open(Path(tmp)) as ledger:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stats = asyncio.run(load_batches(batches, ledger, Endpoint(url), settings))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        max_attempts = ledger.conn.execute("select max(attempts) from batches").fetchone()[0]
    assert stats.complete, stats.to_json()
    return {
        "batches": len(batches),
        "requests": stats.requests,
        "seconds": round(wall, 2),
        "req_per_s": round(stats.requests / wall, 2),
        "sustained_per_s": round(sustained_rate(_STARTS), 2),
        "accepted_per_s": round(len(batches) / wall, 2),
        "rate_limited": stats.retries.get("rate_limited", 0),
        "max_rejections_in_a_row": max_attempts - 1,
        "peak_in_flight": stats.peak_in_flight,
        "pools": _pool_sizes(settings.max_in_flight, shared=False),
        "cpu_ms_per_request": round(1000 * cpu / stats.requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests per scenario")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every scenario's requests (longer runs dilute the first second of "
        "latency and the per-conversation tail)",
    )
    args = parser.parse_args()
    scale = 0.3 if args.quick else args.scale
    ceiling = 50.0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(
            Path(tmp) / "a.sqlite", "--latency-ms", "200", "--qps-limit", str(ceiling)
        )
        try:
            results["200ms_loader"] = run_load(
                url, int(1000 * scale), 100, rate=ceiling, max_in_flight=16
            )
            results["200ms_sequential"] = run_load(
                url, int(40 * scale) or 10, 1, rate=ceiling, max_in_flight=1
            )
            # a client ceiling above the server's: the adaptive limiter finds the server's
            results["200ms_over_ceiling"] = run_load(
                url, int(1000 * scale), 100, rate=ceiling * 1.5, max_in_flight=24
            )
        finally:
            stop_server(server)
        server, url = start_server(
            Path(tmp) / "b.sqlite", "--latency-ms", "1000", "--qps-limit", str(ceiling)
        )
        try:
            results["1s_loader"] = run_load(
                url, int(1000 * scale), 200, rate=ceiling, max_in_flight=64
            )
        finally:
            stop_server(server)
        server, url = start_server(Path(tmp) / "c.sqlite")
        try:
            results["cpu_loader"] = run_load(
                url, int(3000 * scale), 100, rate=1000, max_in_flight=32
            )
        finally:
            stop_server(server)
    for name, r in results.items():
        share = r["req_per_s"] / ceiling
        held = r["sustained_per_s"] / ceiling
        print(
            f"{name:>17}: {r['requests']:5d} requests in {r['seconds']:6.2f} s = "
            f"{r['req_per_s']:7.2f}/s ({share:5.1%} of {ceiling:g}/s); sustained "
            f"{r['sustained_per_s']:7.2f}/s ({held:5.1%}); accepted {r['accepted_per_s']:.2f}/s; "
            f"rate-limited "
            f"{r['rate_limited']}, max rejections in a row {r['max_rejections_in_a_row']}; "
            f"peak in flight {r['peak_in_flight']}, pools {r['pools']}; "
            f"CPU {r['cpu_ms_per_request']:.3f} ms/request"
        )
    ratio = results["200ms_loader"]["req_per_s"] / results["200ms_sequential"]["req_per_s"]
    held = results["200ms_loader"]["sustained_per_s"] / results["200ms_sequential"]["req_per_s"]
    cpu = results["cpu_loader"]["cpu_ms_per_request"]
    print(f"loader / sequential at 200 ms: {ratio:.1f}x overall, {held:.1f}x sustained")
    print(f"client CPU {cpu:.3f} ms/request -> one core drives about {1000 / cpu:.0f} requests/s")


if __name__ == "__main__":
    main()
