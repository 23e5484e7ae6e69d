"""Chunk on several processes: the same batch file as one process, and failures that leave
the previous batch file and no temp files behind."""

from __future__ import annotations

import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.chunk import ChunkLimits
from pipeline.core.config import load_config
from pipeline.core.errors import InputError
from pipeline.extract import extract_source
from tests.conftest import REPO, synthetic_slack


def _stage_in_buckets(workdir: Path, buckets: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.core.staging_buckets as sb

    monkeypatch.setattr(sb, "choose_buckets", lambda files, target_bytes=0: buckets)
    cfg = load_config(REPO / "configs" / "quickstart.yaml", {"workdir": str(workdir)}, env={})
    for source in cfg.sources:
        extract_source(source, workdir, default_user_id=cfg.user_id)


def _chunk(workdir: Path, *extra: str) -> Any:
    from pipeline.cli import main

    config = str(REPO / "configs" / "quickstart.yaml")
    args = ["chunk", "--config", config, "--workdir", str(workdir), "--max-tokens", "120"]
    return CliRunner().invoke(main, [*args, "--max-messages", "4", *extra])


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_one_two_and_three_processes_write_the_same_batch_file(
    start: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers (Linux) and spawned ones (elsewhere, or beside a thread) alike."""
    import pipeline.core.bucket_workers as bw

    if start == "fork" and not sys.platform.startswith("linux"):
        pytest.skip("workers are forked on Linux only")
    monkeypatch.setattr(bw, "worker_context", lambda: get_context(start))
    _stage_in_buckets(tmp_path, 8, monkeypatch)
    files = []
    for workers in ("1", "2", "3"):
        result = _chunk(tmp_path, "--workers", workers)
        assert result.exit_code == 0, result.output
        files.append((tmp_path / "batches" / "batches.jsonl").read_bytes())
    assert files[0].count(b"\n") > 8
    assert files[1] == files[0] and files[2] == files[0]


def _printed(script: str) -> list[str]:
    """The words `script` prints, run by a fresh Python (no thread of pytest's around)."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    return done.stdout.split()


def test_workers_are_forked_on_linux_unless_a_thread_of_ours_runs() -> None:
    """A fork beside a Python thread could inherit a lock it holds: then workers spawn."""
    script = (
        "import threading, time\n"
        "from pipeline.core.bucket_workers import worker_context\n"
        "print(worker_context().get_start_method())\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
        "print(worker_context().get_start_method())\n"
    )
    alone = "fork" if sys.platform.startswith("linux") else "spawn"
    assert _printed(script) == [alone, "spawn"]


def test_a_progress_bar_starts_no_thread() -> None:
    """tqdm's monitor thread would make every chunk with a progress bar spawn its workers."""
    script = (
        "import io, threading\n"
        "from pipeline.core.progress import TqdmProgress\n"
        "bar = TqdmProgress(disable=False)\n"
        "bar.start('chunk', total=10)\n"
        "bar.advance(5)\n"
        "print(threading.active_count())\n"
        "bar.close()\n"
    )
    assert _printed(script) == ["1"]


def test_a_damaged_staged_file_is_a_one_line_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 3 naming the file; the previous batch file stays and no temp file is left."""
    _stage_in_buckets(tmp_path, 8, monkeypatch)
    assert _chunk(tmp_path, "--workers", "1").exit_code == 0
    before = (tmp_path / "batches" / "batches.jsonl").read_bytes()
    damaged = sorted((tmp_path / "staging").glob("*/bucket=*/*.parquet"))
    for path in damaged:
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"x" * 64
        path.write_bytes(bytes(data))
    for workers in ("1", "2"):
        result = _chunk(tmp_path, "--workers", workers)
        assert result.exit_code == 3, result.output
        (line,) = result.output.strip().splitlines()
        assert "staged file is damaged" in line
        assert any(str(path) in line for path in damaged)
        assert (tmp_path / "batches" / "batches.jsonl").read_bytes() == before
        assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == [
            "batches.jsonl",
            "manifest.json",
        ]


def test_a_worker_reports_its_error_and_then_that_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker loop, in this process: the error crosses to the parent as an exception
    (raised there), followed by the end marker, so the parent never waits forever."""
    from pipeline.chunk.stage import BucketJob, _bucket_to_file
    from pipeline.core.bucket_workers import _worker_loop
    from pipeline.core.redact import DEFAULT_POLICY

    _stage_in_buckets(tmp_path, 2, monkeypatch)
    (tmp_path / "batches").mkdir()
    for path in (tmp_path / "staging").glob("*/bucket=*/*.parquet"):
        path.write_bytes(b"not parquet")
    labels = tuple(sorted(p.name for p in (tmp_path / "staging").iterdir()))
    columns = ("source", "message_id", "conversation_id", "user_id", "role", "content")
    job = BucketJob(
        tmp_path,
        labels,
        (*columns, "created_at", "seq"),
        2,
        ChunkLimits(),
        None,
        None,
        frozenset(),
        DEFAULT_POLICY,
    )
    counter = get_context("spawn").Value("i", 0)
    results: queue.Queue[Any] = queue.Queue()
    _worker_loop(functools.partial(_bucket_to_file, job, None), 2, counter, results)
    error, end = results.get_nowait(), results.get_nowait()
    assert isinstance(error, InputError) and "staged file is damaged" in str(error)
    assert end is None and results.empty()


def test_buckets_finished_out_of_order_are_appended_in_bucket_order(tmp_path: Path) -> None:
    from pipeline.chunk import ChunkStats
    from pipeline.chunk.stage import BucketDone, InBucketOrder

    def done(bucket: int) -> BucketDone:
        path = tmp_path / f"{bucket}.tmp"
        path.write_bytes(f"bucket {bucket}\n".encode())
        return BucketDone(bucket, ChunkStats(batches=1), {f"u{bucket}"}, path)

    out_path = tmp_path / "out"
    stats, users = ChunkStats(), set[str]()
    with out_path.open("wb") as out:
        in_order = InBucketOrder(out, stats, users)
        for bucket in (2, 0, 3, 1):
            in_order.add(bucket, done(bucket))
            if bucket == 0:
                assert in_order.written == 1  # 2 waits for 1
        assert in_order.written == 4
    assert out_path.read_text() == "".join(f"bucket {b}\n" for b in range(4))
    assert stats.batches == 4 and users == {"u0", "u1", "u2", "u3"}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture(scope="module")
def staged_slack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 synthetic Slack messages staged in 8 buckets (chunked on two processes)."""
    import pipeline.core.staging_buckets as sb
    from pipeline.core.config import SourceConfig

    root = tmp_path_factory.mktemp("slack")
    synthetic_slack(root / "export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sb, "choose_buckets", lambda files, target_bytes=0: 8)
        source = SourceConfig(kind="slack", path=root / "export", user_id="team")
        extract_source(source, root / "w")
    return root / "w"


@pytest.fixture
def chunking(
    staged_slack: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], set[int], Path]]:
    """A running two-process chunk (a tiny token budget keeps it busy for seconds) with
    its worker up."""
    from tests.test_hostile_processes import MEMOS_ETL, running, worker_children

    workdir = tmp_path / "w"
    shutil.copytree(staged_slack, workdir)
    command = [str(MEMOS_ETL), "chunk", "--workdir", str(workdir), "--workers", "2"]
    command += ["--max-tokens", "64", "--no-progress", "-q"]
    with running(
        command,
        tmp_path / "stderr.txt",
        lambda process, _: (
            bool(worker_children(process.pid)) and any((workdir / "batches").glob(".bucket-*.tmp"))
        ),
        60,
        "the worker never started",
    ) as (process, kids):
        yield process, kids, workdir


def test_sigterm_exits_130_removes_temp_files_and_stops_the_worker(
    chunking: tuple[subprocess.Popen[str], set[int], Path], tmp_path: Path
) -> None:
    from tests.test_hostile_processes import alive, wait_until

    process, kids, workdir = chunking
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 130, stderr
    assert stderr.startswith("error: interrupted") and len(stderr.strip().splitlines()) == 1
    assert not list((workdir / "batches").iterdir())
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "worker left behind"


def test_sigkill_leaves_no_worker_behind(
    chunking: tuple[subprocess.Popen[str], set[int], Path],
) -> None:
    from tests.test_hostile_processes import alive, wait_until

    process, kids, workdir = chunking
    process.kill()
    process.wait(timeout=60)
    at_kill = len(list((workdir / "batches").glob(".bucket-*.tmp")))
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "worker left behind"
    # it ended with its parent, not after chunking every bucket left (8 buckets)
    assert len(list((workdir / "batches").glob(".bucket-*.tmp"))) <= at_kill + 1


def test_two_processes_by_default_only_for_a_big_staging_on_two_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.chunk import stage

    monkeypatch.setattr(stage.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert stage.default_workers(stage.PARALLEL_MIN_BUCKETS) == 2
    assert stage.default_workers(stage.PARALLEL_MIN_BUCKETS - 1) == 1
    assert stage.default_workers(64, {"m1", "m2"}) == 2  # a plain set crosses to the worker

    class Planning:  # asked as it goes, keeping totals: must stay in this process
        def __contains__(self, item: object) -> bool:
            return False

    assert stage.default_workers(64, Planning()) == 1
    monkeypatch.setattr(stage.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert stage.default_workers(64) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_every_staged_message_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    from pipeline.chunk import chunk_workdir

    class Recorded:
        def __init__(self) -> None:
            self.total: int | None = None
            self.done = 0

        def start(self, desc: str, total: int | None = None, unit: str = "it") -> None:
            self.total = total

        def advance(self, n: int = 1) -> None:
            self.done += n

        def close(self) -> None:
            pass

    _stage_in_buckets(tmp_path, 8, monkeypatch)
    progress = Recorded()
    stats = chunk_workdir(tmp_path, ChunkLimits(), workers=workers, progress=progress)
    assert stats.messages > 0
    assert progress.total == stats.messages == progress.done


def test_chunk_on_two_processes_never_imports_pandas(staged_slack: Path, tmp_path: Path) -> None:
    """pyarrow imports pandas (0.3 s, 48 MB a process) on its first conversion of a Python
    value unless told it is absent; no command needs it. `PYTHONPROFILEIMPORTTIME` lists
    every module each process imports."""
    from tests.test_hostile_processes import MEMOS_ETL

    workdir = tmp_path / "w"
    shutil.copytree(staged_slack, workdir)
    command = [str(MEMOS_ETL), "chunk", "--workdir", str(workdir), "--workers", "2", "-q"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "pyarrow.compute" in imported  # the listing works
    # a refused attempt is listed as `pandas` alone; pandas itself loads `pandas.core`
    assert not any(name.startswith("pandas.") for name in imported)
    assert (workdir / "batches" / "batches.jsonl").stat().st_size > 0


def test_pandas_still_loads_where_pyarrow_really_needs_it() -> None:
    script = (
        "import sys\n"
        "import pyarrow as pa\n"
        "from pipeline.core.process_start import pyarrow_without_pandas\n"
        "pyarrow_without_pandas()\n"
        "pa.scalar('x'); pa.array([1, 2])\n"
        "print('pandas' in sys.modules)\n"
        "print(type(pa.table({'a': [1]}).to_pandas()).__name__)\n"
    )
    assert _printed(script) == ["False", "DataFrame"]
