"""Ctrl-C stops a load quickly: the windows of the batch file it has not read stay unread
(nothing of them was sent, so the ledger needs no row for them), instead of being read
to the end only to be recorded pending. Resuming still delivers every message exactly
once: the next run reads the file from the start, skips what is delivered and reads back
what a stop left uncertain. Windows are shrunk to 3 batches in the loading process (as in
tests/test_load_streaming.py), so a small batch file spans many windows."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pipeline.core.batches import write_batches
from pipeline.core.config import LoadConfig
from pipeline.load.ledger import Ledger
from pipeline.load.loader import load_batches
from pipeline.load.targets import Endpoint
from tests.loader_fakes import Fake, make_batches
from tests.test_load_streaming import LOAD, load_args, serve
from tests.test_loader_crash import stored
from tests.test_localapi_cli import serve as serve_process

CONVERSATIONS = {f"c{i:02d}": 20 for i in range(30)}


def expected(conversations: dict[str, int] = CONVERSATIONS) -> dict[tuple[str, str], list[str]]:
    return {("u1", c): [f"msg {c} {k}" for k in range(n)] for c, n in conversations.items()}


def ledger_rows(workdir: Path) -> int:
    with sqlite3.connect(workdir / "ledger.sqlite") as conn:
        return int(conn.execute("select count(*) from batches").fetchone()[0])


def interrupted_load(workdir: Path, url: str, db: Path, *, twice: bool) -> dict[str, object]:
    """Start `memos-etl load`, Ctrl-C it once some messages are stored (`twice`: a second
    Ctrl-C right after, abandoning the requests in flight); its JSON report."""
    proc = subprocess.Popen(
        [*LOAD, *load_args(workdir, url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while sum(map(len, stored(db).values())) < 10 and proc.poll() is None:
        assert time.monotonic() < deadline, "the loader made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; resume with: memos-etl load" in err
    report = json.loads(out)
    assert isinstance(report, dict)
    return report


@pytest.mark.parametrize("twice", [False, True])
def test_ctrl_c_leaves_the_unread_windows_unread_and_a_rerun_sends_each_message_once(
    tmp_path: Path, twice: bool
) -> None:
    batches = make_batches(CONVERSATIONS, per_batch=2)
    write_batches(tmp_path, batches)
    db = tmp_path / "served.sqlite"
    with serve(db, "--latency-ms", "100", "--jitter-ms", "50", "--seed", "3") as url:
        report = interrupted_load(tmp_path, url, db, twice=twice)
        assert report["stopped"] == "interrupted"
        # the rest of the file was neither read nor recorded: the ledger has the windows
        # read before the stop, and the report counts the others as unread
        recorded = ledger_rows(tmp_path)
        assert 0 < recorded < len(batches)
        assert report["unread"] == len(batches) - recorded
        assert report["batches"] == recorded
        assert report["pending"] > 0
        status = subprocess.run(
            [*LOAD, "status", "--workdir", str(tmp_path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(status.stdout)["destinations"][0]["resume_command"]
        for key, got in stored(db).items():  # a prefix of each: no repeat, no gap
            assert got == expected()[key][: len(got)], key
        final = subprocess.run(
            [*LOAD, *load_args(tmp_path, url)], capture_output=True, text=True, timeout=120
        )
        assert final.returncode == 0, final.stderr
        again = json.loads(final.stdout)
        assert again["unread"] == 0 and again["complete"]
        delivered = (
            again["sent"]["messages"]
            + again["verified_messages"]
            + again["already_delivered"]["messages"]
        )
        assert delivered == sum(CONVERSATIONS.values())
    assert stored(db) == expected()
    assert ledger_rows(tmp_path) == len(batches)


def test_a_stop_that_leaves_nothing_read_unsent_records_the_next_window(
    tmp_path: Path,
) -> None:
    """With a window no larger than the requests in flight, a Ctrl-C can find every batch
    read delivered: the next window holding a batch is then recorded, so the ledger (and
    `status`) shows the load unfinished."""
    batches = make_batches({f"c{i}": 2 for i in range(6)}, per_batch=2)
    fake = Fake()
    handle = fake.handle

    async def interrupting(request: httpx.Request) -> httpx.Response:
        if not fake.calls:  # Ctrl-C while the first batch is in flight
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(5):  # the loop runs its signal handler before the answer
                await asyncio.sleep(0.01)
        return await handle(request)

    windows = iter([[b] for b in batches])
    with Ledger.open(tmp_path) as ledger:
        stats = asyncio.run(
            load_batches(
                windows,
                ledger,
                Endpoint("http://memos.test", None),
                LoadConfig(rate=None, max_in_flight=4),
                transport=httpx.MockTransport(interrupting),
                handle_signals=True,
                hold=1,
            )
        )
        assert stats.stopped == "interrupted"
        assert stats.sent_batches == 1 and stats.pending == 1
        assert ledger.unfinished() == 1
        rows = ledger.rows(b.batch_id for b in batches)
    assert sorted(rows) == sorted(b.batch_id for b in batches[:2])
    assert next(windows) == [batches[2]]  # the rest is left unread


def test_the_summary_names_the_batches_a_stop_left_unread() -> None:
    from pipeline.cli.load import load_summary
    from pipeline.load.stats import LoadStats

    assert "not read after the stop" not in load_summary(LoadStats())
    assert "not read after the stop 5 batches" in load_summary(LoadStats(unread=5))


def left(workdir: Path) -> int:
    """Batches whose request left: `done`, or `sending` (marked right before it leaves)."""
    with sqlite3.connect(workdir / "ledger.sqlite") as conn:
        query = "select count(*) from batches where status in ('done', 'sending')"
        return int(conn.execute(query).fetchone()[0])


def sending(workdir: Path) -> int:
    with sqlite3.connect(workdir / "ledger.sqlite") as conn:
        query = "select count(*) from batches where status = 'sending'"
        return int(conn.execute(query).fetchone()[0])


def test_ctrl_c_at_a_low_rate_sends_none_of_the_queued_requests(tmp_path: Path) -> None:
    """At `--rate 2` most workers wait for the budget (a start a second or more away).

    The loader is frozen (SIGSTOP) after its first requests: then nothing can leave it,
    and `serve` must receive every batch the ledger shows `done` or `sending` (a batch is
    marked `sending` only once its request leaves). A Ctrl-C and SIGCONT follow: none of
    the queued requests is sent (the server's count and store do not move), every request
    that left is answered and `done`, nothing is left `sending` to be read back, and a
    resume delivers every message once without reading anything back."""
    conversations = {f"q{i:02d}": 4 for i in range(12)}
    batches = make_batches(conversations, per_batch=2)
    write_batches(tmp_path, batches)
    db = tmp_path / "served.sqlite"

    def received() -> int:  # batches stored by the server (2 messages each)
        return sum(map(len, stored(db).values())) // 2

    with serve_process("--db", str(db), "--latency-ms", "100") as (server, url):
        slow = load_args(tmp_path, url)
        slow[slow.index("--rate") + 1] = "2"
        proc = subprocess.Popen(
            [*LOAD, *slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while received() < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the loader made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
        at_stop = left(tmp_path)
        deadline = time.monotonic() + 30
        while received() < at_stop:  # the requests in flight are answered meanwhile
            assert time.monotonic() < deadline, (
                f"{at_stop - received()} batches marked sending never reached the server"
            )
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        report = json.loads(out)
        assert report["stopped"] == "interrupted"
        assert received() == at_stop  # nothing was sent after the stop
        assert sending(tmp_path) == 0  # every request that left was answered
        assert left(tmp_path) == at_stop == report["requests"]

        resume = subprocess.run(
            [*LOAD, *load_args(tmp_path, url)], capture_output=True, text=True, timeout=120
        )
        assert resume.returncode == 0, resume.stderr
        again = json.loads(resume.stdout)
        assert again["complete"] and again["verified_messages"] == 0
        assert again["sent"]["messages"] + again["already_delivered"]["messages"] == sum(
            conversations.values()
        )
        server.send_signal(signal.SIGTERM)
        closing, _ = server.communicate(timeout=30)
    counted = re.search(r"stopped: requests (\d+) \(add (\d+);", closing)
    assert counted is not None, closing
    received, added = map(int, counted.groups())
    assert received == added + 2  # each run's preflight; no read-back in either run
    assert added == at_stop + again["requests"]
    assert stored(db) == expected(conversations)
