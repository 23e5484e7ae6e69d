"""Shared set-up of the engine tests: accounts with CSV exports, each loading into its own
`serve` (the real local server, with faults and a strict per-account ceiling), and the
checks every engine must pass: every message once, each conversation in order, and the
budget kept in every window."""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.engines.slices import AccountRun
from pipeline.server import LocalServer, ServerConfig, start_server
from pipeline.server.faults import FaultConfig
from pipeline.server.store import conversation_messages, message_counts
from pipeline.tenants import AccountPipeline

KEY = "sk-engines-0123456789abcdef"
SLACK = 1.25
"""The server's ceiling over the account's budget. The shared schedule itself is checked
exactly (`assert_budget_kept`: reservations within the budget plus the limiter's 0.1 s of
catch-up); the server sees arrival times, which a busy machine shifts by tens of ms (a
task's wait is timed from the actor's answer), so its strict sliding window gets room for
that. Buckets that did not share one budget would arrive at several times the ceiling."""


@dataclass
class Account:
    name: str
    rps: float
    tpm: int
    data: list[dict[str, str]]
    pipeline: AccountPipeline
    server: LocalServer
    db: Path


def chat_rows(account: str, conversations: int, per_conversation: int) -> list[dict[str, str]]:
    """Messages of many conversations, interleaved in time, each with a unique content."""
    rng = random.Random(account)
    out = []
    for k in range(per_conversation):
        for c in range(conversations):
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(6))
            out.append(
                {
                    "message_id": f"{account}-c{c}-m{k}",
                    "conversation_id": f"{account}-conv-{c}",
                    "user_id": f"{account}-user",
                    "role": "user" if k % 2 == 0 else "assistant",
                    "content": f"{account} conversation {c} message {k}: {words}",
                    "timestamp": f"2025-03-01T{k // 60:02d}:{k % 60:02d}:{c % 60:02d}Z",
                }
            )
    return out


def write_account(
    tmp_path: Path,
    name: str,
    data: Sequence[dict[str, str]],
    server: LocalServer,
    rps: float,
    tpm: int,
) -> Path:
    """A config loading `data` into `server` (target memos) within the account's budget."""
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    export = folder / "chats.csv"
    with export.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    config = folder / "config.yaml"
    config.write_text(
        f"workdir: {folder / 'work'}\n"
        f"sources:\n  - kind: csv\n    path: {export}\n"
        "chunk:\n  max_messages: 3\n"
        f"account:\n  requests_per_second: {rps}\n  tokens_per_minute: {tpm}\n"
        f"load:\n  target: memos\n  base_url: {server.url}\n  backoff_initial: 0.05\n"
        "  backoff_max: 0.5\n  max_attempts: 12\n"
    )
    return config


FAULTS = {"fail_rate": 0.08, "drop_before_rate": 0.04, "drop_after_rate": 0.04, "latency_ms": 5}


@contextmanager
def accounts(
    tmp_path: Path, budgets: Sequence[tuple[str, float, int]], conversations: int, per: int
) -> Iterator[list[Account]]:
    """Start one faulty `serve` per account (ceiling: the account's budget x `SLACK`,
    counted in a sliding window) and write each account's export and config."""
    out = []
    with ExitStack() as stack:
        for i, (name, rps, tpm) in enumerate(budgets):
            db = tmp_path / f"{name}-server.sqlite"
            faults = FaultConfig(
                qps_limit=rps * SLACK,
                tpm_limit=int(tpm * SLACK),
                limit_mode="sliding",
                seed=100 + i,
                **FAULTS,  # type: ignore[arg-type]
            )
            server = stack.enter_context(
                start_server(ServerConfig(db_path=db, token=KEY, faults=faults))
            )
            data = chat_rows(name, conversations, per)
            config = write_account(tmp_path, name, data, server, rps, tpm)
            pipeline = AccountPipeline(name, load_config(config))
            out.append(Account(name, rps, tpm, data, pipeline, server, db))
        yield out


def assert_exactly_once_in_order(account: Account) -> None:
    """The server holds each message once, and each conversation in its original order."""
    held: Counter[str] = Counter()
    for user, conv in message_counts(account.db):
        got = [m["content"] for m in conversation_messages(account.db, user, conv)]
        held.update(got)
        want = [r["content"] for r in account.data if r["conversation_id"] == conv]
        assert got == want, f"{conv}: order or content differs"
    want_all = Counter(r["content"] for r in account.data)
    assert held == want_all, f"missing {want_all - held}, duplicated {held - want_all}"


def assert_budget_kept(account: Account, run: AccountRun) -> None:
    """No request was over the server's ceiling, and the account's shared schedule kept
    its requests/s and tokens/min at every scale (a shared budget catches up nothing)."""
    stats = account.server.stats
    assert stats.rate_limited == 0 and stats.token_limited == 0
    peaks = run.peaks
    assert 0 < peaks["requests_per_1s"] <= account.rps + 1
    tokens_per_s = account.tpm / 60
    assert 0 < peaks["tokens_per_10s"] <= tokens_per_s * 10 + peaks["max_call_tokens"]
    assert peaks["tokens_per_60s"] <= account.tpm + peaks["max_call_tokens"]


def run_engine_cli(config: Path, engine: str, buckets: int = 4) -> dict[str, Any]:
    """`memos-etl run CONFIG --engine ENGINE --buckets N --json`, which must succeed; its
    JSON summary."""
    result = CliRunner().invoke(
        main, ["run", str(config), "--engine", engine, "--buckets", str(buckets), "--json"]
    )
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = orjson.loads(result.stdout)
    return out
