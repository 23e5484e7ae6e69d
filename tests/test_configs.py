from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.extract import connector_options
from tests.conftest import (
    REPO,
    SHARED_OLDER_SPEC,
    SHARED_SPEC,
    VENDORED_OLDER_SPEC,
    VENDORED_SPEC,
)

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate_and_point_at_real_files(path: Path) -> None:
    cfg = load_config(path, env={})
    assert cfg.sources, "an example config must name at least one source"
    for source in cfg.sources:
        assert source.path.exists(), f"{path.name}: {source.path} does not exist"
        connector_options(source, cfg.user_id)  # raises ConfigError on a bad option


@pytest.mark.parametrize(
    ("vendored", "shared"),
    [(VENDORED_SPEC, SHARED_SPEC), (VENDORED_OLDER_SPEC, SHARED_OLDER_SPEC)],
    ids=["newest", "older"],
)
def test_vendored_spec_matches_the_official_copy(vendored: Path, shared: Path) -> None:
    if not shared.exists():
        pytest.skip(f"../shared/{shared.name} is not beside this clone")
    assert vendored.read_bytes() == shared.read_bytes()


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("workdir: from-file\nuser_id: file-user\n", encoding="utf-8")
    env = {"MEMOS_ETL_WORKDIR": "/env-dir", "MEMOS_ETL_USER_ID": "env-user"}
    assert load_config(config, env={}).workdir == tmp_path / "from-file"
    assert load_config(config, env=env).workdir == Path("/env-dir")
    flagged = load_config(config, {"workdir": "/flag-dir", "user_id": None}, env=env)
    assert (flagged.workdir, flagged.user_id) == (Path("/flag-dir"), "env-user")


def test_the_multi_account_example_runs_with_no_key_and_no_network(tmp_path: Path) -> None:
    """configs/multi-account.yaml loads each account's samples into its own local store."""
    config = REPO / "configs" / "multi-account.yaml"
    args = ["run", str(config), "--workdir", str(tmp_path / "w"), "--json", "--no-progress"]
    result = CliRunner().invoke(main, args, env={"MEMOS_API_KEY": ""})
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    assert {a: out["accounts"][a]["sources"] for a in out["accounts"]} == {
        "team": ["support-csv", "team-slack"],
        "personal": ["chatgpt", "claude"],
    }
    assert out["totals"]["sent"] == out["totals"]["staged"] > 0
    assert out["totals"]["not_delivered"] == 0 and out["totals"]["quarantined"] == 0
    for account in out["accounts"]:
        assert (tmp_path / "w" / "accounts" / account / "local-memos.sqlite").exists()
