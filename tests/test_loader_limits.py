"""The loader within an account's budget: 40309 and 40013 answers, weights, the budget a
load keeps to (account, `load.rate`, the embedded target), through the loader's seams."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import deque
from pathlib import Path

import pytest

from pipeline.core.batches import Batch
from pipeline.core.config import AccountConfig, LoadConfig, budget, load_config
from pipeline.core.errors import ConfigError
from pipeline.core.memos_api import id_count
from pipeline.core.tokens import messages_tokens
from pipeline.load.ledger import Ledger
from pipeline.load.loader import Endpoint, load_batches
from pipeline.load.policy import classify
from pipeline.load.stats import LoadStats
from tests.loader_fakes import Fake, FakeTime, make_batches


def run(
    tmp_path: Path,
    fake: Fake,
    batches: list[Batch],
    *,
    account: AccountConfig | None,
    embedded: bool = False,
    **cfg: object,
) -> tuple[LoadStats, FakeTime]:
    ft = FakeTime()
    settings = {"max_attempts": 6, **cfg}
    with Ledger.open(tmp_path) as ledger:
        stats = asyncio.run(
            load_batches(
                batches,
                ledger,
                Endpoint("http://memos.test/api", "k", embedded=embedded),
                LoadConfig.model_validate(settings),
                transport=fake.transport(),
                clock=ft.clock,
                sleep=ft.sleep,
                rng=random.Random(1),
                account=account,
            )
        )
    return stats, ft


def test_new_codes_are_in_the_error_table() -> None:
    assert classify(200, 40309).kind == "rate_limited"
    assert classify(200, 40013).kind == "too_large"


def test_40309_is_back_pressure_on_the_token_budget(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", 200, 40309, {"Retry-After": "2"})])
    batches = make_batches({"a": 6, "b": 6}, per_batch=2)
    account = AccountConfig(requests_per_second=50, tokens_per_minute=60_000)
    stats, ft = run(tmp_path, fake, batches, account=account)
    assert stats.complete
    assert stats.retries["token_limited"] == 1 and "rate_limited" not in stats.retries
    limits = stats.limits
    assert limits["token_limited"] == 1 and limits["rate_limited"] == 0
    assert limits["requests_per_second"] == 50  # the request budget is untouched
    assert limits["tokens_per_minute"] < 60_000  # the token budget settled lower
    assert sum(ft.sleeps) >= 2.0  # Retry-After honoured


def test_40013_splits_the_batch_in_order(tmp_path: Path) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", 200, 40013, None)])
    batches = make_batches({"a": 4}, per_batch=4)
    stats, _ = run(tmp_path, fake, batches, account=None, rate=1000.0)
    assert stats.complete and stats.split == 1
    assert fake.store[("u1", "a")] == [f"msg a {i}" for i in range(4)]


def test_tokens_bind_the_pace_of_a_load_at_their_exact_count(tmp_path: Path) -> None:
    """The batch file's `tokens` may be a byte bound (here three times the real count); the
    budget is charged what the messages really hold, or a load would use a third of it."""
    fake = Fake()
    batches = [
        dataclasses.replace(b, tokens=3 * messages_tokens(b.body["messages"]))
        for b in make_batches({f"c{i}": 2 for i in range(30)}, per_batch=2)
    ]
    exact = [messages_tokens(b.body["messages"]) for b in batches]
    account = AccountConfig(requests_per_second=50, tokens_per_minute=1200)  # 20 tokens/s
    stats, ft = run(tmp_path, fake, batches, account=account)
    assert stats.complete
    # all but the first call's tokens at 20 tokens/s, far above 30 calls / 50 per s = 0.6 s
    assert stats.duration == pytest.approx((sum(exact) - exact[0]) / 20, abs=1.0)


def test_the_embedded_target_has_no_client_side_limit(tmp_path: Path) -> None:
    fake = Fake()
    batches = make_batches({f"c{i}": 2 for i in range(30)}, per_batch=2)
    account = AccountConfig(requests_per_second=1, tokens_per_minute=1200)
    stats, ft = run(tmp_path, fake, batches, account=account, embedded=True)
    assert stats.complete and sum(ft.sleeps) == 0
    assert stats.limits["requests_per_second"] is None
    assert stats.limits["tokens_per_minute"] is None


def test_a_group_chat_request_costs_one_request_per_user() -> None:
    assert id_count({"user_id": "u1"}) == 1
    assert id_count({"user_id": ["u1", "u2", "u3"]}) == 3


def test_budget_resolution() -> None:
    account = AccountConfig()
    assert budget(LoadConfig(), account) == (50, 400_000)
    assert budget(LoadConfig(rate=10), account) == (10, 400_000)
    assert budget(LoadConfig(), account, embedded=True) == (None, None)
    assert budget(LoadConfig(rate=5), account, embedded=True) == (5, None)
    assert budget(LoadConfig(), None) == (None, None)


def test_account_section_sets_the_chunk_default(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("account:\n  requests_per_second: 10\n  max_tokens_per_call: 2000\n")
    cfg = load_config(old, env={})
    assert cfg.chunk.max_tokens == 2000 and cfg.account.requests_per_second == 10
    new = tmp_path / "new.yaml"
    new.write_text("chunk:\n  max_messages: 20\n")
    assert load_config(new, env={}).chunk.max_tokens == 4000
    bad = tmp_path / "bad.yaml"
    bad.write_text("account:\n  max_tokens_per_call: 4000\nchunk:\n  max_tokens: 8000\n")
    with pytest.raises(ConfigError, match="max_tokens_per_call"):
        load_config(bad, env={})
