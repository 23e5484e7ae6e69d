"""Terminal escape sequences in data or server answers never reach stdout/stderr raw."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.cli.common import SafeFormatter, safe_json, safe_text
from pipeline.core.batches import write_batches
from pipeline.server import ServerConfig, start_server
from pipeline.server.faults import FaultConfig, ForcedAnswer
from tests.loader_fakes import make_batches

OSC_TITLE = "\x1b]0;PWNED-TITLE\x07"
CSI_CLEAR = "\x1b[2J\x1b[31m"
C1_CSI = "\x9b2J"
HOSTILE = f"reply {OSC_TITLE}{CSI_CLEAR}RED {C1_CSI}"
RAW = ("\x1b", "\x07", "\x9b")


def _clean(text: str) -> bool:
    return not any(c in text for c in RAW)


def _workdir_with_hostile_content(tmp_path: Path, runner: CliRunner) -> Path:
    csv = tmp_path / "e.csv"
    csv.write_text(
        f'conversation_id,role,content,user_id\nconv-7{CSI_CLEAR},assistant,"{HOSTILE}",alice\n',
        encoding="utf-8",
    )
    workdir = tmp_path / "w"
    for args in (
        ["extract", "--source", "csv", str(csv), "--workdir", str(workdir), "-q"],
        ["chunk", "--workdir", str(workdir), "-q"],
        ["load", "--workdir", str(workdir), "-q", "--no-progress"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return workdir


def test_search_shows_escapes_as_text(runner: CliRunner, tmp_path: Path) -> None:
    workdir = _workdir_with_hostile_content(tmp_path, runner)
    args = ["search", "--workdir", str(workdir), "--user-id", "alice", "reply"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _clean(result.stdout) and _clean(result.stderr)
    assert "\\x1b]0;PWNED-TITLE\\x07" in result.stdout and "\\x9b2J" in result.stdout
    listing = runner.invoke(main, ["search", "--workdir", str(workdir)])
    assert _clean(listing.stdout) and "conv-7\\x1b[2J" in listing.stdout


def test_search_json_keeps_the_data_exactly(runner: CliRunner, tmp_path: Path) -> None:
    workdir = _workdir_with_hostile_content(tmp_path, runner)
    args = ["search", "--workdir", str(workdir), "--user-id", "alice", "reply", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _clean(result.stdout)
    hit = json.loads(result.stdout)["results"][0]
    assert hit["content"] == HOSTILE and hit["conversation_id"] == f"conv-7{CSI_CLEAR}"


def test_server_error_text_is_neutralised_in_load_status_and_logs(
    runner: CliRunner, tmp_path: Path
) -> None:
    write_batches(tmp_path, make_batches({"a": 3}))
    message = f"invalid {OSC_TITLE}{CSI_CLEAR} field {C1_CSI}"
    forced = ForcedAnswer(code=40003, message=message, path="/add/message")
    db = tmp_path / "server.sqlite"
    with start_server(ServerConfig(db_path=db, faults=FaultConfig(forced=(forced,)))) as server:
        args = ["load", "--workdir", str(tmp_path), "--base-url", server.url, "--no-progress"]
        result = runner.invoke(main, [*args, "-v"])
        as_json = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 4, result.output
    assert "code 40003: invalid \\x1b]0;PWNED-TITLE\\x07" in result.stdout
    assert "WARNING batch" in result.stderr and "\\x1b[2J" in result.stderr
    assert _clean(result.stdout) and _clean(result.stderr)
    assert _clean(as_json.stdout) and _clean(as_json.stderr)
    assert message in json.loads(as_json.stdout)["failures"][0]["error"]
    status = runner.invoke(main, ["status", "--workdir", str(tmp_path)])
    assert "failed: conversation a" in status.stdout and _clean(status.stdout)
    status_json = runner.invoke(main, ["status", "--workdir", str(tmp_path), "--json"])
    assert _clean(status_json.stdout)
    assert message in json.loads(status_json.stdout)["failures"][0]["error"]


def test_error_lines_are_neutralised(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["run", str(tmp_path / f"nope{OSC_TITLE}.yaml")])
    assert result.exit_code == 2
    assert _clean(result.stderr) and "\\x1b]0;" in result.stderr


def test_log_records_are_neutralised() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "got %s", (HOSTILE,), None)
    line = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert _clean(line) and line.startswith("WARNING got reply \\x1b]0;")


@given(st.text())
def test_safe_text_leaves_no_control_character(text: str) -> None:
    def unsafe(c: str) -> bool:
        return (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F

    out = safe_text(text)
    assert not any(unsafe(c) for c in out)
    assert safe_text(out) == out
    assert (out == text) == (not any(unsafe(c) for c in text))


@given(st.dictionaries(st.text(), st.text()))
def test_safe_json_is_the_same_json(data: dict[str, str]) -> None:
    text = json.dumps(data, ensure_ascii=False)
    out = safe_json(text)
    assert json.loads(out) == data
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
