"""Chunk output on the sample exports is pinned: same batches, same ids, same counts.

The golden file `tests/golden/chunk_samples.json` was written by the chunker before staging
was bucketed and token counting became lazy; any change to batching, ids, bodies or counts
shows up here. A batch's `tokens` may only be an upper bound now (a batch whose bytes fit the
budget is not tokenized), so it is compared as "at least the exact count, at most the budget".
Regenerate (only for an intended change of output) with MEMOS_ETL_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.core.batches import read_batches
from pipeline.core.config import load_config
from pipeline.extract import extract_source
from tests.conftest import REPO

GOLDEN = Path(__file__).parent / "golden" / "chunk_samples.json"
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
LIMITS = {
    "default": ChunkLimits(4000, 50),
    "tight": ChunkLimits(120, 4),
    "split": ChunkLimits(30, 3),
}


def _stage(config: str, workdir: Path, *, overrides: dict[str, Any] | None = None) -> Any:
    cfg = load_config(REPO / "configs" / f"{config}.yaml", overrides, env={})
    for source in cfg.sources:
        extract_source(source, workdir, default_user_id=cfg.user_id)
    return cfg


def _fingerprint(workdir: Path, cfg: Any, limits: ChunkLimits) -> dict[str, Any]:
    """Every batch as (user, conversation, index, digest of the batch without tokens, tokens),
    sorted, plus the chunk counts (tokens apart)."""
    stats = chunk_workdir(
        workdir,
        limits,
        tags=cfg.tags_by_source(),
        group=cfg.group_sources(),
        policy=cfg.redact.policy(),
    ).to_json()
    stats.pop("tokens")
    batches = []
    order: dict[tuple[str, str], list[int]] = {}
    for batch in read_batches(workdir):
        data = batch.to_json()
        tokens = data.pop("tokens")
        digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
        batches.append([batch.user_id, batch.conversation_id, batch.index, digest, tokens])
        order.setdefault((batch.user_id, batch.conversation_id), []).append(batch.index)
    for indexes in order.values():  # a conversation's batches in sequence in the file
        assert indexes == list(range(len(indexes)))
    return {"stats": stats, "batches": sorted(batches)}


def _cases() -> list[tuple[str, str]]:
    return [(config, limits) for config in CONFIGS for limits in LIMITS]


def _actual(tmp_path: Path, config: str, limits: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {"workdir": str(tmp_path)}
    if config == "slack" and limits == "tight":  # group-chat mode too
        overrides["sources"] = [
            {
                "kind": "slack",
                "path": str(REPO / "data" / "samples" / "slack_export"),
                "tags": ["slack"],
                "options": {"memory_owner": "group"},
            }
        ]
    cfg = _stage(config, tmp_path, overrides=overrides)
    return _fingerprint(tmp_path, cfg, LIMITS[limits])


def _golden() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(GOLDEN.read_bytes()) if GOLDEN.exists() else {}
    return data


def _pinned(key: str, actual: dict[str, Any]) -> dict[str, Any] | None:
    """The pinned output for `key`; with MEMOS_ETL_REGEN_GOLDEN set, pin `actual` instead
    (and return None: nothing to compare)."""
    if os.environ.get("MEMOS_ETL_REGEN_GOLDEN"):
        data = _golden()
        data[key] = actual
        GOLDEN.write_bytes(orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
        return None
    pinned: dict[str, Any] = _golden()[key]
    return pinned


@pytest.mark.parametrize(("config", "limits"), _cases())
def test_chunk_output_matches_the_pinned_output(tmp_path: Path, config: str, limits: str) -> None:
    actual = _actual(tmp_path, config, limits)
    key = f"{config}/{limits}"
    expected = _pinned(key, actual)
    if expected is None:
        return
    assert actual["stats"] == expected["stats"]
    assert len(actual["batches"]) == len(expected["batches"])
    max_tokens = LIMITS[limits].max_tokens
    for got, want in zip(actual["batches"], expected["batches"], strict=True):
        assert got[:4] == want[:4]
        assert want[4] <= got[4]  # exact, or an upper bound within the budget
        assert got[4] == want[4] or got[4] <= max_tokens


def test_two_names_for_one_export_chunk_as_today(tmp_path: Path) -> None:
    """Duplicates across sources are left out exactly as before (the first one kept)."""
    path = REPO / "data" / "samples" / "support_chats.csv"
    cfg = load_config(
        None,
        {
            "workdir": str(tmp_path),
            "user_id": "u",
            "sources": [
                {"kind": "csv", "path": str(path), "name": "a"},
                {"kind": "csv", "path": str(path), "name": "b", "tags": ["b"]},
            ],
        },
        env={},
    )
    for source in cfg.sources:
        extract_source(source, tmp_path, default_user_id=cfg.user_id)
    actual = _fingerprint(tmp_path, cfg, LIMITS["tight"])
    key = "csv-twice/tight"
    expected = _pinned(key, actual)
    if expected is None:
        return
    assert actual["stats"] == expected["stats"]
    assert [b[:4] for b in actual["batches"]] == [b[:4] for b in expected["batches"]]
    assert actual["stats"]["duplicates"] > 0


def test_workers_and_bucket_counts_give_the_same_batch_file(tmp_path: Path) -> None:
    """Same batches whatever the bucket count and the worker processes: the file holds them in
    bucket order, the same file for one process or two."""
    import pipeline.core.staging_buckets as sb
    from pipeline.cli import main

    flat = tmp_path / "flat"
    cfg = _stage("quickstart", flat, overrides={"workdir": str(flat)})
    one = _fingerprint(flat, cfg, LIMITS["tight"])
    many = tmp_path / "many"
    original = sb.choose_buckets
    sb.choose_buckets = lambda files, target_bytes=0: 8  # type: ignore[assignment]
    try:
        cfg = _stage("quickstart", many, overrides={"workdir": str(many)})
    finally:
        sb.choose_buckets = original  # type: ignore[assignment]
    assert len(list((many / "staging").glob("*/bucket=*"))) > 2
    assert _fingerprint(many, cfg, LIMITS["tight"]) == one
    serial = (many / "batches" / "batches.jsonl").read_bytes()
    config = str(REPO / "configs" / "quickstart.yaml")
    args = ["chunk", "--config", config, "--workdir", str(many), "--max-tokens", "120"]
    result = CliRunner().invoke(main, [*args, "--max-messages", "4", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert (many / "batches" / "batches.jsonl").read_bytes() == serial
