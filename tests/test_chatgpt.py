"""ChatGPT connector: every export era, read back from the real Parquet staging table."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ExtractStats
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
CLASSIC = SAMPLES / "chatgpt_export"
SPLIT = SAMPLES / "chatgpt_export_2026"
C1 = "6550c0de-0001-4a00-8000-000000000001"
C2 = "6550c0de-0002-4a00-8000-000000000002"
C3 = "6550c0de-0003-4a00-8000-000000000003"
C4 = "6550c0de-0004-4a00-8000-000000000004"
D1 = "6a000001-83e9-7000-8000-000000000001"
D2 = "6a000002-83e9-7000-8000-000000000002"
D3 = "6a000003-83e9-7000-8000-000000000003"


def extract(path: Path, workdir: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    """Run the real extract stage and read the staged rows back, in conversation order."""
    source = SourceConfig(kind="chatgpt", path=path, options=options)
    stats = extract_source(source, workdir)
    assert stats.balanced, stats
    rows = read_staging(workdir).to_pylist()
    rows.sort(key=lambda r: (r["conversation_id"], r["created_at"] or 0, r["seq"]))
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return stats, rows


def thread(rows: list[dict[str, Any]], conversation_id: str) -> list[tuple[str, str]]:
    return [(r["role"], r["content"]) for r in rows if r["conversation_id"] == conversation_id]


def ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def write_export(folder: Path, conversations: list[Any], user_id: str | None = "user-T") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conversations.json").write_text(json.dumps(conversations), encoding="utf-8")
    if user_id is not None:
        (folder / "user.json").write_text(json.dumps({"id": user_id}))
    return folder


def node(
    nid: str, parent: str | None, role: str | None = None, text: str = "", t: float | None = None
) -> dict[str, Any]:
    msg = None
    if role is not None:
        msg = {
            "id": nid,
            "author": {"role": role},
            "create_time": t,
            "content": {"content_type": "text", "parts": [text]},
        }
    return {"id": nid, "parent": parent, "message": msg}


def conversation(
    cid: str, nodes: list[dict[str, Any]], current: str | None, title: str = "T"
) -> dict[str, Any]:
    return {
        "id": cid,
        "title": title,
        "create_time": 1_700_000_000.0,
        "mapping": {n["id"]: n for n in nodes},
        "current_node": current,
    }


# --- the classic single-file export (nodes with `children`) -------------------------------


def test_classic_sample_stages_exactly_the_visible_threads(tmp_path: Path) -> None:
    stats, rows = extract(CLASSIC, tmp_path)
    assert thread(rows, C1) == [
        ("user", "I'm planning a weekend in Lisbon with my kid. Any ideas?"),
        ("assistant", "Lisbon is great for families: the Oceanarium and tram 28 are favourites."),
        ("user", "What about food for a picky eater?"),
        ("assistant", "Grilled chicken (frango) with plain rice is an easy win."),
    ]
    assert thread(rows, C2) == [
        ("user", "Here is my budget spreadsheet, can you chart it?"),
        ("assistant", "Here is the chart: spending peaked in March at 1,900."),
    ]
    assert thread(rows, C3) == [
        ("user", "What breed is this dog?"),
        ("assistant", "It looks like a border collie."),
        ("user", "How much exercise does it need?"),
        ("assistant", "About two hours a day, with games."),
        ("user", "[audio]"),
    ]
    assert [c for _, c in thread(rows, C4)] == [
        "Remind me: the boiler service is due in May.",
        "Noted: boiler service due in May.",
        "And the car insurance renews in June.",
        "Noted: car insurance renews in June.",
    ]
    assert stats.staged == len(rows) == 15
    assert stats.conversations == 4
    assert {r["user_id"] for r in rows} == {"user-SampleOwner0000000001"}
    assert stats.skipped == {
        "chatgpt:empty": 1,  # the in_progress "" placeholder before the final answer
        "chatgpt:hidden_system": 1,
        "chatgpt:other_branch": 3,  # an edited prompt + its answer, a regenerated answer
        "chatgpt:reasoning_recap": 1,
        "chatgpt:root": 4,
        "chatgpt:thoughts": 1,
        "chatgpt:tool_call": 1,
        "chatgpt:tool_output": 1,
        "chatgpt:user_context": 1,
    }
    assert stats.read == 29  # every node of every mapping


def test_ids_seq_and_metadata(tmp_path: Path) -> None:
    _, rows = extract(CLASSIC, tmp_path)
    c1 = [r for r in rows if r["conversation_id"] == C1]
    assert [r["message_id"] for r in c1] == [
        f"chatgpt:{C1}:c1-u1",
        f"chatgpt:{C1}:c1-a1",
        f"chatgpt:{C1}:c1-u2",
        f"chatgpt:{C1}:c1-a2",
    ]
    assert [r["seq"] for r in c1] == [0, 1, 2, 3]
    assert c1[0]["meta"]["title"] == "Weekend trip to Lisbon"
    assert c1[1]["meta"]["model"] == "gpt-4o"
    assert "model" not in c1[0]["meta"]
    assert c1[0]["source_position"] == "conversations[3].mapping[c1-u1]"
    assert c1[0]["source_file"].endswith("conversations.json")
    c2_user = next(r for r in rows if r["message_id"] == f"chatgpt:{C2}:c2-u1")
    assert c2_user["meta"]["attachments"] == [
        {"id": "file-Budget42", "name": "budget.csv", "size": 2048, "mime_type": "text/csv"}
    ]


def test_child_stamped_before_parent_is_clamped_and_raw_time_kept(tmp_path: Path) -> None:
    _, rows = extract(CLASSIC, tmp_path)
    c1 = [r for r in rows if r["conversation_id"] == C1]
    prompt, answer = c1[2], c1[3]
    assert prompt["created_at"] == ts(1700000120.0)
    assert answer["created_at"] == prompt["created_at"]  # raw time was 2 s earlier
    assert answer["meta"]["create_time_raw"] == 1700000118.0
    assert "create_time_raw" not in prompt["meta"]


def test_missing_times_come_from_ancestors_else_conversation_start(tmp_path: Path) -> None:
    _, rows = extract(CLASSIC, tmp_path)
    c4 = [r for r in rows if r["conversation_id"] == C4]
    # The conversation's create_time (1800000000) is a later restore date: the start is
    # the earlier first message time instead, so the thread still never goes back in time.
    assert [r["created_at"] for r in c4] == [
        ts(1700400000.0),
        ts(1700400000.0),
        ts(1700400000.0),
        ts(1700400050.0),
    ]
    assert c4[0]["meta"]["time_source"] == "conversation"
    assert c4[2]["meta"]["time_source"] == "ancestor"
    assert "time_source" not in c4[1]["meta"]


def test_created_at_never_decreases_along_any_thread(tmp_path: Path) -> None:
    for i, sample in enumerate((CLASSIC, SPLIT)):
        _, rows = extract(sample, tmp_path / str(i), branches="all")
        by_conv: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_conv.setdefault(r["conversation_id"], []).append(r)
        for conv_rows in by_conv.values():
            conv_rows.sort(key=lambda r: r["seq"])
            times = [r["created_at"] for r in conv_rows]
            assert times == sorted(times)


def test_images_voice_and_empty_title(tmp_path: Path) -> None:
    _, rows = extract(CLASSIC, tmp_path)
    c3 = [r for r in rows if r["conversation_id"] == C3]
    assert all("title" not in r["meta"] for r in c3)  # title "" is no title
    assert c3[0]["meta"]["images"] == [
        {
            "asset_pointer": "file-service://file-Photo001",
            "size_bytes": 48213,
            "width": 800,
            "height": 600,
        }
    ]
    assert c3[2]["meta"]["voice_transcript"] is True
    assert c3[2]["meta"]["audio"][0]["asset_pointer"] == "file-service://file-Voice002"
    assert c3[4]["meta"]["audio"][0]["asset_pointer"] == "file-service://file-Voice004"


def test_tool_messages_are_staged_when_asked(tmp_path: Path) -> None:
    stats, rows = extract(CLASSIC, tmp_path, include_tool_messages=True)
    assert thread(rows, C2) == [
        ("user", "Here is my budget spreadsheet, can you chart it?"),
        ("assistant", "import pandas as pd\ndf = pd.read_csv('budget.csv')\ndf.plot()"),
        ("tool", "  month  total\n0   Jan   1200\n1   Mar   1900"),
        ("assistant", "Here is the chart: spending peaked in March at 1,900."),
    ]
    tool = next(r for r in rows if r["role"] == "tool")
    assert tool["author_name"] == "python"
    call = next(r for r in rows if r["message_id"].endswith("c2-code"))
    assert call["meta"]["recipient"] == "python"
    assert call["meta"]["content_type"] == "code"
    assert "chatgpt:tool_call" not in stats.skipped
    assert "chatgpt:tool_output" not in stats.skipped


def test_all_branches_become_their_own_conversations(tmp_path: Path) -> None:
    stats, rows = extract(CLASSIC, tmp_path, branches="all")
    assert "chatgpt:other_branch" not in stats.skipped
    assert stats.staged == 18
    assert thread(rows, f"{C1}:c1-a2-old") == [
        ("user", "What about food?"),
        ("assistant", "Try pastéis de nata."),
    ]
    assert thread(rows, f"{C1}:c1-a2-regen") == [("assistant", "Bifana sandwiches are simple.")]
    edit = next(r for r in rows if r["message_id"] == f"chatgpt:{C1}:c1-u2-old")
    assert edit["meta"]["branch_of"] == C1
    assert edit["meta"]["fork_parent"] == "c1-a1"
    assert edit["seq"] == 0
    assert len(thread(rows, C1)) == 4  # the canonical thread is unchanged


# --- the 2026 split export (no `children`, manifest, asset name map) ----------------------


def test_split_2026_sample_without_children(tmp_path: Path) -> None:
    for shard in SPLIT.glob("conversations-*.json"):
        assert '"children"' not in shard.read_text()
    stats, rows = extract(SPLIT, tmp_path)
    assert thread(rows, D1) == [
        ("user", "My sourdough starter smells like acetone. Is it ruined?"),
        ("assistant", "Not ruined: it is just hungry. Feed it twice a day."),
    ]
    assert thread(rows, D2) == [
        ("user", "Can you see my plant?"),
        ("assistant", "Yes, it looks like a healthy monstera."),
        ("user", "Why are the leaves turning yellow?"),
        ("assistant", "Yellow leaves usually mean overwatering; let the soil dry out."),
    ]
    assert thread(rows, D3) == [
        ("user", "How many grams in an ounce?"),
        ("assistant", "About 28.35 grams."),
    ]
    assert stats.skipped == {
        "chatgpt:other_branch": 1,
        "chatgpt:reasoning_recap": 1,
        "chatgpt:root": 3,
        "chatgpt:thoughts": 1,
    }
    assert {r["user_id"] for r in rows} == {"user-SampleOwner0000000002"}
    d2 = [r for r in rows if r["conversation_id"] == D2]
    assert d2[0]["meta"]["audio"][0]["name"] == "voice-in.wav"
    assert d2[2]["meta"]["images"][0]["name"] == "monstera-leaf.jpg"
    d3 = [r for r in rows if r["conversation_id"] == D3]
    assert d3[0]["source_file"].endswith("conversations-001.json")
    assert d3[1]["created_at"] == d3[0]["created_at"]


def test_zip_folder_and_bare_file_give_the_same_rows(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in SPLIT.iterdir():
            zf.write(f, f"chatgpt-export/{f.name}")  # one top folder, as some tools zip it
    _, from_zip = extract(archive, tmp_path / "z")
    _, from_dir = extract(SPLIT, tmp_path / "d")
    keys = ("message_id", "conversation_id", "role", "content", "created_at", "seq", "metadata")
    assert [tuple(r[k] for k in keys) for r in from_zip] == [
        tuple(r[k] for k in keys) for r in from_dir
    ]
    assert from_zip[0]["source_file"].startswith(f"{archive}:chatgpt-export/conversations-")
    _, bare = extract(CLASSIC / "conversations.json", tmp_path / "b")
    _, whole = extract(CLASSIC, tmp_path / "w")
    assert [r["content"] for r in bare] == [r["content"] for r in whole]
    assert {r["user_id"] for r in bare} == {"user-SampleOwner0000000001"}  # sibling user.json


def test_export_unzipped_into_its_own_subfolder(tmp_path: Path) -> None:
    outer = tmp_path / "downloads"
    shutil.copytree(SPLIT, outer / "chatgpt-export-2026")
    (outer / "readme.txt").write_text("not part of the export")
    stats, rows = extract(outer, tmp_path / "w")
    assert stats.staged == 8
    assert rows[0]["source_file"].startswith(str(outer / "chatgpt-export-2026"))


def test_message_ids_are_stable_across_reruns(tmp_path: Path) -> None:
    _, first = extract(CLASSIC, tmp_path / "a")
    _, second = extract(CLASSIC, tmp_path / "b")
    assert [r["message_id"] for r in first] == [r["message_id"] for r in second]
    assert len({r["message_id"] for r in first}) == len(first)


def test_manifest_shard_missing_is_quarantined_and_the_rest_loads(tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(SPLIT, export)
    (export / "conversations-001.json").unlink()
    stats, rows = extract(export, tmp_path / "w")
    assert stats.quarantined == 1
    assert {r["conversation_id"] for r in rows} == {D1, D2}
    entry = next(read_quarantine(tmp_path / "w"))
    assert entry["source_file"].endswith("conversations-001.json")
    assert "missing_file" in entry["reason"]


def test_duplicate_conversation_across_shards_is_loaded_once(tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(SPLIT, export)
    shutil.copy(export / "conversations-001.json", export / "conversations-002.json")
    stats, rows = extract(export, tmp_path / "w")
    assert [r["conversation_id"] for r in rows].count(D3) == 2
    assert stats.skipped["chatgpt:duplicate_conversation"] == 3


# --- owner ----------------------------------------------------------------------------------


def test_user_json_names_the_owner_and_config_is_the_fallback(tmp_path: Path) -> None:
    _, rows = extract(CLASSIC, tmp_path / "a", user_id="alice")
    assert {r["user_id"] for r in rows} == {"user-SampleOwner0000000001"}
    _, rows = extract(CLASSIC, tmp_path / "b", user_id="alice", owner_from_export=False)
    assert {r["user_id"] for r in rows} == {"alice"}
    export = write_export(tmp_path / "e", [conversation("x", [node("r", None)], "r")], None)
    stats, _ = extract(export, tmp_path / "c", user_id="bob")
    assert stats.skipped == {"chatgpt:root": 1}


def test_no_owner_anywhere_is_a_config_error(tmp_path: Path) -> None:
    export = write_export(tmp_path / "e", [conversation("x", [node("r", None)], "r")], None)
    with pytest.raises(ConfigError, match="user_id"):
        extract(export, tmp_path / "w")


def test_not_an_export_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a ChatGPT export"):
        extract(folder, tmp_path / "w")


# --- broken trees and broken files ----------------------------------------------------------


def test_cycle_and_dangling_parent_quarantine_only_that_conversation(tmp_path: Path) -> None:
    good = conversation("good", [node("r", None), node("u", "r", "user", "hi", 1.7e9)], "u")
    cycle = conversation(
        "cyc",
        [
            node("r", None),
            node("a", "b", "user", "x", 1.7e9),
            node("b", "a", "assistant", "y"),
        ],
        "b",
    )
    dangling = conversation("dang", [node("r", None), node("u", "gone", "user", "z")], "u")
    export = write_export(tmp_path / "e", [cycle, good, dangling])
    stats, rows = extract(export, tmp_path / "w")
    assert thread(rows, "good") == [("user", "hi")]
    assert stats.quarantined == 2
    assert stats.skipped["chatgpt:quarantined_conversation"] == 3  # 2 + 1 other nodes
    assert stats.read == 2 + 3 + 2
    reasons = {e["position"]: e["reason"] for e in read_quarantine(tmp_path / "w")}
    assert "cycle" in reasons["conversations[0] (id cyc)"]
    assert "gone" in reasons["conversations[2] (id dang)"]


def test_missing_current_node_falls_back_to_newest_leaf(tmp_path: Path) -> None:
    conv = conversation(
        "c",
        [
            node("r", None),
            node("u", "r", "user", "q", 1.7e9),
            node("old", "u", "assistant", "first try", 1.7e9 + 1),
            node("new", "u", "assistant", "second try", 1.7e9 + 5),
        ],
        "does-not-exist",
    )
    _, rows = extract(write_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert thread(rows, "c") == [("user", "q"), ("assistant", "second try")]


def test_truncated_file_quarantines_the_rest_and_keeps_earlier_conversations(
    tmp_path: Path,
) -> None:
    data = (CLASSIC / "conversations.json").read_bytes()
    cut = data.index(b'"Plot my expenses"')  # inside the third conversation
    export = tmp_path / "e"
    export.mkdir()
    (export / "conversations.json").write_bytes(data[:cut])
    shutil.copy(CLASSIC / "user.json", export / "user.json")
    stats, rows = extract(export, tmp_path / "w")
    assert {r["conversation_id"] for r in rows} == {C4, C3}
    assert stats.quarantined == 1
    [entry] = list(read_quarantine(tmp_path / "w"))
    assert entry["source_file"] == str(export / "conversations.json")
    assert "conversation #2" in entry["position"]
    assert "malformed_json" in entry["reason"] and "end of file" in entry["reason"]


def test_malformed_json_names_the_byte_offset(tmp_path: Path) -> None:
    export = tmp_path / "e"
    export.mkdir()
    text = '[{"id": "a", "mapping": {}}, {"id": "b", "mapping": {] }]'
    (export / "conversations.json").write_text(text)
    (export / "user.json").write_text('{"id": "u"}')
    stats, _ = extract(export, tmp_path / "w")
    [entry] = list(read_quarantine(tmp_path / "w"))
    assert entry["position"] == f"byte {text.index(']')} (conversation #1)"
    assert stats.skipped == {"chatgpt:empty_conversation": 1}


def test_non_conversation_elements_are_quarantined(tmp_path: Path) -> None:
    export = write_export(
        tmp_path / "e", ["text", {"title": "no id"}, conversation("ok", [node("r", None)], "r")]
    )
    stats, rows = extract(export, tmp_path / "w")
    assert rows == []
    assert stats.quarantined == 2
    assert stats.skipped == {"chatgpt:root": 1}


def test_corrupt_zip_member_is_quarantined_and_cut_zip_is_an_input_error(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in CLASSIC.iterdir():
            zf.write(f, f.name)
    data = archive.read_bytes()
    at = data.index(b"conversations.json") + 200  # inside the member's compressed data
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(data[:at] + bytes(64) + data[at + 64 :])
    stats, rows = extract(corrupt, tmp_path / "w")
    [entry] = list(read_quarantine(tmp_path / "w"))
    assert entry["source_file"] == f"{corrupt}:conversations.json"
    assert entry["reason"].startswith("chatgpt:unreadable_file")
    assert stats.quarantined == 1
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable ZIP"):
        extract(cut, tmp_path / "w2")


def test_odd_parts_and_unknown_content_types_do_not_crash(tmp_path: Path) -> None:
    r = node("r", None)
    u = node("u", "r", "user", "", 1.7e9)
    u["message"]["content"] = {"content_type": "text", "parts": [None, 5, {"x": 1}, "hello"]}
    a = node("a", "u", "assistant", "", 1.7e9 + 1)
    a["message"]["content"] = {"content_type": "future_type", "text": "from the future"}
    b = node("b", "a", "assistant", "", 1.7e9 + 2)
    b["message"]["content"] = {"content_type": "text"}  # no parts at all
    c = node("c", "b", "assistant", "", 1.7e9 + 3)
    c["message"]["channel"] = "analysis"
    d = node("d", "c", "assistant", "visible", True)  # a bool is not a time
    export = write_export(tmp_path / "e", [conversation("c1", [r, u, a, b, c, d], "d")])
    stats, rows = extract(export, tmp_path / "w")
    assert thread(rows, "c1") == [
        ("user", "hello"),
        ("assistant", "from the future"),
        ("assistant", "visible"),
    ]
    assert stats.skipped == {"chatgpt:root": 1, "chatgpt:empty": 1, "chatgpt:internal_channel": 1}
    assert rows[2]["meta"]["time_source"] == "ancestor"


# --- the command line -----------------------------------------------------------------------


def test_cli_extract_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["extract", "--source", "chatgpt", str(CLASSIC), "--workdir", str(tmp_path), "--json"],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["staged"] == 15
    assert out["read"] == out["staged"] + sum(out["skipped"].values()) + out["quarantined"]
    assert read_staging(tmp_path).num_rows == 15


def test_cli_without_owner_exits_2_with_one_line(tmp_path: Path) -> None:
    nodes = [node("r", None), node("u", "r", "user", "hello", 1_700_000_001.0)]
    export = write_export(tmp_path / "e", [conversation("x", nodes, "u")], None)
    result = CliRunner().invoke(
        main, ["extract", "--source", "chatgpt", str(export), "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    with_owner = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "chatgpt",
            str(export),
            "--user-id",
            "bob",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
        ],
    )
    assert with_owner.exit_code == 0, with_owner.stderr
    assert json.loads(with_owner.stdout)["skipped"] == {"chatgpt:root": 1}


# --- two processes (`parallel`) -------------------------------------------------------------


def _truncated_export(folder: Path) -> Path:
    data = (CLASSIC / "conversations.json").read_bytes()
    folder.mkdir()
    (folder / "conversations.json").write_bytes(data[: data.index(b'"Plot my expenses"')])
    shutil.copy(CLASSIC / "user.json", folder / "user.json")
    return folder


def test_parallel_option_from_yaml_on_off(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'w'}\nsources:\n"
        f"  - kind: chatgpt\n    path: {SPLIT}\n    options: {{parallel: off}}\n"
    )
    result = CliRunner().invoke(main, ["extract", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["staged"] == 8


def test_two_processes_stage_exactly_what_one_process_stages(tmp_path: Path) -> None:
    duplicated = tmp_path / "dup"
    shutil.copytree(SPLIT, duplicated)
    shutil.copy(duplicated / "conversations-000.json", duplicated / "conversations-002.json")
    inputs = [CLASSIC, SPLIT, duplicated, _truncated_export(tmp_path / "cut")]
    for i, export in enumerate(inputs):
        one, rows_one = extract(export, tmp_path / f"one{i}", parallel="off", branches="all")
        two, rows_two = extract(export, tmp_path / f"two{i}", parallel="on", branches="all")
        assert (two.read, two.staged, two.skipped, two.quarantined) == (
            one.read,
            one.staged,
            one.skipped,
            one.quarantined,
        )
        key = lambda r: r["message_id"]  # noqa: E731
        assert sorted(rows_two, key=key) == sorted(rows_one, key=key)
        assert list(read_quarantine(tmp_path / f"two{i}")) == list(
            read_quarantine(tmp_path / f"one{i}")
        )


# --- any text survives --------------------------------------------------------------------

_VISIBLE_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Co"),  # no surrogates; private use = citation marks
        blacklist_characters="【",
    ),
    min_size=1,
).filter(lambda s: s.strip() != "")


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(_VISIBLE_TEXT, min_size=1, max_size=4))
def test_any_text_survives_to_parquet(texts: list[str]) -> None:
    nodes = [node("root", None)]
    for i, text in enumerate(texts):
        nodes.append(node(f"n{i}", nodes[-1]["id"], ("user", "assistant")[i % 2], text, 1.7e9))
    with tempfile.TemporaryDirectory() as tmp:
        export = write_export(Path(tmp) / "e", [conversation("c", nodes, nodes[-1]["id"])])
        stats, rows = extract(export, Path(tmp) / "w")
    assert [r["content"] for r in rows] == texts
    assert stats.skipped == {"chatgpt:root": 1}


# --- damaged conversations never crash the extract ------------------------------------------

_JUNK: list[Any] = [None, 0, -1, 1e300, True, "", "x", [], {}, [None], {"a": None}, "\ud800x"]


def _mutate(obj: Any, rng: random.Random) -> None:
    """Delete, replace with junk, or descend into one random key or item."""
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        roll = rng.random()
        if roll < 0.3:
            del obj[key]
        elif roll < 0.6:
            obj[key] = rng.choice(_JUNK)
        else:
            _mutate(obj[key], rng)
    elif isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        roll = rng.random()
        if roll < 0.3:
            obj.pop(i)
        elif roll < 0.5:
            obj[i] = rng.choice(_JUNK)
        else:
            _mutate(obj[i], rng)


@pytest.mark.parametrize("seed", range(40))
def test_randomly_damaged_exports_never_crash_and_counts_add_up(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data = json.loads((CLASSIC / "conversations.json").read_text(encoding="utf-8"))
    data += json.loads((SPLIT / "conversations-000.json").read_text(encoding="utf-8"))
    for _ in range(rng.randint(1, 6)):
        _mutate(data, rng)
    export = write_export(tmp_path / "e", data)
    stats, rows = extract(export, tmp_path / "w")  # asserts the counts balance
    assert stats.read >= len(rows) == stats.staged
    for row in rows:
        json.loads(row["metadata"])


def test_lone_surrogate_escapes_are_staged_as_replacement_characters(tmp_path: Path) -> None:
    conv = conversation("s", [node("r", None), node("u", "r", "user", "PLACEHOLDER", 1.7e9)], "u")
    conv["title"] = "TITLE"
    text = json.dumps([conv]).replace("PLACEHOLDER", "half \\ud83d emoji")
    export = tmp_path / "e"
    export.mkdir()
    (export / "conversations.json").write_text(text.replace('"TITLE"', '"\\udc00 t"'))
    (export / "user.json").write_text('{"id": "u"}')
    _, rows = extract(export, tmp_path / "w")
    assert [r["content"] for r in rows] == ["half \ufffd emoji"]
    assert rows[0]["meta"]["title"] == "\ufffd t"


def test_chunked_batches_keep_every_thread_in_order(tmp_path: Path) -> None:
    """The chunker orders by (created_at, seq): clamped times keep the thread order."""
    from pipeline.chunk import ChunkLimits, chunk_workdir
    from pipeline.core.batches import read_batches

    _, rows = extract(CLASSIC, tmp_path, branches="all")
    chunk_workdir(tmp_path, ChunkLimits(max_tokens=4000, max_messages=2))
    batched: dict[str, list[str]] = {}
    for batch in sorted(read_batches(tmp_path), key=lambda b: (b.conversation_id, b.index)):
        batched.setdefault(batch.conversation_id, []).extend(batch.message_ids)
    staged: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: (r["conversation_id"], r["seq"])):
        staged.setdefault(row["conversation_id"], []).append(row["message_id"])
    assert batched == staged
    assert batched[C1][-1] == f"chatgpt:{C1}:c1-a2"  # stamped before its prompt, still last
