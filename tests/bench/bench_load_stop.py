"""Benchmark: Ctrl-C of a load at a low rate (`--rate 2`) into `memos-etl serve`.

A load of many conversations at a low rate has most of its workers waiting for the
budget (a start a second or more away). The load is interrupted once the server stored
its first two batches; the script prints the seconds from the Ctrl-C to the end of the
process, the batches the server stored at the stop and after the exit (the difference
was sent after the stop), and the batches the ledger left `sending` (each one costs the
next run a read-back request). With `--before DIR` (a plain copy of an older tree, e.g.
`git archive main pipeline | tar -x -C DIR`) the same runs alternate with that code, side
by side on the same machine. Figures go to docs/performance.md ("Load stop at a low
rate") with the command and date.

    python tests/bench/bench_load_stop.py [--before /tmp/old] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.core.batches import write_batches  # noqa: E402
from tests.loader_fakes import make_batches  # noqa: E402
from tests.test_loader_crash import stored  # noqa: E402
from tests.test_localapi_cli import serve  # noqa: E402

LOAD = [sys.executable, "-c", "from pipeline.cli import main; main()"]


def batches_stored(db: Path) -> int:
    return sum(map(len, stored(db).values())) // 2  # 2 messages a batch


def one(code: Path, conversations: int) -> str:
    """One interrupted load with the pipeline package found in `code`."""
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        write_batches(
            workdir, make_batches({f"q{i:03d}": 4 for i in range(conversations)}, per_batch=2)
        )
        db = workdir / "served.sqlite"
        with serve("--db", str(db), "--latency-ms", "100") as (_, url):
            args = [
                *("load", "--workdir", str(workdir), "--target", "local", "--base-url", url),
                *("--rate", "2", "--no-progress", "--json"),
            ]
            proc = subprocess.Popen(
                [*LOAD, *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(code)),
                cwd=tempfile.gettempdir(),  # not the checkout: `code` decides what runs
            )
            while batches_stored(db) < 2:
                time.sleep(0.01)
            at_stop = batches_stored(db)
            started = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            seconds = time.perf_counter() - started
            after = batches_stored(db)
        with sqlite3.connect(workdir / "ledger.sqlite") as conn:
            query = "select count(*) from batches where status = 'sending'"
            sending = int(conn.execute(query).fetchone()[0])
    return (
        f"exit {proc.returncode}, Ctrl-C to exit {seconds:.2f} s, batches stored at the stop "
        f"{at_stop}, sent after it {after - at_stop}, left sending {sending}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older tree to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=40)
    opts = parser.parse_args()
    trees = ([("before", opts.before)] if opts.before else []) + [("after", ROOT)]
    for _ in range(opts.rounds):
        for name, code in trees:
            print(f"{name:6s} {one(code, opts.conversations)}", flush=True)


if __name__ == "__main__":
    main()
