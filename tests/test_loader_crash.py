"""Crash safety: `memos-etl load` killed (SIGKILL) or interrupted (SIGINT) at random points,
then re-run, ends with every message stored exactly once, in order."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.batches import Batch, write_batches
from pipeline.core.config import LoadConfig
from pipeline.core.destination import Destination, destination_for
from pipeline.load.ledger import Ledger
from pipeline.server import LocalServer, ServerConfig, start_server
from pipeline.server.faults import FaultConfig
from pipeline.server.store import conversation_messages, message_counts
from tests.loader_fakes import make_batches

CLI = [sys.executable, "-c", "from pipeline.cli import main; main()"]


def expected(batches: list[Batch]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for b in batches:
        out.setdefault((b.user_id, b.conversation_id), []).extend(
            m["content"] for m in b.body["messages"]
        )
    return out


def stored(db: Path) -> dict[tuple[str, str], list[str]]:
    if not db.exists():
        return {}
    return {
        key: [m["content"] for m in conversation_messages(db, *key)] for key in message_counts(db)
    }


def served(workdir: Path, server: LocalServer) -> Destination:
    """The destination `load --target local --base-url <server>` delivers to."""
    return destination_for(LoadConfig(target="local"), workdir, base_url=server.url, env={})


def assert_prefix_state(db: Path, want: dict[tuple[str, str], list[str]]) -> int:
    """Each conversation holds a prefix of what it should: no duplicate, no gap, in order."""
    total = 0
    for key, got in stored(db).items():
        assert got == want[key][: len(got)], f"{key}: duplicate or out of order"
        total += len(got)
    return total


def start_load(workdir: Path, server: LocalServer, *extra: str) -> subprocess.Popen[str]:
    args = [
        *CLI,
        "load",
        "--workdir",
        str(workdir),
        "--target",
        "local",
        "--base-url",
        server.url,
        "--rate",
        "200",
        "--max-in-flight",
        "8",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_requests(server: LocalServer, proc: subprocess.Popen[str], n: int) -> None:
    target = server.stats.requests + n
    deadline = time.monotonic() + 30
    while server.stats.requests < target and proc.poll() is None:
        assert time.monotonic() < deadline, "the loader made no progress"
        time.sleep(0.005)


def test_sigkill_at_random_points_then_rerun_is_exact(tmp_path: Path) -> None:
    batches = make_batches({f"c{i:02d}": 20 for i in range(20)}, per_batch=2)
    write_batches(tmp_path, batches)
    want = expected(batches)
    db = tmp_path / "server.sqlite"
    rng = random.Random(20261121)
    faults = FaultConfig(latency_ms=10, jitter_ms=20, drop_after_rate=0.03, seed=3)
    with start_server(ServerConfig(db_path=db, faults=faults)) as server:
        kills = 0
        for _ in range(5):
            proc = start_load(tmp_path, server)
            wait_for_requests(server, proc, rng.randint(5, 40))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            kills += 1
            assert_prefix_state(db, want)
            with Ledger.open(
                tmp_path, served(tmp_path, server)
            ) as ledger:  # the ledger opens and reads cleanly
                assert sum(c["batches"] for c in ledger.status_counts().values()) == len(batches)
        assert kills >= 3
        final = start_load(tmp_path, server)
        out, err = final.communicate(timeout=120)
        assert final.returncode == 0, err
    assert stored(db) == want


def test_ctrl_c_exits_130_consistent_and_resumable(tmp_path: Path) -> None:
    batches = make_batches({f"c{i:02d}": 20 for i in range(10)}, per_batch=2)
    write_batches(tmp_path, batches)
    want = expected(batches)
    db = tmp_path / "server.sqlite"
    faults = FaultConfig(latency_ms=30, jitter_ms=10, seed=1)
    with start_server(ServerConfig(db_path=db, faults=faults)) as server:
        proc = start_load(tmp_path, server)
        wait_for_requests(server, proc, 15)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "resume with: memos-etl load --workdir" in err
        assert_prefix_state(db, want)
        with Ledger.open(tmp_path, served(tmp_path, server)) as ledger:
            counts = ledger.status_counts()
        assert counts["sending"]["batches"] == 0  # in-flight requests were finished
        assert 0 < counts["done"]["batches"] < len(batches)
        again = start_load(tmp_path, server)
        _, err2 = again.communicate(timeout=60)
        assert again.returncode == 0, err2
    assert stored(db) == want


def test_second_ctrl_c_exits_at_once_and_stays_consistent(tmp_path: Path) -> None:
    batches = make_batches({f"c{i:02d}": 6 for i in range(8)}, per_batch=2)
    write_batches(tmp_path, batches)
    want = expected(batches)
    db = tmp_path / "server.sqlite"
    slow = FaultConfig(latency_ms=3000)
    with start_server(ServerConfig(db_path=db, faults=slow)) as server:
        port = server.port
        proc = start_load(tmp_path, server)
        wait_for_requests(server, proc, 8)  # eight requests now wait 3 s each
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # a hang guard, not a speed test: the answers are 3 s away, so a loader that waited
        # for them (instead of abandoning them on the second Ctrl-C) would time out here
        _, err = proc.communicate(timeout=2.5)
        assert proc.returncode == 130, err
        with Ledger.open(tmp_path, served(tmp_path, server)) as ledger:
            assert ledger.status_counts()["sending"]["batches"] > 0  # abandoned, uncertain
    time.sleep(3.2)  # let the abandoned requests land in the store
    # the same store at the same URL: the same destination (a new port would be a new one)
    with start_server(ServerConfig(db_path=db, port=port)) as server:
        again = start_load(tmp_path, server)
        _, err2 = again.communicate(timeout=60)
        assert again.returncode == 0, err2
    assert stored(db) == want
