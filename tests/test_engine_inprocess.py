"""`run --engine inprocess`: two accounts by bucket into faulty `serve`s, exactly once, in
order, each account's budget shared by its buckets (no Ray needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import pipeline.engines
from pipeline.cli import main
from pipeline.core.destination import Destination, local_default
from pipeline.core.workdir import bucket_ledger_dir
from pipeline.engines import inprocess
from pipeline.engines import slices as slices_module
from pipeline.engines.slices import (
    SHARED_CATCH_UP,
    AccountRun,
    SliceResults,
    budget_peaks,
    run_accounts,
)
from pipeline.load.ratelimit import AccountLimiter
from pipeline.load.stats import LoadStats
from tests.engine_cases import (
    KEY,
    accounts,
    assert_budget_kept,
    assert_exactly_once_in_order,
    run_engine_cli,
)
from tests.limits_sim import VirtualLoop, run_virtual
from tests.loader_fakes import make_batches


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_API_KEY", KEY)


def test_two_accounts_by_bucket_exactly_once_within_each_budget(tmp_path: Path) -> None:
    budgets = [("acme", 40.0, 60_000), ("globex", 25.0, 30_000)]
    with accounts(tmp_path, budgets, conversations=24, per=6) as accs:
        runs = run_accounts([a.pipeline for a in accs], inprocess.run_slices, buckets=8)
        for acc, run in zip(accs, runs, strict=True):
            assert run.load.complete, run.load.to_json()
            assert len(run.buckets) == 8  # 24 conversations fill all 8 buckets
            assert run.load.retries  # the faults were met
            assert_exactly_once_in_order(acc)
            assert_budget_kept(acc, run)
            ledgers = bucket_ledger_dir(acc.pipeline.config.workdir, run.destination.id)
            assert len(list(ledgers.glob("bucket-*.sqlite"))) == 8
            assert not list(ledgers.glob("bucket-*.jsonl"))  # every slice was delivered
        # a second run sends nothing, even cut into other buckets: the driver drops what
        # any bucket ledger has delivered
        again = run_accounts([a.pipeline for a in accs], inprocess.run_slices, buckets=4)
        assert all(r.load.sent_messages == 0 and not r.buckets for r in again)
        for acc in accs:
            assert_exactly_once_in_order(acc)


def test_run_engine_inprocess_through_the_cli(tmp_path: Path) -> None:
    with accounts(tmp_path, [("solo", 50.0, 100_000)], conversations=10, per=4) as accs:
        config = tmp_path / "solo" / "config.yaml"
        out = run_engine_cli(config, "inprocess")
        (account,) = out["accounts"]
        assert out["engine"] == "inprocess"
        assert account["load"]["sent"]["messages"] + account["load"]["verified_messages"] == 40
        assert len(account["buckets"]) == 4
        assert_exactly_once_in_order(accs[0])


def test_engines_refuse_the_embedded_store(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path / 'w'}\nsources:\n  - kind: csv\n    path: x.csv\n")
    result = CliRunner().invoke(main, ["run", str(config), "--engine", "inprocess"])
    assert result.exit_code != 0
    assert "memos-etl serve" in result.output


def test_engine_ray_without_the_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "pipeline.engines.ray_engine", raising=False)
    monkeypatch.delattr(pipeline.engines, "ray_engine", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path / 'w'}\nsources:\n  - kind: csv\n    path: x.csv\n")
    result = CliRunner().invoke(main, ["run", str(config), "--engine", "ray"])
    assert result.exit_code != 0
    assert "pip install 'memos-etl[ray]'" in result.output


def test_a_plain_run_after_an_engine_run_resends_nothing(tmp_path: Path) -> None:
    """Engines record deliveries in per-bucket ledgers; `run` and `load` without an engine,
    into the same destination, adopt them: nothing is sent twice, and `status` counts them."""
    with accounts(tmp_path, [("mixed", 50.0, 100_000)], conversations=10, per=4) as accs:
        config = tmp_path / "mixed" / "config.yaml"
        first = CliRunner().invoke(
            main, ["run", str(config), "--engine", "inprocess", "--buckets", "4", "--json"]
        )
        assert first.exit_code == 0, first.output
        again = CliRunner().invoke(main, ["run", str(config), "--json"])
        assert again.exit_code == 0, again.output
        load = orjson.loads(again.stdout)["load"]
        assert load["sent"]["messages"] == 0, load
        assert load["already_delivered"]["messages"] == 40, load
        assert_exactly_once_in_order(accs[0])
        status = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
        dests = orjson.loads(status.stdout)["destinations"]
        assert [d["delivered_messages"] for d in dests] == [40], dests


def test_history_shows_each_engine_run_and_a_rerun_counts_what_it_skipped(
    tmp_path: Path,
) -> None:
    """`history` has one line per `run --engine` (it read only plain loads), and a rerun
    says it found everything already delivered instead of "sent 0, already delivered 0"."""
    with accounts(tmp_path, [("solo", 50.0, 100_000)], conversations=10, per=4) as accs:
        config = tmp_path / "solo" / "config.yaml"
        run_engine_cli(config, "inprocess")
        (again,) = run_engine_cli(config, "inprocess")["accounts"]
        assert again["load"]["sent"]["messages"] == 0
        assert again["load"]["already_delivered"]["messages"] == 40
        shown = CliRunner().invoke(main, ["history", "--config", str(config), "--json"])
        assert shown.exit_code == 0, shown.output
        newest, first = orjson.loads(shown.stdout)["runs"]
        assert "--engine inprocess" in first["command"]
        assert first["sent"] + first["verified"] == 40
        assert (newest["sent"], newest["already_delivered"]) == (0, 40)
        assert first["requests"] > 0 and newest["requests"] == 0
        assert_exactly_once_in_order(accs[0])


def test_a_shared_budget_never_bursts_over_the_account_rate_after_falling_behind() -> None:
    """Tasks that fell behind (all busy, then all asking at once) must not be handed the
    missed slots at once: that burst measured 56 requests in one second at 50/s."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        now[0] += max(seconds, 0.0)

    async def schedule() -> list[tuple[float, float, float]]:
        limiter = AccountLimiter(50.0, None, clock=clock, sleep=sleep, catch_up=SHARED_CATCH_UP)
        granted = []
        for i in range(600):
            if i % 100 == 99:
                now[0] += 0.5  # every task busy: slots go by unused
            ticket = await limiter.acquire()
            granted.append((ticket.started, 1.0, 0.0))
        return granted

    peaks = budget_peaks(asyncio.run(schedule()))
    assert peaks["requests_per_1s"] <= 50 + 1, peaks


def test_an_engine_load_lasts_from_its_first_bucket_s_start_to_its_last_one_s_end() -> None:
    """With fewer workers than buckets the buckets run a few at a time: the load's duration
    (and so its requests/s) must span them all, not be the longest bucket's."""
    two_at_a_time = {
        b: LoadStats(duration=1.0, started_at=1_000.0 + (b // 2)) for b in range(4)
    }  # buckets 0-1 from second 0, 2-3 from second 1
    run = AccountRun("solo", Destination("memos", "http://x", "solo"))
    run.add(SliceResults(two_at_a_time))
    assert run.load.duration == 2.0


def test_slices_leave_out_a_message_met_again_in_a_later_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slices are written a window at a time and all before any is delivered: the same
    message (id and content) in two conversations, windows apart, goes out once."""
    monkeypatch.setattr(slices_module, "WINDOW", 2)
    batches = make_batches({f"c{i}": 2 for i in range(6)}, per_batch=2)
    again = batches[-1]  # the first batch's message again, in another conversation
    copy = dataclasses.replace(
        again,
        batch_id="again",
        message_ids=(batches[0].message_ids[0],),
        content_hashes=(batches[0].content_hashes[0],),
        body={**again.body, "messages": [batches[0].body["messages"][0]]},
    )
    plan = slices_module.write_slices(
        tmp_path, local_default(tmp_path), [*batches, copy], 4, resend=False
    )
    written = [
        orjson.loads(line)
        for path in sorted(bucket_ledger_dir(tmp_path, local_default(tmp_path).id).glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]
    ids = [mid for b in written for mid in b["message_ids"]]
    assert sorted(ids) == sorted(mid for b in batches for mid in b.message_ids)
    assert sum(plan.counts.values()) == len(batches)
    assert not list(bucket_ledger_dir(tmp_path, local_default(tmp_path).id).glob(".seen*"))


def test_a_late_wake_does_not_crowd_a_second_of_the_shared_budget() -> None:
    """A loaded event loop wakes every request due in a busy stretch at its end: sent
    then, those requests land in the next second on top of its own, which measured 56
    sends in one second at 50/s. Woken more than a slot late, a request takes a new slot."""

    async def main(loop: VirtualLoop) -> list[tuple[float, float, float]]:
        busy = [(start, start + 0.15) for start in (2.0, 4.3, 6.61, 8.05)]
        began = loop.time()

        async def sleep(seconds: float) -> None:
            due = loop.time() + seconds
            for start, end in busy:
                if began + start <= due < began + end:
                    due = began + end  # the loop was busy: every wake in it comes at its end
            await asyncio.sleep(due - loop.time())

        limiter = AccountLimiter(
            50.0, None, clock=loop.time, sleep=sleep, catch_up=SHARED_CATCH_UP, ramp=False
        )
        sent: list[tuple[float, float, float]] = []

        async def worker() -> None:
            while loop.time() < began + 10.0:
                await limiter.acquire()
                sent.append((loop.time(), 1.0, 0.0))  # when it actually leaves
                await asyncio.sleep(1.0)  # its answer

        await asyncio.gather(*(worker() for _ in range(60)))
        return sent

    sent = run_virtual(main)
    assert len(sent) >= 0.9 * 50 * 10  # the budget is still used
    assert budget_peaks(sent)["requests_per_1s"] <= 50 + 1, budget_peaks(sent)
