"""One hostile or broken record quarantines only itself; the rest of the export flows."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from connectors.tree import ParentTree
from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source
from tests.test_chatgpt import conversation, node
from tests.test_chatgpt import extract as chatgpt_extract
from tests.test_chatgpt import write_export as chatgpt_export
from tests.test_claude import extract as claude_extract
from tests.test_claude import message
from tests.test_claude import write_export as claude_export
from tests.test_slack import basic
from tests.test_slack import extract as slack_extract

DEEP = "[" * 60_000 + "]" * 60_000


# --- B6: the tree check is linear, and a broken island spares the thread ----------------


class CountingDict(dict[str, "str | None"]):
    """A parent map that counts lookups (the tree check's work, without timing it)."""

    lookups = 0

    def __getitem__(self, key: str) -> str | None:
        CountingDict.lookups += 1
        return super().__getitem__(key)


def test_cycle_check_is_linear_in_the_number_of_nodes() -> None:
    n = 20_000
    parent = CountingDict({"n0": None})
    parent.update({f"n{i}": f"n{i - 1}" for i in range(1, n)})
    parent.update({"x1": "x2", "x2": "x1"})  # a tiny cycle after a long valid chain
    CountingDict.lookups = 0
    tree = ParentTree.link(dict.fromkeys(parent), parent)
    assert CountingDict.lookups <= 4 * n  # the quadratic check made ~n*n/2
    assert tree.problem is not None and "cycle" in tree.problem
    assert tree.broken == {"x1", "x2"}


def test_chatgpt_island_cycle_and_dangling_branch_spare_the_current_thread(
    tmp_path: Path,
) -> None:
    conv = conversation(
        "c",
        [
            node("r", None),
            node("u", "r", "user", "hi", 1.7e9),
            node("a", "u", "assistant", "hello", 1.7e9 + 1),
            node("x1", "x2", "user", "loop", 1.7e9 + 5),
            node("x2", "x1", "assistant", "loop"),
            node("d", "gone", "user", "orphan", 1.7e9 + 9),
        ],
        "a",
    )
    stats, rows = chatgpt_extract(chatgpt_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert [r["content"] for r in rows] == ["hi", "hello"]
    assert stats.quarantined == 1 and stats.skipped["chatgpt:broken_branch"] == 2
    (entry,) = list(read_quarantine(tmp_path / "w"))
    assert entry["reason"].startswith("chatgpt:broken_branch: node d has parent gone")


def test_chatgpt_long_chain_with_a_cycle_island_is_staged(tmp_path: Path) -> None:
    n = 20_000  # minutes with the quadratic check
    nodes = [node("n0", None)] + [node(f"n{i}", f"n{i - 1}", "user", f"m{i}") for i in range(1, n)]
    nodes += [node("x1", "x2", "user", "a"), node("x2", "x1", "user", "b")]
    conv = conversation("cc", nodes, f"n{n - 1}")
    stats, _ = chatgpt_extract(chatgpt_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert stats.staged == n - 1 and stats.quarantined == 1
    assert stats.skipped["chatgpt:broken_branch"] == 1


def test_claude_dangling_old_branch_spares_the_newest_branch(tmp_path: Path) -> None:
    conv = {
        "uuid": "c",
        "account": {"uuid": "a"},
        "chat_messages": [
            message("m0", "human", "2025-01-01T00:00:00Z", "old", parent="nowhere"),
            message("m1", "human", "2025-01-01T00:00:01Z", "hi"),
            message("m2", "assistant", "2025-01-01T00:00:02Z", "hello", parent="m1"),
        ],
    }
    stats, rows = claude_extract(claude_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert [r["content"] for r in rows] == ["hi", "hello"]
    assert (
        stats.quarantined == 1 and "nowhere" in list(read_quarantine(tmp_path / "w"))[0]["reason"]
    )


# --- B7: deep nesting quarantines that record, exit 0 -----------------------------------


def test_chatgpt_deeply_nested_conversation_is_quarantined_alone(tmp_path: Path) -> None:
    good = conversation("good", [node("r", None), node("u", "r", "user", "hi", 1.7e9)], "u")
    folder = tmp_path / "e"
    folder.mkdir()
    deep = f'{{"id": "deep", "mapping": {{}}, "x": {DEEP}}}'
    text = f"[{json.dumps(good)}, {deep}, {json.dumps(good | {'id': 'late'})}]"
    (folder / "conversations.json").write_text(text)
    (folder / "user.json").write_text('{"id": "me"}')
    result = CliRunner().invoke(
        main, ["extract", "--source", "chatgpt", str(folder), "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 0, result.output
    staged = read_staging(tmp_path / "w").to_pylist()
    assert sorted(r["conversation_id"] for r in staged) == ["good", "late"]
    (entry,) = list(read_quarantine(tmp_path / "w"))
    assert entry["reason"].startswith("chatgpt:unusable_conversation: nested deeper")


def test_claude_deeply_nested_conversation_is_quarantined_alone(tmp_path: Path) -> None:
    good = {
        "uuid": "good",
        "account": {"uuid": "a"},
        "chat_messages": [message("m", "human", "2025-01-01T00:00:00Z", "fine")],
    }
    folder = tmp_path / "e"
    folder.mkdir()
    deep = f'{{"uuid": "deep", "chat_messages": [], "x": {DEEP}}}'
    (folder / "conversations.json").write_text(f"[{deep}, {json.dumps(good)}]")
    stats, rows = claude_extract(folder, tmp_path / "w")
    assert [r["content"] for r in rows] == ["fine"] and stats.quarantined == 1


def slack_message(ts: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "ts": ts, "user": "U1", "text": text, **extra}


def test_slack_deeply_nested_message_is_quarantined_alone(tmp_path: Path) -> None:
    day = (
        "["
        + json.dumps(slack_message("1709337600.000100", "good"))
        + ', {"type": "message", "ts": "1709337601.000100", "user": "U1", "text": "deep", '
        + f'"x": {DEEP}}}, '
        + '{"type": "message", "ts": "1709337602.000100", "user": "U1", "text": "mid", '
        + '"x": '
        + "[" * 400
        + "]" * 400
        + "}]"
    )
    export = basic(tmp_path, {}, **{"general/2024-03-02.json": day.encode()})
    stats, rows = slack_extract(export, tmp_path / "w", workers=1)
    assert sorted(r["content"] for r in rows) == ["Ali: good"]
    assert stats.quarantined == 2
    assert {e["position"] for e in read_quarantine(tmp_path / "w")} == {"$[1]", "$[2]"}


# --- B8: times out of range quarantine their record -------------------------------------


def test_csv_times_out_of_range_are_quarantined_as_bad_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "conversation_id,role,content,timestamp,user_id\n"
        "c1,user,ok,2025-01-01T00:00:00Z,alice\n"
        "c1,user,late,9999-12-31T23:59:59-01:00,alice\n"
        "c1,user,early,0001-01-01T00:00:00+01:00,alice\n"
        "c1,user,huge,99999999999999999999,alice\n"
    )
    stats = extract_source(SourceConfig(kind="csv", path=path), tmp_path / "w")
    assert stats.staged == 1 and stats.quarantined == 3 and stats.balanced
    reasons = [e["reason"] for e in read_quarantine(tmp_path / "w")]
    assert all(r.startswith("bad timestamp") for r in reasons), reasons


def test_slack_ts_past_year_9999_is_quarantined(tmp_path: Path) -> None:
    export = basic(
        tmp_path,
        {
            "2024-03-02": [
                slack_message("1709337600.000100", "good"),
                slack_message("253402300800.000100", "far"),
                slack_message("999999999999.000000", "farther"),
            ]
        },
    )
    for zone in ("UTC", "Pacific/Kiritimati"):
        stats, rows = slack_extract(export, tmp_path / f"w-{zone[:3]}", timezone=zone)
        assert [r["content"] for r in rows] == ["Ali: good"] and stats.quarantined == 2


# --- B10 and B22: damage inside one Slack file ------------------------------------------


def test_slack_corrupt_deflate_member_is_quarantined(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.json", '[{"id": "U1", "name": "alice"}]')
        zf.writestr("channels.json", '[{"id": "C1", "name": "general"}]')
        zf.writestr("general/2024-03-03.json", json.dumps([slack_message("1709424000.1", "ok")]))
        day = [slack_message("1709571900.000200", "hello " * 50)]
        zf.writestr("general/2024-03-04.json", json.dumps(day))
    data = bytearray(buf.getvalue())
    at = data.find(b"general/2024-03-04.json")
    data[at + 30] ^= 0x55  # inside the deflate stream of that member
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(
        main,
        ["extract", "--source", "slack", str(path), "--workdir", str(tmp_path / "w")],
        env={"MEMOS_ETL_USER_ID": "team"},
    )
    assert result.exit_code == 0, result.output
    (entry,) = list(read_quarantine(tmp_path / "w"))
    assert entry["source_file"] == "general/2024-03-04.json"
    assert [r["content"] for r in read_staging(tmp_path / "w").to_pylist()] == ["alice: ok"]


def test_slack_bad_bytes_and_escapes_spare_the_rest_of_the_day_file(tmp_path: Path) -> None:
    good = json.dumps(slack_message("1709337600.000100", "good")).encode()
    files = {
        "general/2024-03-02.json": b"["
        + good
        + b', {"type": "message", "ts": "1709337601.000100", "user": "U1", "text": "a\\ud800b"}]',
        "general/2024-03-03.json": b"["
        + good.replace(b"1709337600", b"1709424000")
        + b', {"type": "message", "ts": "1709424001.000100", "user": "U1", "text": "a\xffb"}]',
        "general/2024-03-04.json": b"["
        + good.replace(b"1709337600", b"1709510400")
        + b', {"type": "message", "ts": "1709510401.000100", "user": "U1", "text": "a\x00b"}]',
    }
    export = basic(tmp_path, {}, **files)
    stats, rows = slack_extract(export, tmp_path / "w")
    contents = sorted(r["content"] for r in rows)
    assert stats.quarantined == 0 and stats.staged == 6
    assert contents.count("Ali: good") == 3
    assert "Ali: a\ufffdb" in contents and "Ali: a\x00b" in contents


def test_claude_users_file_with_odd_uuids_is_not_fatal(tmp_path: Path) -> None:
    good = {
        "uuid": "good",
        "chat_messages": [message("m", "human", "2025-01-01T00:00:00Z", "fine")],
    }
    folder = claude_export(tmp_path / "e", [good])
    (folder / "users.json").write_text('[{"uuid": ["x"]}, {"uuid": "u1"}, {"uuid": {}}]')
    _, rows = claude_extract(folder, tmp_path / "w")
    assert [(r["user_id"], r["content"]) for r in rows] == [("u1", "fine")]
