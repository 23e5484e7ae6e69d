from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import REPO, SAMPLES


def _json(result: object) -> dict[str, object]:
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_every_command_has_help(runner: CliRunner) -> None:
    assert isinstance(main, click.Group)
    for name, command in main.commands.items():
        assert command.help and command.help.strip(), f"{name} has no help"
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage:" in result.stdout


def test_extract_json_counts_add_up(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        [
            "extract",
            "--source",
            "csv",
            str(SAMPLES / "broken_chats.csv"),
            "--workdir",
            str(tmp_path),
            "--user-id",
            "u",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    out = _json(result)
    skipped = sum(out["skipped"].values())  # type: ignore[union-attr]
    assert out["read"] == out["staged"] + skipped + out["quarantined"]
    assert out["quarantined"] == 4 and out["staged"] == 2
    assert {"conversations", "users"} <= set(out)
    lines = (tmp_path / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4


def test_extract_then_chunk(runner: CliRunner, tmp_path: Path) -> None:
    runner.invoke(
        main,
        [
            "extract",
            "--source",
            "csv",
            str(SAMPLES / "support_chats.csv"),
            "--workdir",
            str(tmp_path),
            "--json",
        ],
    )
    result = runner.invoke(
        main, ["chunk", "--workdir", str(tmp_path), "--max-messages", "2", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    out = _json(result)
    assert out["batched"] == out["messages"] == 20
    assert out["batches"] == sum(-(-n // 2) for n in (5, 4, 4, 5, 2))
    lines = (tmp_path / "batches" / "batches.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == out["batches"]


def test_two_named_csv_sources_coexist(runner: CliRunner, tmp_path: Path) -> None:
    for name, file in (("a", "support_chats.csv"), ("b", "broken_chats.csv")):
        result = runner.invoke(
            main,
            [
                "extract",
                "--source",
                "csv",
                "--name",
                name,
                str(SAMPLES / file),
                "--workdir",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 0, result.stderr
    result = runner.invoke(main, ["chunk", "--workdir", str(tmp_path), "--json"])
    assert _json(result)["messages"] == 22


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("chunk:\n  max_tokenz: 5\n", "unknown key 'chunk.max_tokenz'"),
        ("chunk:\n  max_tokens: lots\n", "key 'chunk.max_tokens'"),
        ("sources:\n  - path: x.csv\n", "missing required key 'sources.0.kind'"),
        ("chunk: [1, 2\n", "line 2 column 1"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    runner: CliRunner, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    result = runner.invoke(main, ["chunk", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0] and str(config) in lines[0]


def test_missing_config_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: config file not found: {tmp_path / 'nope.yaml'}"


def test_bad_connector_option_names_source_and_key(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "sources:\n  - kind: csv\n    path: in.csv\n    options:\n      delimeter: ';'\n",
        encoding="utf-8",
    )
    result = runner.invoke(main, ["extract", "--config", str(config), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown key 'delimeter'" in result.stderr and "'csv'" in result.stderr


def test_unreadable_input_exits_3_without_traceback(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    result = runner.invoke(
        main, ["extract", "--source", "csv", str(path), "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 3
    assert result.stderr.strip() == f"error: {path}: the file is empty (no header row)"
    missing = runner.invoke(
        main,
        [
            "extract",
            "--source",
            "csv",
            str(tmp_path / "none.csv"),
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert missing.exit_code == 3 and "Traceback" not in missing.stderr


def test_unknown_source_is_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["extract", "--source", "fax", "x", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown source 'fax'" in result.stderr


def test_chunk_without_staging_says_what_to_do(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["chunk", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "run `memos-etl extract` first" in result.stderr


def test_quickstart_config_runs(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        ["run", str(REPO / "configs" / "quickstart.yaml"), "--workdir", str(tmp_path), "--json"],
    )
    assert result.exit_code == 0, result.stderr
    out = _json(result)
    extract = out["extract"]
    assert (
        extract["read"]
        == extract["staged"] + sum(extract["skipped"].values()) + extract["quarantined"]
    )
    assert out["chunk"]["batched"] == extract["staged"] > 0


def test_run_dry_run_reports_and_sends_nothing(runner: CliRunner, tmp_path: Path) -> None:
    config = str(REPO / "configs" / "quickstart.yaml")
    dry = runner.invoke(main, ["run", config, "--dry-run", "--workdir", str(tmp_path), "--json"])
    assert dry.exit_code == 0, dry.stderr
    assert not (tmp_path / "ledger.sqlite").exists()
    assert not (tmp_path / "local-memos.sqlite").exists()
    assert (tmp_path / "report.html").exists()
    validated = runner.invoke(
        main, ["validate", config, "--workdir", str(tmp_path / "v"), "--json"]
    )
    dry_report, report = _json(dry), _json(validated)
    assert dry_report.keys() == report.keys()
    for key in ("totals", "skipped", "batches", "ok", "exit_code"):
        assert dry_report[key] == report[key], key
    assert dry_report["totals"]["staged"] > 0
