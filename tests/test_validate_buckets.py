"""The dry run bucket by bucket reports what it reported over the whole staging table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import load_config
from pipeline.dryrun.validate import validate
from tests.conftest import REPO

VOLATILE = ("generated_at", "duration", "workdir", "elapsed", "seconds", "samples")
"""Clocks, paths, and the sample request bodies (the first batches: bucket order)."""


def _stable(value: Any) -> Any:
    """The report without clocks and paths."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(w in k for w in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _sorted_examples(value: Any) -> Any:
    """Examples sorted (which come first differs with the bucket order)."""
    if isinstance(value, dict):
        out = {k: _sorted_examples(v) for k, v in value.items()}
        if isinstance(out.get("examples"), list):
            out["examples"] = sorted(out["examples"], key=repr)
        return out
    if isinstance(value, list):
        return [_sorted_examples(v) for v in value]
    return value


@pytest.mark.parametrize("config", ["quickstart", "slack", "whatsapp"])
def test_many_buckets_give_the_same_report_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    import pipeline.core.staging_buckets as sb

    reports = []
    for buckets in (1, 8):
        monkeypatch.setattr(sb, "choose_buckets", lambda files, target_bytes=0, b=buckets: b)
        workdir = tmp_path / str(buckets)
        cfg = load_config(REPO / "configs" / f"{config}.yaml", {"workdir": str(workdir)}, env={})
        report = validate(cfg, write=False)
        reports.append(_sorted_examples(_stable(report.data)))
        if buckets > 1:
            assert len(list((workdir / "staging").glob("*/bucket=*"))) > 2
    assert reports[0] == reports[1]
