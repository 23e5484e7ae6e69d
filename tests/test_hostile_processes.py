"""Whole `extract` processes under attack: zip bombs stay small, kills leave nothing behind.

These run the real command in a subprocess: peak memory is the child's own maximum RSS
(`RUSAGE_CHILDREN` of a fresh wrapper process that runs only that child), and leftover
processes are looked up in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, synthetic_slack

MEMOS_ETL = Path(sys.executable).parent / "memos-etl"
RSS_LIMIT_KB = 512 * 1024

MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.fixture(scope="module")
def bomb_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A ~1 MB ZIP holding one 1 GiB member named `conversations.json`."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("conversations.json", "w", force_zip64=True) as fh,
    ):
        fh.write(b'{"conversations": [], "pad": "')
        block = b"A" * (1 << 20)
        for _ in range(1024):
            fh.write(block)
        fh.write(b'"}')
    data = path.read_bytes()
    assert len(data) < 1_200_000
    return data


@pytest.mark.parametrize("kind", ["chatgpt", "claude", "slack"])
def test_zip_bomb_is_refused_in_little_memory(tmp_path: Path, bomb_bytes: bytes, kind: str) -> None:
    data = bomb_bytes
    if kind == "slack":  # the same member, named as a day file (same length, same CRC)
        data = data.replace(b"conversations.json", b"gg/2024-03-04.json")
    path = tmp_path / "bomb.zip"
    path.write_bytes(data)
    command = [str(MEMOS_ETL), "extract", "--source", kind, str(path)]
    command += ["--workdir", str(tmp_path / "w"), "--user-id", "me", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    code, max_rss_kb = map(int, done.stdout.split())
    assert code == 3, done.stderr
    assert done.stderr.startswith("error: ") and "zip bomb" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert max_rss_kb < RSS_LIMIT_KB, f"peak RSS {max_rss_kb // 1024} MB"


# --- B18: killing extract leaves no worker behind ----------------------------------------


def children(pid: int) -> set[int]:
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def worker_children(pid: int) -> set[int]:
    """Pids of the live children of `pid` that work (forked or spawned), leaving out
    multiprocessing's resource tracker (spawn starts one beside its workers)."""
    found = set()
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.add(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def slack_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Slack export big enough to keep two workers busy for a few seconds."""
    root = tmp_path_factory.mktemp("slack")
    synthetic_slack(root / "export")
    config = root / "c.yaml"
    config.write_text(
        f"sources:\n  - kind: slack\n    path: {root / 'export'}\n    user_id: team\n"
        "    options:\n      workers: 2\n"
    )
    return config


@contextlib.contextmanager
def running(
    command: list[str],
    stderr: Path,
    ready: Callable[[subprocess.Popen[str], set[int]], bool],
    seconds: float,
    what: str,
) -> Iterator[tuple[subprocess.Popen[str], set[int]]]:
    """`command` started in the background until `ready(process, kids)` (kids: the pids of
    its children seen so far), then the process and its children; whatever it leaves
    behind is ended by pid afterwards. Output goes to the file `stderr`, not a pipe: a
    leftover worker would hold a pipe open."""
    if not sys.platform.startswith("linux"):
        pytest.skip("looks up processes in /proc")
    with stderr.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
    kids: set[int] = set()

    def up() -> bool:
        kids.update(children(process.pid))
        return ready(process, kids)

    try:
        assert wait_until(up, seconds), what
        yield process, set(kids)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def started(slack_config: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], set[int]]]:
    """A running Slack extract with its worker processes (and the resource tracker) up."""
    command = [str(MEMOS_ETL), "extract", "--config", str(slack_config)]
    command += ["--workdir", str(tmp_path / "w"), "--no-progress", "-q"]
    with running(
        command,
        tmp_path / "stderr.txt",
        lambda _, kids: len(kids) >= 3,
        60,
        "the workers never started",
    ) as started:
        yield started


def test_sigterm_exits_130_and_stops_the_workers(
    started: tuple[subprocess.Popen[str], set[int]], tmp_path: Path
) -> None:
    process, kids = started
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 130, stderr
    assert stderr.startswith("error: interrupted") and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w/staging/.slack.tmp").exists()
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "workers left behind"


def test_sigkill_leaves_no_worker_behind(started: tuple[subprocess.Popen[str], set[int]]) -> None:
    process, kids = started
    process.kill()
    process.wait(timeout=60)
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "workers left behind"
