"""The dry run on several processes: the same report as on one, and failures and signals
that end it the way they end a one-process run (one line, no worker left)."""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.core.errors import InputError
from pipeline.dryrun.buckets import BucketPart, DryRunJob
from pipeline.dryrun.tokens import COUNT_ALL, TokenSample
from tests.conftest import synthetic_slack

BUCKETS = 8


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 synthetic Slack messages (20 channels, 50 users)."""
    return synthetic_slack(tmp_path_factory.mktemp("slack") / "export", 12_000)


def _config(folder: Path, export: Path, max_tokens: int = 200) -> Path:
    """A config for `export` whose tiny batches make thousands of them: the exact token
    count of the first `COUNT_ALL` batches then spans several buckets."""
    config = folder / "validate.yaml"
    config.write_text(
        f"workdir: {folder / 'work'}\nuser_id: team\n"
        f"sources:\n  - kind: slack\n    path: {export}\n"
        f"chunk:\n  max_tokens: {max_tokens}\n  max_messages: 4\n"
    )
    return config


@pytest.fixture
def in_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extracts in this process stage in `BUCKETS` buckets."""
    import pipeline.core.staging_buckets as sb

    monkeypatch.setattr(sb, "choose_buckets", lambda files, target_bytes=0: BUCKETS)


def _validate(config: Path, *extra: str) -> Any:
    from pipeline.cli import main

    return CliRunner().invoke(main, ["validate", str(config), "--no-progress", *extra])


def _delivered(workdir: Path, share: int) -> dict[str, str]:
    """A ledger recording one staged message in `share` as delivered (every other one of
    them with content changed since), as a user's earlier run would have left."""
    import pyarrow.parquet as pq

    from pipeline.core.models import stable_id
    from pipeline.load.ledger import Ledger

    ids = sorted(pq.read_table(workdir / "staging", columns=["message_id"]).column(0).to_pylist())[
        ::share
    ]
    rows = {m: stable_id("changed" if i % 2 else m, length=16) for i, m in enumerate(ids)}
    with Ledger.open(workdir) as ledger:
        ledger.conn.executemany(
            "insert into delivered_messages values (?, ?, ?, 'b', '2026-01-01')",
            [(ledger.dest, m, h) for m, h in rows.items()],
        )
    return rows


@dataclass(frozen=True)
class WorkerFirst(DryRunJob):
    """A dry run whose first bucket (this process's) is checked only once a worker has
    finished one of the later ones: buckets are finished out of order."""

    def __call__(self, bucket: int) -> BucketPart:
        mark = self.workdir.parent / "a-worker-finished-a-bucket"
        if multiprocessing.parent_process() is not None:
            part = super().__call__(bucket)
            mark.touch()
            return part
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().__call__(bucket)


def test_one_and_two_processes_write_the_same_report(
    tmp_path: Path, export: Path, in_buckets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI, with a ledger and --since, buckets finished out of order:
    report.json is byte for byte the same on one, two and three processes, and its counts
    add up."""
    import pipeline.dryrun.validate as dry

    config = _config(tmp_path, export)
    first = _validate(config, "--workers", "1")
    assert first.exit_code in (0, 3), first.output
    _delivered(tmp_path / "work", 7)
    reports = []
    for workers in ("1", "2", "3"):
        if workers != "1":
            monkeypatch.setattr(dry, "DryRunJob", WorkerFirst)
        result = _validate(config, "--workers", workers, "--since", "2023-04-01", "--json")
        assert result.exit_code in (0, 3), result.output
        reports.append((tmp_path / "work" / "report.json").read_bytes())
    assert (tmp_path / "a-worker-finished-a-bucket").exists()
    assert reports[1] == reports[0] and reports[2] == reports[0]
    report = json.loads(reports[0])
    t = report["totals"]
    assert len(list((tmp_path / "work" / "staging").glob("*/bucket=*"))) == BUCKETS
    assert t["read"] == t["staged"] + t["skipped"] + t["quarantined"]
    assert t["staged"] == t["messages_to_send"] + t["already_delivered"] + t["before_since"]
    assert t["already_delivered"] > 0 and t["before_since"] > 0
    assert report["ledger"]["changed"] > 0
    plan = report["plan"]
    assert (
        t["batches"] > 2 * COUNT_ALL > 2 * t["batches"] / BUCKETS
        and plan["tokens_estimated"] is True
    )
    assert report["batches"]["tokens_counted_batches"] > COUNT_ALL


@dataclass(frozen=True)
class FailsInWorker(DryRunJob):
    """A dry run whose worker process fails on its first bucket (as on a damaged staged
    file); this process waits for that before checking its own bucket."""

    def __call__(self, bucket: int) -> BucketPart:
        mark = self.workdir / "worker-failed"
        if multiprocessing.parent_process() is not None:
            mark.touch()
            raise InputError(f"staged file is damaged: bucket {bucket} (test)")
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().__call__(bucket)


def test_a_worker_error_is_the_usual_one_line_error(
    tmp_path: Path, export: Path, in_buckets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.dryrun.validate as dry

    monkeypatch.setattr(dry, "DryRunJob", FailsInWorker)
    result = _validate(_config(tmp_path, export), "--workers", "2")
    assert (tmp_path / "work" / "worker-failed").exists()
    assert result.exit_code == 3, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: staged file is damaged: bucket ") and "(test)" in line
    assert not (tmp_path / "work" / "report.json").exists()


def test_token_parts_merged_in_bucket_order_equal_one_sample() -> None:
    """Buckets checked apart, each counting exactly as many of its first batches as may
    still be among the run's first `COUNT_ALL`, add up to the one-process sample."""
    rng = random.Random(5)
    buckets = [
        [
            SimpleNamespace(
                batch_id=f"b{n}-{i}",
                tokens=rng.randrange(10, 90),
                body={"messages": [{"role": "user", "content": "word " * rng.randrange(1, 9)}]},
            )
            for i in range(n)
        ]
        for n in (700, 0, 900, 1, 600, 1500, 40)
    ]
    whole = TokenSample()
    for batch in (b for bucket in buckets for b in bucket):
        whole.add(batch)  # type: ignore[arg-type]
    for ahead in (True, False):  # heads as long as may be needed, or known exactly
        merged, before = TokenSample(), 0
        for bucket in buckets:
            part = TokenSample.part(COUNT_ALL if ahead else max(0, COUNT_ALL - before))
            for batch in bucket:
                part.add(batch)  # type: ignore[arg-type]
            merged.merge(part)
            before += len(bucket)
        assert merged == whole
        assert merged.total() == whole.total() and not merged.complete


STAGE_IN_BUCKETS = f"""
import sys
import pipeline.core.staging_buckets as sb
sb.choose_buckets = lambda files, target_bytes=0: {BUCKETS}
from pipeline.cli import main
main(sys.argv[1:], prog_name="memos-etl")
"""
"""`memos-etl` in a process of its own, staging in `BUCKETS` buckets."""


@pytest.fixture(scope="module")
def big_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 synthetic Slack messages: with a tiny token budget, seconds of work."""
    return synthetic_slack(tmp_path_factory.mktemp("slack") / "export")


@pytest.fixture
def validating(
    tmp_path: Path, big_export: Path
) -> Iterator[tuple[subprocess.Popen[str], set[int], Path]]:
    """A two-process validate in its bucket phase, its worker up."""
    from tests.test_hostile_processes import running, worker_children

    config = _config(tmp_path, big_export, max_tokens=64)
    command = [sys.executable, "-c", STAGE_IN_BUCKETS, "validate", str(config)]
    command += ["--workers", "2", "--no-progress", "-q"]

    def checking(process: subprocess.Popen[str], _: set[int]) -> bool:
        """Extract is done (its buckets written) and a worker process checks buckets."""
        staged = (tmp_path / "work" / "staging" / "slack" / "_buckets.json").exists()
        return staged and bool(worker_children(process.pid))

    with running(
        command,
        tmp_path / "stderr.txt",
        checking,
        120,
        "the bucket phase never started on two processes",
    ) as (process, kids):
        yield process, kids, tmp_path


def test_sigterm_exits_130_with_one_line_and_no_worker_left(
    validating: tuple[subprocess.Popen[str], set[int], Path],
) -> None:
    from tests.test_hostile_processes import alive, wait_until

    process, kids, folder = validating
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stderr = (folder / "stderr.txt").read_text()
    assert process.returncode == 130, stderr
    assert stderr.startswith("error: interrupted") and len(stderr.strip().splitlines()) == 1
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "worker left behind"
    assert (
        not list((folder / "work").glob("**/*.tmp"))
        and not (folder / "work" / "report.json").exists()
    )


def test_sigkill_leaves_no_worker_behind(
    validating: tuple[subprocess.Popen[str], set[int], Path],
) -> None:
    from tests.test_hostile_processes import alive, wait_until

    process, kids, _ = validating
    process.kill()
    process.wait(timeout=60)
    assert wait_until(lambda: not any(alive(pid) for pid in kids), 30), "worker left behind"


def test_a_read_lock_left_held_only_delays_a_read(
    tmp_path: Path, export: Path, in_buckets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processes take turns reading buckets; a process killed while reading leaves the
    lock held, and the other reads anyway after `READ_WAIT` instead of waiting forever."""
    import threading

    import pipeline.dryrun.buckets as buckets
    import pipeline.dryrun.validate as dry

    jobs: list[DryRunJob] = []

    def capture(job: DryRunJob, *args: Any, **kwargs: Any) -> None:
        jobs.append(job)
        raise InputError("captured")

    monkeypatch.setattr(dry, "in_parallel", capture)
    assert "captured" in _validate(_config(tmp_path, export), "--workers", "2").output
    (job,) = jobs
    monkeypatch.setattr(buckets, "READ_WAIT", 0.2)
    assert job.reading.acquire(timeout=1)  # as if a killed worker held it
    rows: list[int] = []
    reader = threading.Thread(target=lambda: rows.append(job.read(1).num_rows), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert rows and rows[0] > 0
