"""A source name is an identifier: it can never point the staging writer outside the workdir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.core.config import SourceConfig, load_config
from pipeline.core.errors import ConfigError
from pipeline.core.staging import StagingWriter, source_dir
from tests.conftest import SAMPLES

PATH_LIKE = ["../../victim", "..", ".", "a/b", "a\\b", ".hidden", "", "src</script>"]
HOSTILE = [*PATH_LIKE, "x\ny", "a b", "é"]


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("precious", encoding="utf-8")
    return victim


@pytest.mark.parametrize("name", [*HOSTILE, "ABSOLUTE"])
def test_extract_refuses_path_like_names(runner: CliRunner, tmp_path: Path, name: str) -> None:
    victim = _victim(tmp_path)
    if name == "ABSOLUTE":
        name = str(victim)
    workdir = tmp_path / "w"
    args = ["extract", "--source", "csv", str(SAMPLES / "support_chats.csv")]
    result = runner.invoke(main, [*args, "--workdir", str(workdir), "--name", name])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --name ")
    assert "source name" in lines[0]
    assert (victim / "important.txt").read_text(encoding="utf-8") == "precious"
    assert sorted(os.listdir(victim)) == ["important.txt"]
    assert not (workdir / "staging").exists()


def test_config_file_name_is_validated(runner: CliRunner, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"workdir: w\nsources:\n  - kind: csv\n    name: ../../victim\n"
        f"    path: {SAMPLES / 'support_chats.csv'}\n",
        encoding="utf-8",
    )
    result = runner.invoke(main, ["extract", "--config", str(config)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sources.0.name" in lines[0] and str(config) in lines[0]
    assert sorted(os.listdir(victim)) == ["important.txt"]


def test_names_differing_only_in_case_are_one_folder(tmp_path: Path) -> None:
    sources = [
        {"kind": "csv", "name": "Support", "path": "a.csv"},
        {"kind": "csv", "name": "support", "path": "b.csv"},
    ]
    with pytest.raises(ConfigError, match="two sources are named"):
        load_config(None, {"sources": sources})


@pytest.mark.parametrize("name", ["slack", "team-slack", "support_csv.2024", "A1"])
def test_ordinary_names_are_accepted(name: str, tmp_path: Path) -> None:
    assert SourceConfig(kind="csv", name=name, path=Path("x.csv")).label == name
    assert source_dir(tmp_path, name) == tmp_path / "staging" / name


@pytest.mark.parametrize("name", [*PATH_LIKE, "/etc"])
def test_staging_writer_guard_refuses_paths(tmp_path: Path, name: str) -> None:
    victim = _victim(tmp_path)
    with pytest.raises(ConfigError):
        StagingWriter(tmp_path / "w", name)
    assert sorted(os.listdir(victim)) == ["important.txt"]


def _inside_staging(workdir: Path, path: Path) -> bool:
    root = Path(os.path.normpath(workdir / "staging"))
    return Path(os.path.normpath(path)).parent == root and path.name not in ("", ".", "..")


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=0, max_size=40) | st.from_regex(r"[./\\a-z]{1,12}", fullmatch=True))
def test_any_accepted_name_stays_inside_staging(name: str) -> None:
    workdir = Path("/srv/work")
    try:
        SourceConfig(kind="csv", name=name, path=Path("x.csv"))
    except ValidationError:
        accepted_by_config = False
    else:
        accepted_by_config = True
    try:
        path = source_dir(workdir, name)
    except ConfigError:
        assert not accepted_by_config  # the guard never refuses a name the config accepts
        return
    assert _inside_staging(workdir, path)
    assert _inside_staging(workdir, path.with_name(f".{name}.tmp"))
