"""`memos-etl load` into a remote target (`memos-etl serve` over HTTP) reads the batch file
in windows as it goes: memory holds a few windows, conversations spanning windows keep
their order, a message met again in a later window is sent once, and a kill mid-load
followed by a rerun sends nothing twice. The window is shrunk to 3 batches (the module
constant, patched in the loading process) so a small sample spans many windows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.batches import Batch, write_batches
from pipeline.core.models import stable_id
from pipeline.load import entry
from pipeline.load.ledger import Ledger
from tests.loader_fakes import make_batches
from tests.test_loader_crash import stored
from tests.test_localapi_cli import serve as serve_process

MEMOS_ETL = str(Path(sys.executable).with_name("memos-etl"))
WINDOW = 3
LOAD = [
    sys.executable,
    "-c",
    f"import pipeline.load.entry as e; e.WINDOW = {WINDOW}; from pipeline.cli import main; main()",
]


@contextmanager
def serve(db: Path, *faults: str) -> Iterator[str]:
    """`memos-etl serve --port 0` on `db` in its own process; yields its URL."""
    with serve_process("--db", str(db), *faults) as (_, url):
        yield url


def sample() -> list[Batch]:
    """Conversation x (3 batches) first, then a batch of x repeating x's fourth message
    with a new one, then 8 conversations of 3 batches interleaved (each spans windows).

    With windows of 3, the first window is x alone; the second (read once x's first batch
    is delivered) holds the repeat while x's second batch, which carries the message
    first, is still waiting: neither the ledger nor that window knows it is sent."""
    x = make_batches({"x": 6}, per_batch=2)
    ids, contents = ("x-m3", "x-m6"), ["msg x 3", "msg x 6"]
    repeat = Batch(
        batch_id=stable_id("x", *ids),
        user_id="u1",
        conversation_id="x",
        index=3,
        message_ids=ids,
        content_hashes=tuple(stable_id(c, length=16) for c in contents),
        tokens=20,
        body={
            "user_id": "u1",
            "conversation_id": "x",
            "messages": [{"role": "user", "content": c} for c in contents],
        },
    )
    others = make_batches({f"c{i}": 6 for i in range(8)}, per_batch=2)
    return [*x, repeat, *others]


def expected() -> dict[tuple[str, str], list[str]]:
    want = {("u1", "x"): [f"msg x {i}" for i in range(7)]}
    for i in range(8):
        want[("u1", f"c{i}")] = [f"msg c{i} {k}" for k in range(6)]
    return want


def load_args(workdir: Path, url: str) -> list[str]:
    return [
        "load",
        "--workdir",
        str(workdir),
        "--target",
        "local",
        "--base-url",
        url,
        "--rate",
        "1000",
        "--no-progress",
        "--json",
    ]


def test_a_remote_load_in_small_windows_sends_every_message_once_in_order(
    tmp_path: Path,
) -> None:
    write_batches(tmp_path, sample())
    db = tmp_path / "served.sqlite"
    with serve(db, "--latency-ms", "20", "--jitter-ms", "30", "--seed", "5") as url:
        done = subprocess.run(
            [*LOAD, *load_args(tmp_path, url)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert stored(db) == expected()
        assert report["sent"]["messages"] == 7 + 8 * 6
        assert report["duplicates_skipped"] == 1
        again = subprocess.run(
            [*LOAD, *load_args(tmp_path, url)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["sent"]["messages"] == 0
    assert stored(db) == expected()


def test_a_remote_load_holds_a_few_windows_never_the_batch_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = make_batches({f"c{i:02d}": 12 for i in range(10)}, per_batch=2)
    write_batches(tmp_path, batches)
    read, done, lag = [0], [0], [0]
    reader = entry.read_batches

    def counting_reader(workdir: Path) -> Iterator[Batch]:
        for batch in reader(workdir):
            read[0] += 1
            lag[0] = max(lag[0], read[0] - done[0])
            yield batch

    mark_done = Ledger.mark_done

    def counting_mark_done(self: Ledger, *args: object, **kwargs: object) -> None:
        done[0] += 1
        mark_done(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(entry, "WINDOW", WINDOW)
    monkeypatch.setattr(entry, "read_batches", counting_reader)
    monkeypatch.setattr(Ledger, "mark_done", counting_mark_done)
    db = tmp_path / "served.sqlite"
    with serve(db, "--latency-ms", "5") as url:
        result = CliRunner().invoke(main, load_args(tmp_path, url))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"]["messages"] == 120
    assert read[0] == len(batches) == done[0]
    # held: below `hold` (one window) plus the window read then, plus the one being built
    assert lag[0] <= 3 * WINDOW, lag[0]


def test_a_kill_mid_load_then_a_rerun_sends_nothing_twice(tmp_path: Path) -> None:
    write_batches(tmp_path, sample())
    want = expected()
    db = tmp_path / "served.sqlite"
    with serve(db, "--latency-ms", "30", "--jitter-ms", "30", "--seed", "9") as url:
        for stop_at in (6, 20):
            proc = subprocess.Popen(
                [*LOAD, *load_args(tmp_path, url)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 60
            while sum(map(len, stored(db).values())) < stop_at and proc.poll() is None:
                assert time.monotonic() < deadline, "the loader made no progress"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            for key, got in stored(db).items():  # a prefix of each: no repeat, no gap
                assert got == want[key][: len(got)], key
        final = subprocess.run(
            [*LOAD, *load_args(tmp_path, url)], capture_output=True, text=True, timeout=120
        )
        assert final.returncode == 0, final.stderr
    assert stored(db) == want
