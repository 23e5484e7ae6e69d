"""The dry run's load plan: duration from both budgets, token use per call, policies."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.batches import read_batches
from pipeline.core.tokens import messages_tokens
from pipeline.dryrun.plan import ChannelTally, build_plan, slack_channel
from pipeline.dryrun.tokens import COUNT_ALL, TokenSample
from tests.loader_fakes import make_batches

REPO = Path(__file__).resolve().parents[1]


def plan(**kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "calls": 1000,
        "tokens": 2_000_000,
        "batch_tokens": [2000] * 1000,
        "requests_per_second": 50.0,
        "tokens_per_minute": 400_000,
        "max_tokens_per_call": 40_000,
        "max_tokens": 4000,
        "max_messages": 50,
    }
    args.update(kw)
    return build_plan(**args)  # type: ignore[arg-type]


def test_duration_is_the_tighter_budget() -> None:
    p = plan()
    assert p["seconds_for_calls"] == 20.0  # 1000 calls at 50/s
    assert p["seconds_for_tokens"] == 300.0  # 2M tokens at 400k/min
    assert p["estimated_seconds"] == 300.0 and p["bound_by"] == "tokens"
    q = plan(tokens=10_000, batch_tokens=[10] * 1000)
    assert q["estimated_seconds"] == 20.0 and q["bound_by"] == "requests"
    r = plan(tokens_per_minute=None)
    assert r["estimated_seconds"] == 20.0 and r["seconds_for_tokens"] is None


def test_share_of_each_calls_token_budget() -> None:
    p = plan(batch_tokens=[100] * 50 + [4000] * 50)
    used = p["call_budget_used"]
    assert used == {"median": 0.1, "p90": 0.1, "max": 0.1}  # 4,000 of 40,000
    assert p["tiny_batches"] is False


def test_slack_channel_of_a_conversation() -> None:
    assert slack_channel("slack:general:1712345678.000100") == "slack:general"
    assert slack_channel("slack:general") == "slack:general"
    assert slack_channel("chatgpt:abc") is None


def test_tiny_thread_batches_get_the_policies_and_a_recommendation() -> None:
    tally = ChannelTally()
    for i in range(600):  # 600 one-call threads of ~79 tokens in two channels
        tally.add(f"slack:c{i % 2}:{i}.0001", 79, 3)
    p = plan(
        calls=600,
        tokens=600 * 79,
        batch_tokens=[79] * 600,
        channels=tally,
        slack_policy="thread",
    )
    assert p["tiny_batches"] is True
    names = [x["conversation"] for x in p["policies"]]
    assert names == ["thread", "session", "channel"]
    channel = p["policies"][2]
    assert channel["calls"] == 2 * 18  # 300 x 3 messages per channel, 50 per call
    assert "session" in str(p["recommendation"])
    assert p["policies"][1]["keeps_threads"] is True


def test_no_policies_when_batches_are_full() -> None:
    tally = ChannelTally()
    tally.add("slack:c:1.0", 3000, 40)
    p = plan(batch_tokens=[3000] * 1000, channels=tally, slack_policy="thread")
    assert p["policies"] == [] and p["recommendation"] is None


def _validate_slack_sample(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """`memos-etl validate` of the Slack sample at 10 req/s and 60,000 tokens/min: the
    config's path and report.json."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "user_id: team\nsources:\n"
        f"  - kind: slack\n    path: {REPO / 'data/samples/slack_export'}\n"
        "account:\n  requests_per_second: 10\n  tokens_per_minute: 60000\n"
        f"workdir: {tmp_path / 'w'}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(cfg), "--json"])
    assert result.exit_code in (0, 3), result.stderr
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    return cfg, report


def test_validate_reports_the_plan(tmp_path: Path) -> None:
    _, report = _validate_slack_sample(tmp_path)
    p = report["plan"]
    assert p["requests_per_second"] == 10 and p["tokens_per_minute"] == 60000
    assert p["estimated_seconds"] == pytest.approx(
        max(p["calls"] / 10, p["tokens"] / 60000 * 60), abs=0.1
    )
    assert report["totals"]["estimated_seconds"] == p["estimated_seconds"]


def test_plan_tokens_are_exact_counts_not_the_batch_files_byte_bounds(tmp_path: Path) -> None:
    """Most batches record only a byte bound of their tokens (nothing needed counting);
    the plan's tokens, and so its duration, are the messages' exact counts."""
    cfg, report = _validate_slack_sample(tmp_path)
    assert CliRunner().invoke(main, ["chunk", "--config", str(cfg)]).exit_code == 0
    batches = list(read_batches(tmp_path / "w"))
    exact = [messages_tokens(b.body["messages"]) for b in batches]
    assert sum(b.tokens for b in batches) > sum(exact)  # the file holds byte bounds
    assert report["plan"]["tokens"] == report["totals"]["tokens"] == sum(exact)
    assert report["plan"]["tokens_estimated"] is False
    assert report["batches"]["tokens"]["max"] == max(exact)


def test_token_sample_estimates_the_total_beyond_the_counted_batches() -> None:
    batches = make_batches({f"c{i}": 30 for i in range(200)}, per_batch=1)  # 6,000 batches
    bound = [
        dataclasses.replace(b, tokens=4 * messages_tokens(b.body["messages"])) for b in batches
    ]
    sample = TokenSample()
    for batch in bound:
        sample.add(batch)
    exact = sum(messages_tokens(b.body["messages"]) for b in batches)
    assert not sample.complete and COUNT_ALL < len(sample.exact) < len(batches)
    assert sample.total() == pytest.approx(exact, rel=0.02)
