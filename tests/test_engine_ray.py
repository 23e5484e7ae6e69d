"""`run --engine ray`: two accounts x 8 buckets as Ray tasks into faulty `serve`s, one task
killed mid-load: every message exactly once, in order, each account's budget kept across
its tasks. Skipped without the extra (`pip install -e '.[dev,ray]'`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -e '.[ray]'")

from pipeline.engines import ray_engine  # noqa: E402
from pipeline.engines.slices import run_accounts  # noqa: E402
from tests.engine_cases import (  # noqa: E402
    KEY,
    accounts,
    assert_budget_kept,
    assert_exactly_once_in_order,
    run_engine_cli,
)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module (its start-up costs seconds); workers inherit the key."""
    previous = os.environ.get("MEMOS_API_KEY")
    os.environ["MEMOS_API_KEY"] = KEY
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("MEMOS_API_KEY", None)
        else:
            os.environ["MEMOS_API_KEY"] = previous


def test_two_accounts_by_bucket_with_a_killed_task(tmp_path: Path) -> None:
    budgets = [("acme", 40.0, 60_000), ("globex", 25.0, 30_000)]
    with accounts(tmp_path, budgets, conversations=24, per=6) as accs:
        pipelines = [a.pipeline for a in accs]
        runs = run_accounts(pipelines, ray_engine.run_slices, buckets=8, kill_after=3)
        marker = pipelines[0].config.workdir / ".engine-kill-marker"
        assert marker.exists()  # a task died after a batch landed, before its ledger said so
        for acc, run in zip(accs, runs, strict=True):
            assert run.load.complete, run.load.to_json()
            assert len(run.buckets) == 8
            assert run.load.retries  # the faults were met
            assert_exactly_once_in_order(acc)
            assert_budget_kept(acc, run)
        assert sum(r.load.verified_landed for r in runs) >= 1  # read back, not resent


def test_run_engine_ray_through_the_cli(tmp_path: Path) -> None:
    """`memos-etl run --engine ray` joins the running Ray (as it would `RAY_ADDRESS`'s)."""
    with accounts(tmp_path, [("solo", 50.0, 100_000)], conversations=10, per=4) as accs:
        config = tmp_path / "solo" / "config.yaml"
        (account,) = run_engine_cli(config, "ray")["accounts"]
        assert account["load"]["complete"] and len(account["buckets"]) == 4
        assert account["budget_peaks"]["requests_per_1s"] > 0
        assert_exactly_once_in_order(accs[0])


@pytest.mark.parametrize(("cpus", "tasks"), [(2, 8), (2, 16), (2, 3), (64, 8), (1, 40)])
def test_a_run_s_tasks_fit_the_cluster_at_once(cpus: int, tasks: int) -> None:
    """Load tasks wait on the network: reserving a CPU each ran a 2-CPU machine's 8 buckets
    two at a time (0.64x the in-process engine). Every task of a run must fit at once."""
    each = ray_engine.task_cpus(cpus, tasks)
    assert 0 < each <= 1.0
    assert each * tasks <= cpus or each == ray_engine.MIN_TASK_CPUS
    assert each * tasks > cpus / 2 or each == 1.0  # no CPU left idle needlessly
