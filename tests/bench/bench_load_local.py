"""Benchmark: the load stage, and optionally `run`, into the embedded local target.

Uses a chunked workdir (`--workdir`, made by `memos-etl extract` + `chunk`; or generated
from a synthetic Slack export of `--messages` messages) and runs, each in its own process
with the resident memory of its process tree sampled (/proc, every 20 ms):

1. `memos-etl load` into a fresh local store (no ledger, no store: everything is sent);
2. the same `load` again (a rerun: everything is already delivered, nothing is sent);
3. with `--run`, `memos-etl run` of the export into a fresh workdir (every stage);
4. with `--run-twice`, that `run` again (a rerun: every message is delivered, nothing is
   sent; the ledger is asked one staging bucket at a time).

Prints per step wall seconds, requests per second, messages per second and peak RSS.
The workdir's ledger and local store are moved aside first and put back after.
Figures go to docs/performance.md ("Embedded local target") with the command and date.

    python tests/bench/bench_load_local.py --workdir w1m [--run --data export1m]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stages import CLI, measured  # noqa: E402
from gen_slack import generate  # noqa: E402

from pipeline.core.workdir import ledger_path, local_db  # noqa: E402


def _requests(workdir: Path) -> tuple[int, int]:
    """(requests, messages sent) of the ledger's last run."""
    with sqlite3.connect(ledger_path(workdir)) as conn:
        row = conn.execute(
            "select requests, sent from runs order by run_id desc limit 1"
        ).fetchone()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def _stored(workdir: Path) -> int:
    with sqlite3.connect(local_db(workdir)) as conn:
        return int(conn.execute("select count(*) from messages").fetchone()[0])


def _tenths(workdir: Path) -> str:
    """Requests per second (and messages per request) in each tenth of the load, from the
    store's task times: flat when the cost per request does not grow with the run."""
    with sqlite3.connect(local_db(workdir)) as conn:
        rows = [
            (datetime.fromisoformat(t).timestamp(), n)
            for t, n in conn.execute("select created_at, messages from tasks order by created_at")
        ]
    if len(rows) < 20:
        return "-"
    step = len(rows) // 10
    out = []
    for k in range(10):
        part = rows[k * step : (k + 1) * step + 1]
        seconds = max(part[-1][0] - part[0][0], 1e-3)
        per_request = sum(n for _, n in part) / len(part)
        out.append(f"{(len(part) - 1) / seconds:,.0f} ({per_request:.1f})")
    return " ".join(out)


def _show(name: str, wall: float, peak: int, code: int, requests: int, messages: int) -> None:
    status = "" if code == 0 else f"  (exit {code})"
    print(
        f"{name:<12} {wall:>8.1f} {requests / wall:>9,.0f} {messages / wall:>10,.0f}"
        f" {peak / 2**20:>12,.0f}{status}",
        flush=True,
    )


def _set_aside(workdir: Path, keep: Path) -> list[tuple[Path, Path]]:
    """Move the ledger and local store (with their WAL files) out of the way."""
    moved = []
    for base in (ledger_path(workdir), local_db(workdir)):
        for path in (base, *(base.with_name(base.name + s) for s in ("-wal", "-shm"))):
            if path.exists():
                target = keep / path.name
                shutil.move(str(path), target)
                moved.append((target, path))
    return moved


def _load_steps(load: list[str], workdir: Path, timeout: float, *, rerun: bool) -> None:
    """`load` into a fresh store, then (with `rerun`) the same load again."""
    wall, peak, code = measured(load, timeout)
    requests, sent = _requests(workdir)
    _show("load", wall, peak, code, requests, sent)
    print(f"  {requests:,} requests, {sent:,} messages sent, {_stored(workdir):,} stored")
    print(f"  req/s (msg/req) in each tenth of the load: {_tenths(workdir)}")
    if rerun:
        wall, peak, code = measured(load, timeout)
        requests, _ = _requests(workdir)
        _show("load rerun", wall, peak, code, requests, sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="A chunked workdir (made if missing).")
    parser.add_argument("--data", type=Path, help="Slack export (generated if missing).")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--run", action="store_true", help="Also time `run` of the export.")
    parser.add_argument("--no-rerun", action="store_true", help="Skip the rerun step.")
    parser.add_argument("--skip-load", action="store_true", help="Only `run` (with --run).")
    parser.add_argument("--run-twice", action="store_true", help="With --run: then rerun it.")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="memos-etl-loadbench-"))
    moved: list[tuple[Path, Path]] = []
    try:
        data = args.data or tmp / "export"
        if not data.exists():
            print(f"generating {args.messages:,} messages into {data} ...", flush=True)
            generate(data, args.messages)
        workdir = args.workdir or tmp / "work"
        if not (workdir / "batches").exists():
            print(f"extract + chunk into {workdir} ...", flush=True)
            for cmd in (
                ["extract", "--source", "slack", str(data), "--user-id", "bench"],
                ["chunk"],
            ):
                measured([CLI, *cmd, "--workdir", str(workdir), "-q"], args.timeout)
        moved = _set_aside(workdir, tmp)
        print(f"{'step':<12} {'wall s':>8} {'req/s':>9} {'msg/s':>10} {'peak RSS MB':>12}")
        load = [CLI, "load", "--workdir", str(workdir), "--target", "local", "-q"]
        if not args.skip_load:
            _load_steps(load, workdir, args.timeout, rerun=not args.no_rerun)
        for path in (ledger_path(workdir), local_db(workdir)):
            for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
                p.unlink(missing_ok=True)
        if args.run:
            config = tmp / "run.yaml"
            config.write_text(
                f"workdir: {tmp / 'run'}\nuser_id: bench\n"
                f"sources:\n  - kind: slack\n    path: {data}\n"
            )
            for step in ("run", "run rerun")[: 2 if args.run_twice else 1]:
                wall, peak, code = measured([CLI, "run", str(config), "-q"], args.timeout)
                requests, sent = _requests(tmp / "run")
                _show(step, wall, peak, code, requests, sent)
    finally:
        for source, target in moved:
            shutil.move(str(source), target)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
