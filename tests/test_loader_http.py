"""The loader over real HTTP against the local server's fault injection (127.0.0.1).

Every test checks the server's own store: each message exactly once, in order.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.batches import Batch, write_batches
from pipeline.core.config import LoadConfig
from pipeline.incremental import delivered_message_hashes
from pipeline.load.entry import load_workdir
from pipeline.load.ledger import Ledger
from pipeline.load.stats import LoadStats
from pipeline.load.targets import Endpoint
from pipeline.server import LocalServer, ServerConfig, start_server
from pipeline.server.faults import FaultConfig, ForcedAnswer
from pipeline.server.store import conversation_messages, message_counts
from tests.loader_fakes import make_batches

KEY = "sk-live-0123456789abcdef"
FAST = {
    "rate": 1000.0,
    "max_in_flight": 16,
    "max_attempts": 12,
    "backoff_initial": 0.005,
    "backoff_max": 0.05,
    "timeout": 5.0,
}


@contextmanager
def serve(
    tmp_path: Path,
    token: str | None = None,
    max_input_tokens: int = 20000,
    refill: float | None = None,
    **faults: Any,
) -> Iterator[LocalServer]:
    """A local server; with `refill`, its QPS bucket gains `refill` tokens per request
    (a request-counting clock), so the share of rate-limited answers is independent of
    machine speed: refill 0.95 rate-limits about 5% of requests."""
    config = ServerConfig(
        db_path=tmp_path / "server.sqlite",
        token=token,
        max_input_tokens=max_input_tokens,
        faults=FaultConfig(**faults),
    )
    clock = time.monotonic
    if refill is not None:
        qps = faults["qps_limit"]
        ticks = itertools.count()
        clock = lambda: next(ticks) * refill / qps  # noqa: E731
    with start_server(config, clock=clock) as server:
        yield server


def expected(batches: list[Batch]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for b in batches:
        out.setdefault((b.user_id, b.conversation_id), []).extend(
            m["content"] for m in b.body["messages"]
        )
    return out


def stored(db: Path) -> dict[tuple[str, str], list[str]]:
    return {
        key: [m["content"] for m in conversation_messages(db, *key)] for key in message_counts(db)
    }


def load(workdir: Path, server: LocalServer, key: str | None = None, **cfg: Any) -> LoadStats:
    return load_workdir(
        workdir, Endpoint(server.url, key), LoadConfig.model_validate({**FAST, **cfg})
    )


def test_chaos_every_message_exactly_once_in_order(tmp_path: Path) -> None:
    conversations = {f"conv-{i:02d}": 40 + (i % 7) * 5 for i in range(70)}
    batches = make_batches(conversations, per_batch=5)
    assert sum(conversations.values()) >= 3000
    write_batches(tmp_path, batches)
    with serve(
        tmp_path,
        latency_ms=1,
        jitter_ms=4,
        fail_rate=0.10,
        drop_after_rate=0.02,
        drop_before_rate=0.01,
        qps_limit=2,  # bucket of 2: the deficit shows after a few dozen requests
        refill=0.95,
        retry_after=0.02,
        seed=7,
    ) as server:
        stats = load(tmp_path, server, rate=1000.0)
        server_stats = server.stats
    share = server_stats.rate_limited / server_stats.requests
    assert 0.02 < share < 0.15  # about 5% of answers were "too many requests"
    assert stats.complete, stats.to_json()
    assert stored(tmp_path / "server.sqlite") == expected(batches)
    assert stats.retries["server_error"] > 0 and stats.retries["lost_answer"] > 0
    assert stats.retries["rate_limited"] > 0
    assert stats.verified_landed > 0  # lost acknowledgements were checked, not resent
    assert len(delivered_message_hashes(tmp_path)) == sum(conversations.values())


def test_rate_limit_code_40300_with_retry_after(tmp_path: Path) -> None:
    batches = make_batches({f"c{i}": 12 for i in range(10)}, per_batch=2)
    write_batches(tmp_path, batches)
    with serve(
        tmp_path, qps_limit=5, refill=0.8, rate_limit_style="code40300", retry_after=0.05
    ) as server:
        stats = load(tmp_path, server, rate=200.0)
    assert stats.complete and stats.retries["rate_limited"] > 0
    assert stored(tmp_path / "server.sqlite") == expected(batches)


@pytest.mark.parametrize(
    "forced,reason",
    [
        (ForcedAnswer(code=50002, times=3), "server_error"),
        (ForcedAnswer(code=50000, http_status=503, times=2), "server_error"),
        (ForcedAnswer(code=40300, http_status=429, times=2), "rate_limited"),
        (ForcedAnswer(action="drop_before", times=2), "lost_answer"),
        (ForcedAnswer(action="drop_after", times=2), "lost_answer"),
    ],
)
def test_transient_rows_retry_to_exactly_once(
    tmp_path: Path, forced: ForcedAnswer, reason: str
) -> None:
    batches = make_batches({"a": 9, "b": 9})
    write_batches(tmp_path, batches)
    with serve(tmp_path, forced=(forced,)) as server:
        stats = load(tmp_path, server)
    assert stats.complete and stats.retries[reason] >= 1
    assert stored(tmp_path / "server.sqlite") == expected(batches)


def test_too_large_answers_split_recursively(tmp_path: Path) -> None:
    words = " ".join(f"token{i}" for i in range(120))
    batches = make_batches({"a": 8, "b": 3}, per_batch=8, text=words)
    write_batches(tmp_path, batches)
    with serve(tmp_path, max_input_tokens=150) as server:
        stats = load(tmp_path, server)
    assert stats.complete and stats.split > 3
    got = stored(tmp_path / "server.sqlite")
    want = expected(batches)
    for key, contents in want.items():
        assert "".join(got[key]) == "".join(contents)  # every piece, in order
        assert len(got[key]) > len(contents)  # single messages were cut into parts
    assert set(delivered_message_hashes(tmp_path)) == {m for b in batches for m in b.message_ids}


def test_invalid_batch_fails_blocks_its_conversation_and_retry_failed_resumes(
    tmp_path: Path,
) -> None:
    batches = make_batches({"a": 9, "b": 9, "c": 9})
    write_batches(tmp_path, batches)
    runner = CliRunner()
    bad = ForcedAnswer(
        code=40000, conversation_id="b", path="/add/message", message="messages.0.role: bad value"
    )
    with serve(tmp_path, forced=(bad,)) as server:
        args = [
            "load",
            "--workdir",
            str(tmp_path),
            "--target",
            "local",
            "--base-url",
            server.url,
            "--rate",
            "500",
            "--json",
        ]
        first = runner.invoke(main, args)
        assert first.exit_code == 4, first.stderr
        out = json.loads(first.stdout)
        assert out["failed"] == 1 and out["blocked"] == 2 and out["done"] == 6
        assert "bad value" in out["failures"][0]["error"]
        assert "--retry-failed" in first.stderr
        got = stored(tmp_path / "server.sqlite")
        assert ("u1", "b") not in got and got[("u1", "a")] == expected(batches)[("u1", "a")]
        status = runner.invoke(main, ["status", "--workdir", str(tmp_path)])
        assert "failed: conversation b" in status.stdout
        server.clear_forced()
        second = runner.invoke(main, [*args, "--retry-failed"])
        assert second.exit_code == 0, second.stderr
    assert stored(tmp_path / "server.sqlite") == expected(batches)


@pytest.mark.parametrize("token_header_code", ["wrong", "missing"])
def test_auth_failure_exits_6_without_leaking_key_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_header_code: str
) -> None:
    batches = make_batches({"a": 9, "b": 9})
    write_batches(tmp_path, batches)
    runner = CliRunner()
    with serve(tmp_path, token=KEY) as server:
        monkeypatch.setenv("MEMOS_BASE_URL", server.url)
        if token_header_code == "wrong":
            monkeypatch.setenv("MEMOS_API_KEY", KEY[::-1])
            args = ["load", "--workdir", str(tmp_path), "--target", "memos", "--json"]
        else:
            monkeypatch.delenv("MEMOS_API_KEY", raising=False)
            args = [
                "load",
                "--workdir",
                str(tmp_path),
                "--target",
                "local",
                "--base-url",
                server.url,
                "--json",
            ]
        bad = runner.invoke(main, args)
        assert bad.exit_code == 6, bad.stderr
        assert "API key rejected" in bad.stderr
        assert KEY[::-1] not in bad.output and KEY not in bad.output
        # the preflight request found it: nothing was sent, no batch was touched
        assert bad.stdout == "" and stored(tmp_path / "server.sqlite") == {}
        monkeypatch.setenv("MEMOS_API_KEY", KEY)
        good = runner.invoke(main, ["load", "--workdir", str(tmp_path), "--target", "memos"])
        assert good.exit_code == 0, good.stderr
        assert KEY not in good.output
    assert stored(tmp_path / "server.sqlite") == expected(batches)


def test_memos_target_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_batches(tmp_path, make_batches({"a": 3}))
    monkeypatch.delenv("MEMOS_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["load", "--workdir", str(tmp_path), "--target", "memos"])
    assert result.exit_code == 2 and "MEMOS_API_KEY is not set" in result.stderr


def test_quota_exhausted_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    batches = make_batches({"a": 9, "b": 9, "c": 9})
    write_batches(tmp_path, batches)
    runner = CliRunner()
    quota = ForcedAnswer(code=40304, conversation_id="b", path="/add/message")
    with serve(tmp_path, forced=(quota,)) as server:
        args = [
            "load",
            "--workdir",
            str(tmp_path),
            "--target",
            "local",
            "--base-url",
            server.url,
            "--max-in-flight",
            "1",
            "--json",
        ]
        first = runner.invoke(main, args)
        assert first.exit_code == 4, first.stderr
        assert "quota exhausted" in first.stderr and "resume with" in first.stderr
        out = json.loads(first.stdout)
        assert out["stopped"] == "quota" and out["failed"] == 0 and out["pending"] >= 3
        with Ledger.open(tmp_path) as ledger:
            assert ledger.status_counts()["sending"]["batches"] == 0
        server.clear_forced()
        second = runner.invoke(main, args)
        assert second.exit_code == 0, second.stderr
    assert stored(tmp_path / "server.sqlite") == expected(batches)


def test_lock_refuses_an_overlapping_run(tmp_path: Path) -> None:
    from pipeline.core.lock import workdir_lock

    write_batches(tmp_path, make_batches({"a": 3}))
    with workdir_lock(tmp_path):
        result = CliRunner().invoke(main, ["load", "--workdir", str(tmp_path)])
    assert result.exit_code == 5 and "another memos-etl run" in result.stderr
