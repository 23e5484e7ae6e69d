"""Claude.ai connector: branches, thinking blocks, legacy exports, owners, broken input."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ExtractStats
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "claude_export"
K1 = "c1a0de00-0001-4000-8000-000000000001"
K2 = "c1a0de00-0002-4000-8000-000000000002"
ACCOUNT = "acc0de00-0000-4000-8000-000000000001"
ROOT = "00000000-0000-4000-8000-000000000000"


def extract(path: Path, workdir: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    stats = extract_source(SourceConfig(kind="claude", path=path, options=options), workdir)
    assert stats.balanced, stats
    rows = read_staging(workdir).to_pylist()
    rows.sort(key=lambda r: (r["conversation_id"], r["created_at"] or 0, r["seq"]))
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return stats, rows


def thread(rows: list[dict[str, Any]], conversation_id: str) -> list[tuple[str, str]]:
    return [(r["role"], r["content"]) for r in rows if r["conversation_id"] == conversation_id]


def message(
    uid: str, sender: str, created: str, text: str, parent: str | None = ROOT, **extra: Any
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "uuid": uid,
        "sender": sender,
        "created_at": created,
        "content": [{"type": "text", "text": text}],
        "text": text,
    }
    if parent is not None:
        msg["parent_message_uuid"] = parent
    msg.update(extra)
    return msg


def write_export(folder: Path, conversations: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conversations.json").write_text(json.dumps(conversations), encoding="utf-8")
    return folder


def test_sample_with_parent_links_thinking_and_tools(tmp_path: Path) -> None:
    stats, rows = extract(SAMPLE, tmp_path)
    assert thread(rows, K1) == [
        ("user", "Help me name a grey kitten."),
        ("assistant", "How about Miso?"),  # the thinking block is left out
        ("user", "Something more techy, please."),
        ("assistant", "Pixel is popular this year\n\nor Byte."),  # tool blocks left out
    ]
    assert [r["seq"] for r in rows if r["conversation_id"] == K1] == [0, 1, 2, 3]
    assert [r["message_id"] for r in rows if r["conversation_id"] == K1][0] == (
        f"claude:{K1}:k1-m1"
    )
    assert stats.skipped == {"claude:other_branch": 1, "claude:empty": 1}
    assert stats.read == 9
    assert {r["user_id"] for r in rows} == {ACCOUNT}
    m2 = next(r for r in rows if r["message_id"].endswith("k1-m2"))
    assert m2["meta"]["left_out_blocks"] == {"thinking": 1}
    assert m2["meta"]["title"] == "Naming a cat"
    m3 = next(r for r in rows if r["message_id"].endswith("k1-m3"))
    assert m3["meta"]["attachments"] == [
        {"file_name": "kitten-notes.txt", "file_type": "text/plain", "file_size": 24}
    ]
    assert m3["meta"]["files"][0]["file_name"] == "kitten.jpg"
    m4 = next(r for r in rows if r["message_id"].endswith("k1-m4"))
    assert m4["meta"]["tools_used"] == ["web_search"]
    assert m4["created_at"] == datetime(2025, 3, 1, 10, 2, 4, tzinfo=timezone.utc)


def test_legacy_conversation_without_parent_links_uses_array_order(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path)
    assert thread(rows, K2) == [
        ("user", "What is the capital of Australia?"),
        ("assistant", "Canberra."),
        ("assistant", "Anything else?"),  # the empty human message between is skipped
    ]
    k2 = [r for r in rows if r["conversation_id"] == K2]
    assert all("title" not in r["meta"] for r in k2)  # empty name
    # stamped 1 s before the (skipped) message before it: clamped, raw kept
    assert k2[2]["created_at"] == datetime(2024, 5, 1, 8, 0, 30, tzinfo=timezone.utc)
    assert k2[2]["meta"]["create_time_raw"] == "2024-05-01T08:00:29Z"


def test_all_branches(tmp_path: Path) -> None:
    stats, rows = extract(SAMPLE, tmp_path, branches="all")
    assert thread(rows, f"{K1}:k1-m2b") == [("assistant", "Maybe Ash or Smokey?")]
    retry = next(r for r in rows if r["message_id"].endswith("k1-m2b"))
    assert retry["meta"]["branch_of"] == K1
    assert retry["meta"]["fork_parent"] == "k1-m1"
    assert "claude:other_branch" not in stats.skipped


def test_newest_leaf_wins_even_when_listed_first(tmp_path: Path) -> None:
    conv = {
        "uuid": "k",
        "name": "n",
        "account": {"uuid": "a"},
        "chat_messages": [
            message("late", "assistant", "2025-01-01T00:00:09Z", "second answer", parent="q"),
            message("q", "human", "2025-01-01T00:00:00Z", "question"),
            message("early", "assistant", "2025-01-01T00:00:05Z", "first answer", parent="q"),
        ],
    }
    stats, rows = extract(write_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert thread(rows, "k") == [("user", "question"), ("assistant", "second answer")]
    assert stats.skipped == {"claude:other_branch": 1}


def test_text_field_is_used_only_without_content_blocks(tmp_path: Path) -> None:
    thinking_only = message("m2", "assistant", "2025-01-01T00:00:01Z", "", parent="m1")
    thinking_only["content"] = [{"type": "thinking", "thinking": "secret plan"}]
    thinking_only["text"] = "secret plan"
    conv = {
        "uuid": "k",
        "account": {"uuid": "a"},
        "chat_messages": [
            message("m1", "human", "2025-01-01T00:00:00Z", "hi"),
            thinking_only,
            message("m3", "system", "2025-01-01T00:00:02Z", "odd sender", parent="m2"),
        ],
    }
    stats, rows = extract(write_export(tmp_path / "e", [conv]), tmp_path / "w")
    assert thread(rows, "k") == [("user", "hi")]
    assert stats.skipped == {"claude:empty": 1, "claude:unknown_sender": 1}
    assert all("secret" not in r["content"] for r in rows)


def test_attachment_text_on_request(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path, include_attachment_text=True)
    m3 = next(r for r in rows if r["message_id"].endswith("k1-m3"))
    assert m3["content"] == (
        "Something more techy, please.\n\n[attachment: kitten-notes.txt]\nGrey tabby, likes boxes."
    )


def test_owner_precedence(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "a", user_id="alice")
    assert {r["user_id"] for r in rows} == {ACCOUNT}  # the export names its owner
    _, rows = extract(SAMPLE, tmp_path / "o", user_id="alice", owner_from_export=False)
    assert {r["user_id"] for r in rows} == {"alice"}
    no_account = {
        "uuid": "k",
        "chat_messages": [message("m", "human", "2025-01-01T00:00:00Z", "x")],
    }
    export = write_export(tmp_path / "e", [no_account])
    (export / "users.json").write_text(json.dumps([{"uuid": "from-users-json"}]))
    _, rows = extract(export, tmp_path / "b")
    assert {r["user_id"] for r in rows} == {"from-users-json"}
    (export / "users.json").unlink()
    with pytest.raises(ConfigError, match="user_id"):
        extract(export, tmp_path / "c")
    _, rows = extract(export, tmp_path / "d", user_id="carol")
    assert {r["user_id"] for r in rows} == {"carol"}


def test_broken_tree_and_truncated_file(tmp_path: Path) -> None:
    good = {
        "uuid": "good",
        "account": {"uuid": "a"},
        "chat_messages": [message("m", "human", "2025-01-01T00:00:00Z", "fine")],
    }
    orphan = {
        "uuid": "orphan",
        "account": {"uuid": "a"},
        "chat_messages": [
            message("m1", "human", "2025-01-01T00:00:00Z", "x"),
            message("m2", "assistant", "2025-01-01T00:00:01Z", "y", parent="nowhere"),
        ],
    }
    cycle = {
        "uuid": "cycle",
        "account": {"uuid": "a"},
        "chat_messages": [
            message("m1", "human", "2025-01-01T00:00:00Z", "x", parent="m2"),
            message("m2", "assistant", "2025-01-01T00:00:01Z", "y", parent="m1"),
        ],
    }
    text = json.dumps([good, orphan, cycle, good | {"uuid": "late"}])
    export = tmp_path / "e"
    export.mkdir()
    (export / "conversations.json").write_text(text[: len(text) - 40])
    stats, rows = extract(export, tmp_path / "w")
    assert thread(rows, "good") == [("user", "fine")]
    assert stats.quarantined == 3
    reasons = [e["reason"] for e in read_quarantine(tmp_path / "w")]
    assert "nowhere" in reasons[0]
    assert "cycle" in reasons[1]
    assert reasons[2].startswith("claude:malformed_json")
    assert stats.skipped == {"claude:quarantined_conversation": 2}


def test_zip_and_not_an_export(tmp_path: Path) -> None:
    archive = tmp_path / "claude.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in SAMPLE.iterdir():
            zf.write(f, f.name)
    _, zipped = extract(archive, tmp_path / "z")
    _, folder = extract(SAMPLE, tmp_path / "f")
    assert [(r["message_id"], r["content"]) for r in zipped] == [
        (r["message_id"], r["content"]) for r in folder
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a Claude export"):
        extract(empty, tmp_path / "w")


def test_cli_extract(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["extract", "--source", "claude", str(SAMPLE), "--workdir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["read"], out["staged"], out["conversations"]) == (9, 7, 2)
