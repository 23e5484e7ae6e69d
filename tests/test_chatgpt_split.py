"""Two-process ChatGPT reads: whatever the split point, the outcome of one process."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors.chatgpt import split as chatgpt_split
from connectors.chatgpt.connector import read
from connectors.chatgpt.read import Context, Options, _owner, asset_names, conversation_files
from connectors.chatgpt.split import Split, choose_split, read_in_two
from connectors.export_files import ExportFiles
from connectors.json_stream import iter_array
from pipeline.core.config import SourceConfig
from pipeline.core.models import Event, MessageTable, Quarantined, Skipped
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source

Outcome = tuple[list[dict[str, Any]], dict[str, int], list[Quarantined]]
OPTIONS = Options(branches="all")


def collect(events: Iterator[Event]) -> Outcome:
    """Staged rows in order, skip counts, quarantine entries in order."""
    tables: list[pa.Table] = []
    skipped: Counter[str] = Counter()
    quarantined: list[Quarantined] = []
    for event in events:
        if isinstance(event, MessageTable):
            tables.append(event.table)
        elif isinstance(event, Skipped):
            skipped[event.reason] += event.count
        elif isinstance(event, Quarantined):
            quarantined.append(event)
        else:
            raise AssertionError(f"unexpected event {event!r}")
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return rows, dict(skipped), quarantined


def two_processes(path: Path, split: Split | None) -> Outcome:
    with ExportFiles(path) as export:
        files = conversation_files(export)
        ctx = Context(
            user_id=_owner(export, OPTIONS), options=OPTIONS, asset_names=asset_names(export)
        )
        return collect(read_in_two(export, files, ctx, split))


def node(nid: str, parent: str | None, role: str | None, parts: list[Any]) -> dict[str, Any]:
    message = None
    if role is not None:
        message = {
            "author": {"role": role},
            "create_time": 1.7e9 + len(nid),
            "content": {"content_type": "multimodal_text", "parts": parts},
        }
    return {"id": nid, "parent": parent, "message": message}


def conversation(cid: str, texts: int) -> dict[str, Any]:
    nodes = [node(f"{cid}-r", None, None, [])]
    for i in range(texts):
        image = {"content_type": "image_asset_pointer", "asset_pointer": f"file-service://f{i}"}
        parts = [image, {"content_type": "audio_transcription", "text": f"{cid} says {i}"}]
        nodes.append(node(f"{cid}-{i}", nodes[-1]["id"], ("user", "assistant")[i % 2], parts))
    return {"id": cid, "title": cid, "mapping": {n["id"]: n for n in nodes}}


def write_export(folder: Path, items: list[Any], cut: int | None = None) -> Path:
    folder.mkdir()
    data = json.dumps(items).encode("utf-8")  # ", " separators: `}, {` inside parts too
    (folder / "conversations.json").write_bytes(data[:cut])
    (folder / "user.json").write_text(json.dumps({"id": "user-T"}))
    return folder


def element_starts(path: Path) -> list[int]:
    with (path / "conversations.json").open("rb") as fh:
        return [e.offset for e in iter_array(fh)]


ITEMS: list[Any] = [
    conversation("a", 3),
    conversation("b", 4),
    "not a conversation",
    {"id": "broken", "mapping": {"x": {"id": "x", "parent": "missing", "message": None}}},
    conversation("c", 2),
    conversation("d", 5),
]


def fell_back(caplog: pytest.LogCaptureFixture) -> bool:
    return any("reading on in one process" in r.getMessage() for r in caplog.records)


def test_every_true_split_point_uses_the_helper_and_matches_one_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    export = write_export(tmp_path / "e", ITEMS)
    expected = collect(read(export, OPTIONS))
    assert expected[2] and expected[0]  # quarantines and rows both present
    for offset in element_starts(export)[1:]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert two_processes(export, Split(0, offset)) == expected, offset
        assert not fell_back(caplog), offset


def test_a_split_inside_a_conversation_is_caught_and_read_in_one_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    export = write_export(tmp_path / "e", ITEMS)
    data = (export / "conversations.json").read_bytes()
    starts = element_starts(export)
    nested = data.index(b'}, {"content_type": "audio', starts[3]) + 3  # inside conversation c
    assert nested not in starts
    with caplog.at_level(logging.INFO):
        assert two_processes(export, Split(0, nested)) == collect(read(export, OPTIONS))
    assert fell_back(caplog)


def test_a_conversation_on_both_sides_is_a_duplicate_as_in_one_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    export = write_export(tmp_path / "e", [*ITEMS, conversation("a", 3)])
    expected = collect(read(export, OPTIONS))
    assert expected[1]["chatgpt:duplicate_conversation"] == 4
    with caplog.at_level(logging.INFO):
        assert two_processes(export, Split(0, element_starts(export)[2])) == expected
    assert fell_back(caplog)


@pytest.mark.parametrize("damage_side", ["main", "helper"])
def test_a_cut_file_stops_at_the_same_byte_with_earlier_conversations_staged(
    tmp_path: Path, damage_side: str
) -> None:
    whole = write_export(tmp_path / "whole", ITEMS)
    starts = element_starts(whole)
    cut = starts[5] - 40 if damage_side == "helper" else starts[1] + 30
    export = write_export(tmp_path / "cut", ITEMS, cut=cut)
    expected = collect(read(export, OPTIONS))
    rows, _, quarantined = expected
    assert [q.reason.split(":")[1] for q in quarantined][-1] == "malformed_json"
    assert {r["conversation_id"] for r in rows} >= {"a"}
    assert two_processes(export, Split(0, starts[4])) == expected
    if damage_side == "helper":  # the helper numbered it 1; the file holds it at 4
        assert quarantined[-1].position.endswith("(conversation #4)")


def test_sharded_exports_split_at_a_file_boundary(tmp_path: Path) -> None:
    export = tmp_path / "shards"
    export.mkdir()
    for i in range(3):
        shard = [conversation(f"s{i}-{j}", 2 + j) for j in range(2)]
        (export / f"conversations-00{i}.json").write_text(json.dumps(shard))
    (export / "user.json").write_text(json.dumps({"id": "user-T"}))
    with ExportFiles(export) as files:
        split = choose_split(files, conversation_files(files))
    assert split is not None and split.offset == 0 and split.file in (1, 2)
    expected = collect(read(export, OPTIONS))
    for boundary in (None, Split(1, 0), Split(2, 0)):
        assert two_processes(export, boundary) == expected, boundary


def test_the_default_split_is_a_confirmed_conversation_start(tmp_path: Path) -> None:
    export = write_export(tmp_path / "e", ITEMS)
    with ExportFiles(export) as files:
        split = choose_split(files, conversation_files(files))
    assert split is not None and split.offset in element_starts(export)


# --- the helper writes its own staging part ----------------------------------------------

MANY: list[Any] = [
    *(conversation(f"m{i}", 2 + i % 4) for i in range(24)),
    "not a conversation",
    {"id": "broken", "mapping": {"x": {"id": "x", "parent": "missing", "message": None}}},
    conversation("z", 3),
]


def extract_all(
    export: Path, workdir: Path, parallel: str, flat_parts: dict[str, dict[str, int]]
) -> tuple[Any, ...]:
    """Stats, staged rows in staging order, quarantine entries, and the staged files."""
    options = {"parallel": parallel, "branches": "all"}
    stats = extract_source(SourceConfig(kind="chatgpt", path=export, options=options), workdir)
    files = sorted(flat_parts["chatgpt"])
    rows = read_staging(workdir).to_pylist()
    return stats, rows, list(read_quarantine(workdir)), files


def test_the_helper_share_is_adopted_as_a_part_that_sorts_after_this_process_rows(
    tmp_path: Path, flat_parts: dict[str, dict[str, int]]
) -> None:
    export = write_export(tmp_path / "e", MANY)
    stats, rows, quarantined, files = extract_all(export, tmp_path / "one", "off", flat_parts)
    assert files == ["part-00000.parquet"] and len(quarantined) == 2
    two = extract_all(export, tmp_path / "two", "on", flat_parts)
    assert two[:3] == (stats, rows, quarantined)  # rows compared in staging order
    assert two[3] == ["part-00000.parquet", "part-00001.parquet"]


def _raising_work(job: Any, folder: Path) -> Any:
    """A helper with a bug."""
    raise RuntimeError("helper bug for the test")


def _crashing_work(job: Any, folder: Path) -> Any:
    """A helper that dies halfway through writing its part."""
    (Path(job.path) / "helper-ran.txt").write_text("yes")
    Path(job.part or folder / "part.parquet").write_bytes(b"PAR1 half a part")
    os._exit(70)


@pytest.mark.parametrize("work", [_raising_work, _crashing_work])
def test_a_failed_helper_is_withdrawn_and_its_share_read_here(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    work: Callable[[Any, Path], Any],
    flat_parts: dict[str, dict[str, int]],
) -> None:
    export = write_export(tmp_path / "e", MANY)
    expected = extract_all(export, tmp_path / "one", "off", flat_parts)
    monkeypatch.setattr(chatgpt_split, "_helper_work", work)
    with caplog.at_level(logging.WARNING):
        got = extract_all(export, tmp_path / "two", "on", flat_parts)
    assert got == expected  # the half-written part is gone, every row read here
    assert "the helper process failed" in caplog.text
    if work is _raising_work:
        assert "helper bug for the test" in caplog.text
    else:
        assert (export / "helper-ran.txt").exists()
        assert "exit code 70" in caplog.text


def _miscounting_work(job: Any, folder: Path) -> Any:
    """The real helper, its count of the conversations before its share off by two."""
    count = chatgpt_split._conversations_before
    chatgpt_split._conversations_before = lambda *args: count(*args) + 2  # type: ignore[assignment]
    return chatgpt_split._helper_work(job, folder)


def test_a_miscounted_share_is_renumbered_here(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flat_parts: dict[str, dict[str, int]],
) -> None:
    export = write_export(tmp_path / "e", MANY)
    expected = extract_all(export, tmp_path / "one", "off", flat_parts)
    monkeypatch.setattr(chatgpt_split, "_helper_work", _miscounting_work)
    with caplog.at_level(logging.INFO):
        got = extract_all(export, tmp_path / "two", "on", flat_parts)
    assert "renumbering" in caplog.text and not fell_back(caplog)
    assert got == expected  # positions and quarantine entries of the helper's share fixed
