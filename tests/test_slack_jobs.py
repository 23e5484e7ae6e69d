"""How a Slack export folder is cut into units and jobs, and the order jobs run in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from connectors.export_files import Limits
from connectors.slack import read as slack_zip
from connectors.slack.export import discover, open_export
from connectors.slack.model import Unit
from connectors.slack.read import Options, read, sampled_file_bytes, split_unit
from pipeline.core.models import StagedPart

LIMITS = Limits(1 << 30, 1 << 40, 100.0)


def _day(day: int, words: int) -> list[dict[str, Any]]:
    text = " ".join(["word"] * words)
    return [{"ts": f"16094{day:02d}000.00000{i}", "user": "U1", "text": text} for i in range(5)]


def _export(root: Path, channels: dict[str, int], days: int = 20) -> Path:
    """One folder per channel, `days` day files of five messages of `words` words each."""
    for name, words in channels.items():
        folder = root / name
        folder.mkdir(parents=True)
        for day in range(1, days + 1):
            (folder / f"2021-01-{day:02d}.json").write_text(json.dumps(_day(day, words)))
    (root / "users.json").write_text(json.dumps([{"id": "U1", "name": "ann"}]))
    return root


def _units(root: Path) -> tuple[list[Unit], dict[str, tuple[str, int]]]:
    export = open_export(root, LIMITS)
    layout = discover(export.files)
    units = [Unit(f.name, f.name, "channel", tuple(f.day_files)) for f in layout.folders]
    return units, export.files


def test_busy_channels_are_cut_by_the_sizes_of_their_files(tmp_path: Path) -> None:
    """Day files of a folder export are listed without sizes: a few are stat'ed per
    conversation, so a busy channel is cut into as many parts as its bytes need."""
    units, files = _units(_export(tmp_path, {"busy": 2_000, "quiet": 2}))
    busy, quiet = sorted(units, key=lambda u: u.label)
    real = [Path(files[name][0]).stat().st_size for name in busy.day_files]
    estimates = sampled_file_bytes(units, files)
    assert min(real) <= estimates["busy"] <= max(real)
    assert estimates["quiet"] < 1_000
    part_bytes = 5 * min(real)
    parts = split_unit(busy, files, part_bytes, estimates["busy"])
    assert len(parts) == 4  # five files each (guessing 32 KB per file: three parts)
    assert [n for p in parts for n in p.day_files] == list(busy.day_files)
    assert sum(p.size for p in parts) == estimates["busy"] * 20


def test_sampling_stops_at_its_budget_longest_conversations_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    units, files = _units(_export(tmp_path / "a", {"long": 5}, days=9))
    more, more_files = _units(_export(tmp_path / "b", {"short": 5}, days=3))
    monkeypatch.setattr(slack_zip, "SIZE_SAMPLE_BUDGET", slack_zip.SIZE_SAMPLES)
    assert list(sampled_file_bytes(more + units, {**files, **more_files})) == ["long"]
    monkeypatch.setattr(slack_zip, "SIZE_SAMPLE_BUDGET", 2 * slack_zip.SIZE_SAMPLES)
    assert sorted(sampled_file_bytes(more + units, {**files, **more_files})) == ["long", "short"]


class _InlinePool:
    """Stands in for the worker pool: runs each job at once, remembering the order."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        self.sizes.append(args[0].size)
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future


def test_jobs_run_largest_first_and_parts_keep_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _export(tmp_path / "export", {"a-small": 2, "b-big": 400, "c-mid": 40, "d-tiny": 1})
    pool = _InlinePool()

    @contextmanager
    def inline_pool(*_: Any) -> Iterator[_InlinePool]:
        yield pool

    monkeypatch.setattr(slack_zip, "_worker_pool", inline_pool)
    monkeypatch.setattr(slack_zip, "JOB_BYTES", 1)  # one job (and part) per unit
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    events = list(read(root, Options(user_id="owner"), parts_dir=parts_dir))
    assert len(pool.sizes) == 4 and len(set(pool.sizes)) == 4
    assert pool.sizes == sorted(pool.sizes, reverse=True)
    parts = [Path(e.path).name for e in events if isinstance(e, StagedPart)]
    assert parts == [f"part-{i:05d}.parquet" for i in range(1, 5)]
