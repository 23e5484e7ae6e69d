"""A server's Retry-After is capped (`load.max_retry_after`) and every wait is logged."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.core.batches import write_batches
from pipeline.core.config import LoadConfig
from pipeline.load.policy import cap_retry_after
from pipeline.server import ServerConfig, start_server
from pipeline.server.faults import FaultConfig, ForcedAnswer
from pipeline.server.store import conversation_messages
from tests.loader_fakes import Fake, make_batches
from tests.test_loader import run_load

FAR_DATE = "Fri, 01 Jan 2100 00:00:00 GMT"


@pytest.mark.parametrize(
    ("status", "code", "header"),
    [(429, None, "86400"), (200, 40300, "86400"), (503, None, FAR_DATE), (500, 50004, "1e9")],
)
def test_a_huge_retry_after_is_capped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, code: int | None, header: str
) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", status, code, {"Retry-After": header})])
    batches = make_batches({"a": 3})
    with caplog.at_level(logging.WARNING, logger="memos_etl"):
        stats, ft = run_load(tmp_path, fake, batches, rate=10.0, max_retry_after=30.0)
    assert stats.complete
    assert max(ft.sleeps) <= 30.0
    assert sum(ft.sleeps) < 70.0  # the limiter pause and the retry wait, both capped
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("asked to wait" in m and "max_retry_after" in m for m in warned), warned


def test_the_default_cap_is_five_minutes(tmp_path: Path) -> None:
    assert LoadConfig().max_retry_after == 300.0
    fake = Fake()
    fake.script["a"] = deque([("answer", 429, None, {"Retry-After": "86400"})])
    stats, ft = run_load(tmp_path, fake, make_batches({"a": 3}), rate=10.0)
    assert stats.complete and max(ft.sleeps) == 300.0


def test_a_short_wait_is_logged_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake()
    fake.script["a"] = deque([("answer", 429, None, {"Retry-After": "7"})])
    with caplog.at_level(logging.INFO, logger="memos_etl"):
        stats, ft = run_load(tmp_path, fake, make_batches({"a": 3}), rate=10.0)
    assert stats.complete and 7.0 in ft.sleeps
    infos = [r for r in caplog.records if "asked to wait 7.0 s" in r.getMessage()]
    assert infos and all(r.levelno == logging.INFO for r in infos)


def test_cap_retry_after() -> None:
    assert cap_retry_after(86400.0, 300.0) == 300.0
    assert cap_retry_after(2.5, 300.0) == 2.5
    with pytest.raises(ValidationError):
        LoadConfig(max_retry_after=0)


def test_load_against_the_real_server_does_not_stall(tmp_path: Path) -> None:
    """The local server answers one 429 with `Retry-After: 86400`; a tiny cap from the
    config file lets the CLI finish at once and say so on stderr."""
    batches = make_batches({"a": 4})
    write_batches(tmp_path, batches)
    config = tmp_path / "c.yaml"
    config.write_text("load:\n  max_retry_after: 0.05\n", encoding="utf-8")
    forced = ForcedAnswer(
        code=40300, http_status=429, retry_after=86400, times=1, path="/add/message"
    )
    db = tmp_path / "server.sqlite"
    with start_server(ServerConfig(db_path=db, faults=FaultConfig(forced=(forced,)))) as server:
        args = ["load", "--config", str(config), "--workdir", str(tmp_path), "--target", "local"]
        result = CliRunner().invoke(main, [*args, "--base-url", server.url, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "asked to wait 86400 s" in result.stderr and "max_retry_after" in result.stderr
    stored = [m["content"] for m in conversation_messages(db, "u1", "a")]
    assert stored == [m["content"] for b in batches for m in b.body["messages"]]
