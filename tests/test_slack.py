"""Slack connector: real exports written to tmp_path (folders and ZIPs), staged to Parquet."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.slack import read as slack_zip
from connectors.slack.read import Options, read
from pipeline.cli import main
from pipeline.core.config import SourceConfig, load_config
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ExtractStats, MessageTable, Quarantined, Skipped
from pipeline.core.quarantine import read_quarantine
from pipeline.extract import extract_source

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "slack_export"


def ts(iso: str, micro: int = 0) -> str:
    moment = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    return f"{int(moment.timestamp())}.{micro:06d}"


def write_export(root: Path, files: dict[str, Any]) -> Path:
    """Write an export folder: JSON values are dumped, bytes written as-is."""
    for name, value in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        path.write_bytes(data)
    return root


def zip_folder(folder: Path, target: Path, wrap: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, wrap + path.relative_to(folder).as_posix())
    return target


def extract(path: Path, workdir: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    options.setdefault("user_id", "owner")
    source = SourceConfig(kind="slack", path=path, options=options)
    stats = extract_source(source, workdir)
    assert stats.balanced, stats
    rows = pq.read_table(workdir / "staging" / "slack").drop_columns(["bucket"]).to_pylist()
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return stats, rows


def by_ts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["meta"]["ts"]: row for row in rows}


USERS = [
    {"id": "U1", "name": "alice", "real_name": "Alice A", "profile": {"display_name": "Ali"}},
    {
        "id": "U2",
        "name": "bob",
        "profile": {"display_name": "", "real_name": "Bob B", "email": "bob@x.org"},
    },
    {"id": "U3", "name": "ghost", "deleted": True, "profile": {"fields": None}},
    {"id": "UBOT", "name": "ci", "is_bot": True, "profile": {"display_name": "CI"}},
]


def basic(tmp: Path, messages: dict[str, list[Any]], **extra: Any) -> Path:
    files: dict[str, Any] = {
        "users.json": USERS,
        "channels.json": [
            {"id": "C1", "name": "general", "created": "1700000000", "members": None}
        ],
    }
    files.update({f"general/{day}.json": msgs for day, msgs in messages.items()})
    files.update(extra)
    return write_export(tmp / "export", files)


# --- the committed sample -------------------------------------------------------------


def test_sample_export_loads_balanced_with_specific_reasons(tmp_path: Path) -> None:
    stats, rows = extract(SAMPLE, tmp_path / "w")
    assert stats.balanced
    assert stats.read == stats.staged + sum(stats.skipped.values()) + stats.quarantined
    assert stats.skipped == {
        "slack:channel_join": 1,
        "slack:message_changed": 1,
        "slack:not_a_day_file": 1,
    }
    assert stats.quarantined == 0
    assert len(rows) == stats.staged
    channels = {row["meta"]["channel"] for row in rows}
    assert channels == {"general", "engineering", "café-paris", "launch-plans", "D01ALICEBOB"}


def test_sample_thread_spans_day_files_and_broadcast_is_one_message(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w")
    parent = "1709600400.000010"
    thread = [r for r in rows if r["conversation_id"] == f"slack:engineering:{parent}"]
    files = {r["source_file"] for r in thread}
    assert files == {
        "engineering/2024-03-04.json",
        "engineering/2024-03-05.json",
        "engineering/2024-03-06.json",
    }
    ordered = sorted(thread, key=lambda r: (r["created_at"], r["seq"]))
    assert ordered[0]["meta"]["ts"] == parent
    assert len(thread) == 4
    broadcasts = [r for r in rows if r["meta"].get("broadcast")]
    assert len(broadcasts) == 1
    assert broadcasts[0]["conversation_id"] == f"slack:engineering:{parent}"
    assert broadcasts[0]["content"].endswith("Thanks @alice and @Chloé!")


def test_sample_bot_file_only_and_non_ascii(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w")
    bot = [r for r in rows if r["meta"].get("subtype") == "bot_message"]
    assert len(bot) == 1
    assert bot[0]["role"] == "assistant" and bot[0]["author_name"] == "deploybot"
    assert "Deploy 2.3.0-rc1" in bot[0]["content"]
    file_only = [r for r in rows if r["meta"].get("files")]
    assert [r["content"] for r in file_only] == ["alice: [file: migration-plan.pdf]"]
    cafe = [r for r in rows if r["meta"]["channel"] == "café-paris"]
    assert {r["meta"]["channel_id"] for r in cafe} == {"C03CAFE"}
    assert any("☕" in r["content"] for r in cafe)
    dm = [r for r in rows if r["meta"]["channel_id"] == "D01ALICEBOB"]
    assert {r["author_name"] for r in dm} == {"alice", "Bob Okafor", "Slackbot"}
    for row in rows:
        assert "xox" not in json.dumps(row, default=str)


def test_created_at_comes_from_ts_not_the_file_name(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w")
    announce = by_ts(rows)["1709605800.000300"]
    assert announce["source_file"] == "general/2024-03-04.json"  # an LA day file
    assert announce["created_at"] == datetime(2024, 3, 5, 2, 30, 0, 300, tzinfo=timezone.utc)
    assert announce["conversation_id"] == "slack:general:2024-03-05"
    assert announce["message_id"] == "C01GENERAL:1709605800.000300"
    assert announce["meta"]["edited"] is True
    _, la = extract(SAMPLE, tmp_path / "w2", timezone="America/Los_Angeles")
    assert by_ts(la)["1709605800.000300"]["conversation_id"] == "slack:general:2024-03-04"


def test_workspace_owner_prefixes_speakers(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w", user_id="team-memory")
    assert {r["user_id"] for r in rows} == {"team-memory"}
    assert all(r["content"].startswith(r["author_name"] + ": ") for r in rows)


def test_zip_equals_folder(tmp_path: Path) -> None:
    archive = zip_folder(SAMPLE, tmp_path / "export.zip", wrap="slack-export/")
    _, from_zip = extract(archive, tmp_path / "wz")
    _, from_dir = extract(SAMPLE, tmp_path / "wd")

    def key(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return sorted((r["message_id"], r["conversation_id"], r["content"]) for r in rows)

    assert key(from_zip) == key(from_dir)


# --- messages -------------------------------------------------------------------------


def test_edit_logs_tombstones_hidden_and_duplicates_are_not_messages(tmp_path: Path) -> None:
    parent, reply = ts("2024-01-01T10:00:00", 1), ts("2024-01-01T10:05:00", 2)
    original = {"type": "message", "user": "U1", "text": "v1", "ts": reply}
    export = basic(
        tmp_path,
        {
            "2024-01-01": [
                {
                    "type": "message",
                    "subtype": "tombstone",
                    "ts": parent,
                    "user": "USLACKBOT",
                    "text": "This message was deleted.",
                    "hidden": True,
                    "thread_ts": parent,
                },
                {
                    "type": "message",
                    "user": "U1",
                    "text": "final",
                    "ts": reply,
                    "thread_ts": parent,
                    "edited": {"user": "U1", "ts": "1704103600.000000"},
                },
                {
                    "type": "message",
                    "subtype": "message_changed",
                    "ts": "1704103600.000000",
                    "hidden": True,
                    "message": {**original, "text": "final"},
                    "original": original,
                    "thread_ts": "0000000000.000000",
                },
                {
                    "type": "message",
                    "subtype": "message_deleted",
                    "ts": "1704103700.000000",
                    "hidden": True,
                    "deleted_ts": "1.0",
                },
                {
                    "type": "message",
                    "subtype": "some_internal",
                    "ts": "1704103800.000000",
                    "hidden": True,
                    "text": "x",
                },
                {
                    "type": "message",
                    "user": "U1",
                    "text": "final",
                    "ts": reply,
                    "thread_ts": parent,
                },
            ]
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    assert stats.skipped == {
        "slack:duplicate": 1,
        "slack:hidden": 1,
        "slack:message_changed": 1,
        "slack:message_deleted": 1,
        "slack:tombstone": 1,
    }
    assert [r["content"] for r in rows] == ["Ali: final"]
    assert rows[0]["conversation_id"] == f"slack:general:{parent}"  # orphan reply kept
    assert stats.balanced


def test_system_subtypes_skipped_by_default_and_included_on_request(tmp_path: Path) -> None:
    day = [
        {
            "type": "message",
            "subtype": "channel_join",
            "ts": ts("2024-01-01T10:00:00"),
            "user": "U2",
            "text": "<@U2> has joined the channel",
        },
        {
            "type": "message",
            "subtype": "channel_topic",
            "ts": ts("2024-01-01T10:01:00"),
            "user": "U1",
            "text": "set the topic: x",
            "topic": "x",
        },
        {
            "type": "message",
            "subtype": "me_message",
            "ts": ts("2024-01-01T10:02:00"),
            "user": "U1",
            "text": "waves",
        },
        {
            "type": "message",
            "subtype": "brand_new_kind",
            "ts": ts("2024-01-01T10:03:00"),
            "user": "U1",
            "text": "kept as a message",
        },
    ]
    export = basic(tmp_path, {"2024-01-01": day})
    stats, rows = extract(export, tmp_path / "w")
    assert stats.skipped == {"slack:channel_join": 1, "slack:channel_topic": 1}
    assert sorted(r["meta"]["subtype"] for r in rows) == ["brand_new_kind", "me_message"]
    stats, rows = extract(export, tmp_path / "w2", include_subtypes=["channel_join"])
    assert stats.skipped == {"slack:channel_topic": 1}
    joined = [r for r in rows if r["meta"]["subtype"] == "channel_join"]
    assert joined[0]["content"] == "Bob B: @Bob B has joined the channel"


def test_bots_without_user_and_missing_users(tmp_path: Path) -> None:
    day = [
        {
            "type": "message",
            "subtype": "bot_message",
            "ts": ts("2024-01-01T10:00:00"),
            "bot_id": "B1",
            "text": "",
            "attachments": [{"fallback": "deploy ok"}],
        },
        {
            "type": "message",
            "subtype": "bot_message",
            "ts": ts("2024-01-01T10:01:00"),
            "bot_id": "B2",
            "username": "pager",
            "text": "on call: <@U1>",
        },
        {
            "type": "message",
            "ts": ts("2024-01-01T10:02:00"),
            "user": "UEXT",
            "user_profile": {"display_name": "", "real_name": "Ext Partner"},
            "text": "hello",
        },
        {
            "type": "message",
            "ts": ts("2024-01-01T10:03:00"),
            "user": "UNOPROFILE",
            "text": "who am i",
        },
        {"type": "message", "ts": ts("2024-01-01T10:04:00"), "user": "U3", "text": "deleted"},
        {
            "type": "message",
            "ts": ts("2024-01-01T10:05:00"),
            "user": "UBOT",
            "bot_id": "BX",
            "text": "app says hi",
            "bot_profile": {"name": "ci-app"},
        },
        {
            "type": "message",
            "subtype": "file_comment",
            "ts": ts("2024-01-01T10:06:00"),
            "text": "nice chart",
            "comment": {"user": "U2", "comment": "nice chart"},
        },
    ]
    _, rows = extract(basic(tmp_path, {"2024-01-01": day}), tmp_path / "w")
    got = [(r["author_id"], r["author_name"], r["role"], r["content"]) for r in rows]
    assert got == [
        ("B1", "B1", "assistant", "B1: deploy ok"),
        ("B2", "pager", "assistant", "pager: on call: @Ali"),
        ("UEXT", "Ext Partner", "user", "Ext Partner: hello"),
        ("UNOPROFILE", "UNOPROFILE", "user", "UNOPROFILE: who am i"),
        ("U3", "ghost", "user", "ghost: deleted"),
        ("UBOT", "CI", "assistant", "CI: app says hi"),
        ("U2", "Bob B", "user", "Bob B: nice chart"),
    ]


def test_empty_text_uses_blocks_then_files_else_skipped(tmp_path: Path) -> None:
    blocks = [
        {
            "type": "rich_text",
            "elements": [
                {
                    "type": "rich_text_section",
                    "elements": [
                        {"type": "text", "text": "from blocks "},
                        {"type": "user", "user_id": "U2"},
                    ],
                }
            ],
        }
    ]
    day = [
        {
            "type": "message",
            "ts": ts("2024-01-01T10:00:00"),
            "user": "U1",
            "text": "",
            "blocks": blocks,
        },
        {
            "type": "message",
            "ts": ts("2024-01-01T10:01:00"),
            "user": "U1",
            "text": "",
            "files": [
                {"id": "F1", "name": "a b.png", "url_private": "https://f/a?t=xoxe-1-2"},
                {"id": "F2", "mode": "tombstone"},
            ],
        },
        {
            "type": "message",
            "ts": ts("2024-01-01T10:02:00"),
            "user": "U1",
            "text": "",
            "files": [{"id": "F3", "mode": "hidden_by_limit"}],
        },
        {"type": "message", "ts": ts("2024-01-01T10:03:00"), "user": "U1", "blocks": None},
    ]
    stats, rows = extract(basic(tmp_path, {"2024-01-01": day}), tmp_path / "w")
    assert [r["content"] for r in rows] == ["Ali: from blocks @Bob B", "Ali: [file: a b.png]"]
    assert rows[1]["meta"]["files"] == ["a b.png"]
    assert stats.skipped == {"slack:empty": 2}


def test_reactions_and_metadata(tmp_path: Path) -> None:
    day = [
        {
            "type": "message",
            "ts": ts("2024-01-01T10:00:00"),
            "user": "U1",
            "text": "yo",
            "reactions": [{"name": "clap::skin-tone-2", "users": ["U1", "U9"], "count": 2}],
            "edited": {"user": "U1", "ts": "1.0"},
        }
    ]
    _, rows = extract(basic(tmp_path, {"2024-01-01": day}), tmp_path / "w")
    assert rows[0]["meta"] == {
        "channel": "general",
        "channel_id": "C1",
        "ts": day[0]["ts"],
        "edited": True,
        "reactions": [{"name": "clap::skin-tone-2", "count": 2}],
    }


# --- robustness -----------------------------------------------------------------------


def test_broken_day_files_and_records_are_quarantined(tmp_path: Path) -> None:
    good = {"type": "message", "ts": ts("2024-01-03T10:00:00"), "user": "U1", "text": "ok"}
    export = basic(
        tmp_path,
        {
            "2024-01-03": [
                good,
                42,
                {"type": "message", "text": "no ts"},
                {"ts": "abc", "text": "bad ts"},
            ]
        },
        **{
            "general/2024-01-01.json": b'[{"ts": "1.0", "text": "x"},\n {"ts": oops}]',
            "general/2024-01-02.json": {"not": "an array"},
            "general/2024-01-04.json": b"\xff\xfe garbage",
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    assert [r["content"] for r in rows] == ["Ali: ok"]
    assert stats.quarantined == 6 and stats.balanced
    entries = {
        (e["source_file"], e["position"]): e["reason"] for e in read_quarantine(tmp_path / "w")
    }
    assert entries[("general/2024-01-01.json", "line 2 column 9 (char 37)")].startswith(
        "day file is not valid JSON"
    )
    assert "expected an array" in entries[("general/2024-01-02.json", "top level")]
    assert entries[("general/2024-01-03.json", "$[1]")] == "message is a JSON int, not an object"
    assert entries[("general/2024-01-03.json", "$[2]")] == "message has no ts"
    assert entries[("general/2024-01-03.json", "$[3]")] == "message ts is invalid"
    assert any(f == "general/2024-01-04.json" for f, _ in entries)


def test_type_drift_between_export_years(tmp_path: Path) -> None:
    export = write_export(
        tmp_path / "e",
        {
            "users.json": [{"id": "U1", "name": "old", "profile": None}, "not a user", {"id": 5}],
            "channels.json": [
                {
                    "id": "C1",
                    "name": "general",
                    "created": "1450000000",
                    "members": None,
                    "topic": {"value": "", "last_set": "0"},
                }
            ],
            "integration_logs.json": [{"user_id": 0, "user_name": "slack", "date": "1450000000"}],
            "dms.json": None,
            "general/2015-12-13.json": [
                {"type": "message", "ts": 1450000000, "user": "U1", "text": "int ts"},
                {"type": "message", "ts": "1450000001.5", "user": 0, "text": "short ts, int user"},
                {
                    "type": "message",
                    "ts": "1450000002.000003",
                    "user": "U1",
                    "text": None,
                    "attachments": "oops",
                    "thread_ts": 7,
                    "subtype": None,
                },
            ],
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    assert stats.balanced
    got = {r["meta"]["ts"]: (r["author_name"], r["content"]) for r in rows}
    assert got == {
        "1450000000.000000": ("old", "old: int ts"),
        "1450000001.5": ("unknown", "unknown: short ts, int user"),
    }
    assert stats.skipped == {"slack:empty": 1}
    short = by_ts(rows)["1450000001.5"]
    assert short["created_at"] == datetime(2015, 12, 13, 9, 46, 41, 500000, tzinfo=timezone.utc)


def test_not_an_export_is_one_clear_input_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a ZIP file or folder"):
        list(read(text, Options(user_id="u")))
    empty = write_export(tmp_path / "empty", {"readme.md": b"# nothing"})
    with pytest.raises(InputError, match="no Slack export found"):
        list(read(empty, Options(user_id="u")))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(InputError):
        list(read(broken, Options(user_id="u")))


# --- layouts --------------------------------------------------------------------------


def test_all_conversations_export_private_dm_mpim_and_canvas(tmp_path: Path) -> None:
    msg = {"type": "message", "user": "U1", "text": "hi"}
    export = write_export(
        tmp_path / "e",
        {
            "users.json": USERS,
            "channels.json": [{"id": "C1", "name": "general"}],
            "groups.json": [{"id": "G1", "name": "secret"}],
            "mpims.json": [{"id": "G2", "name": "mpdm-alice--bob--ghost-1", "members": ["U1"]}],
            "dms.json": [{"id": "D1", "created": 1, "members": ["U1", "U2"]}],
            "general/2024-01-01.json": [{**msg, "ts": "1704103200.000001"}],
            "secret/2024-01-01.json": [{**msg, "ts": "1704103200.000002"}],
            "mpdm-alice--bob--ghost-1/2024-01-01.json": [{**msg, "ts": "1704103200.000003"}],
            "D1/2024-01-01.json": [{**msg, "ts": "1704103200.000004"}],
            "D1/canvas_in_the_conversation.json": [{"id": "F1", "name": "c"}],
            "orphan-folder/2024-01-01.json": [{**msg, "ts": "1704103200.000005"}],
            "__uploads/F1/a.png": b"\x89PNG",
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    ids = sorted(r["message_id"] for r in rows)
    assert ids == [
        "C1:1704103200.000001",
        "D1:1704103200.000004",
        "G1:1704103200.000002",
        "G2:1704103200.000003",
        "orphan-folder:1704103200.000005",
    ]
    assert stats.skipped == {"slack:not_a_day_file": 1}
    assert by_ts(rows)["1704103200.000004"]["conversation_id"] == "slack:D1:2024-01-01"


def test_enterprise_grid_org_export(tmp_path: Path) -> None:
    msg = {"type": "message", "text": "hello <@W2>"}
    export = write_export(
        tmp_path / "grid",
        {
            "org_users.json": [
                {"id": "W1", "name": "ana", "profile": {"display_name": "Ana"}},
                {"id": "W2", "name": "ben", "real_name": "Ben"},
            ],
            "channels.json": [{"id": "C0ORG", "name": "announcements"}],
            "dms.json": [{"id": "D0ORG", "members": ["W1", "W2"]}],
            "announcements/2024-01-01.json": [{**msg, "user": "W1", "ts": "1704103200.000001"}],
            "D0ORG/2024-01-01.json": [{**msg, "user": "W1", "ts": "1704103200.000002"}],
            "teams/T1-sales/users.json": [],
            "teams/T1-sales/channels.json": [{"id": "C1", "name": "general"}],
            "teams/T1-sales/general/2024-01-01.json": [
                {**msg, "user": "W1", "ts": "1704103200.000003"}
            ],
            "teams/T2-eng/channels.json": [{"id": "C2", "name": "general"}],
            "teams/T2-eng/general/2024-01-01.json": [
                {**msg, "user": "W2", "ts": "1704103200.000004"}
            ],
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    assert stats.balanced and stats.staged == 4
    got = {r["message_id"]: (r["conversation_id"], r["content"]) for r in rows}
    assert got == {
        "C0ORG:1704103200.000001": ("slack:announcements:2024-01-01", "Ana: hello @Ben"),
        "D0ORG:1704103200.000002": ("slack:D0ORG:2024-01-01", "Ana: hello @Ben"),
        "C1:1704103200.000003": ("slack:general~C1:2024-01-01", "Ana: hello @Ben"),
        "C2:1704103200.000004": ("slack:general~C2:2024-01-01", "Ben: hello @Ben"),
    }


def test_slackdump_style_export(tmp_path: Path) -> None:
    day = (
        b'[{"client_msg_id":"x","type":"message","text":"a \\u003c b \\u0026amp; '
        b'\\u003c@U1\\u003e","user":"U2","ts":"1704103200.000001","blocks":null,'
        b'"replace_original":false,"metadata":{"event_type":""},"user_team":"T1",'
        b'"reply_users_count":0}]'
    )
    export = write_export(
        tmp_path / "e",
        {
            "users.json": USERS,
            "channels.json": [{"id": "C1", "name": "general", "members": None}],
            "groups.json": [],
            "mpims.json": [],
            "dms.json": [],
            "general/2024-01-01.json": day,
            "general/attachments/F1-a.png": b"\x89PNG",
        },
    )
    stats, rows = extract(export, tmp_path / "w")
    assert [r["content"] for r in rows] == ["Bob B: a < b & @Ali"]
    assert stats.skipped == {}


def test_non_ascii_zip_member_names_without_utf8_flag(tmp_path: Path) -> None:
    utf8_name = "général".encode()  # 9 bytes
    cp437_name = "caf\x82".encode("latin-1")  # "café" in cp437, not valid UTF-8
    day = json.dumps(
        [{"type": "message", "user": "U1", "text": "salut", "ts": "1704103200.000001"}]
    ).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("users.json", json.dumps(USERS))
        zf.writestr(
            "channels.json",
            json.dumps([{"id": "C9", "name": "général"}, {"id": "C8", "name": "café"}]),
        )
        zf.writestr("AAAAAAAAA/2024-01-01.json", day)
        zf.writestr("BBBB/2024-01-01.json", day)
    data = buffer.getvalue().replace(b"AAAAAAAAA/", utf8_name + b"/")
    data = data.replace(b"BBBB/", cp437_name + b"/")
    archive = tmp_path / "export.zip"
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as zf:
        assert all(not info.flag_bits & 0x800 for info in zf.infolist())
    stats, rows = extract(archive, tmp_path / "w")
    assert sorted((r["meta"]["channel"], r["message_id"]) for r in rows) == [
        ("café", "C8:1704103200.000001"),
        ("général", "C9:1704103200.000001"),
    ]
    assert {r["source_file"] for r in rows} == {"général/2024-01-01.json", "café/2024-01-01.json"}


def test_zip_bombs_are_refused_with_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("channels.json", "[]")
        zf.writestr("general/2024-01-01.json", "[" + " " * (30 << 20) + "]")
    with pytest.raises(InputError, match="compression ratio .* zip bomb") as info:
        list(read(archive, Options(user_id="u")))
    assert "\n" not in str(info.value)
    small = zip_folder(SAMPLE, tmp_path / "sample.zip")
    with pytest.raises(InputError, match="max_member_bytes"):
        list(read(small, Options(user_id="u", max_member_bytes=1000)))
    with pytest.raises(InputError, match="max_total_bytes"):
        list(read(small, Options(user_id="u", max_total_bytes=5000)))
    # an extracted folder: an oversized day file is quarantined before it is read
    events = list(read(SAMPLE, Options(user_id="u", max_member_bytes=600)))
    big = [e for e in events if isinstance(e, Quarantined)]
    assert big and all("over max_member_bytes" in e.reason for e in big)
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "slack",
            str(archive),
            "--workdir",
            str(tmp_path / "w"),
            "--user-id",
            "u",
        ],
    )
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


# --- options --------------------------------------------------------------------------


def _thread_day() -> list[dict[str, Any]]:
    p = ts("2024-01-01T10:00:00", 1)
    return [
        {"type": "message", "ts": p, "user": "U1", "text": "q", "thread_ts": p},
        {
            "type": "message",
            "ts": ts("2024-01-01T10:01:00"),
            "user": "U2",
            "text": "a",
            "thread_ts": p,
        },
        {"type": "message", "ts": ts("2024-01-01T10:30:00"), "user": "U2", "text": "later"},
        {"type": "message", "ts": ts("2024-01-01T15:00:00"), "user": "U1", "text": "much later"},
        {
            "type": "message",
            "ts": ts("2024-01-01T16:00:00"),
            "user": "U2",
            "text": "late reply",
            "thread_ts": p,
        },
        {"type": "message", "ts": ts("2024-01-01T15:30:00"), "user": "UBOT", "text": "bot"},
    ]


def test_conversation_modes(tmp_path: Path) -> None:
    export = basic(tmp_path, {"2024-01-01": _thread_day()})
    p = ts("2024-01-01T10:00:00", 1)

    def convs(**options: Any) -> list[str]:
        _, rows = extract(export, tmp_path / "w", **options)
        rows.sort(key=lambda r: r["seq"])
        return [r["conversation_id"] for r in rows]

    thread, day = f"slack:general:{p}", "slack:general:2024-01-01"
    assert convs() == [thread, thread, day, day, day, thread]
    assert convs(conversation="channel") == ["slack:general"] * 6
    first, second = (
        f"slack:general:session-{p}",
        "slack:general:session-" + ts("2024-01-01T15:00:00"),
    )
    assert convs(conversation="session", session_gap_minutes=60) == [
        first,
        first,
        first,
        second,
        second,
        first,
    ]


def test_session_mode_splits_each_channel_on_its_own(tmp_path: Path) -> None:
    """Units of one job share a row buffer: sessions must still be per channel."""
    day = _thread_day()
    export = write_export(
        tmp_path / "e",
        {
            "users.json": USERS,
            "channels.json": [{"id": "C1", "name": "general"}, {"id": "C2", "name": "random"}],
            "general/2024-01-01.json": day,
            "random/2024-01-01.json": day[2:],
        },
    )
    _, rows = extract(export, tmp_path / "w", conversation="session", session_gap_minutes=60)
    p = ts("2024-01-01T10:00:00", 1)
    first, second = "session-" + p, "session-" + ts("2024-01-01T15:00:00")
    by_channel: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: r["seq"]):
        by_channel.setdefault(row["meta"]["channel"], []).append(row["conversation_id"])
    g, r = "slack:general:", "slack:random:"
    assert by_channel == {
        "general": [g + first, g + first, g + first, g + second, g + second, g + first],
        # the reply's parent is in general only: it keeps its thread as conversation
        "random": [r + "session-" + ts("2024-01-01T10:30:00"), r + second, r + second, r + p],
    }


def test_rows_point_at_their_day_file_element(tmp_path: Path) -> None:
    """source_file and source_position ($[i]) locate each staged row, past index 4095 too."""
    big = [
        {"type": "message", "user": "U1", "text": f"m{i}", "ts": f"1704000000.{i:06d}"}
        for i in range(4_100)
    ]
    big[7] = {"type": "message", "subtype": "channel_join", "user": "U1", "ts": "1704000000.9"}
    export = basic(
        tmp_path,
        {"2024-01-01": big, "2024-01-02": _thread_day()},
        **{"random/2024-01-03.json": _thread_day()[:3]},
    )
    _, rows = extract(export, tmp_path / "w")
    assert len(rows) == 4_099 + 6 + 3
    files: dict[str, list[Any]] = {}
    for row in rows:
        name, position = row["source_file"], row["source_position"]
        if name not in files:
            files[name] = json.loads((export / name).read_text())
        assert position.startswith("$[") and position.endswith("]")
        assert files[name][int(position[2:-1])]["ts"] == row["meta"]["ts"], (name, position)
    assert {r["source_position"] for r in rows} >= {"$[0]", "$[8]", "$[4095]", "$[4099]"}
    assert sorted(files) == [
        "general/2024-01-01.json",
        "general/2024-01-02.json",
        "random/2024-01-03.json",
    ]


def test_author_mode_owners_template_and_map(tmp_path: Path) -> None:
    export = basic(tmp_path, {"2024-01-01": _thread_day()})
    stats, rows = extract(
        export, tmp_path / "w", memory_owner="author", user_id=None, user_id_template="slack-{id}"
    )
    assert stats.skipped == {"slack:bot_author": 1}
    assert sorted({r["user_id"] for r in rows}) == ["slack-U1", "slack-U2"]
    assert all(r["role"] == "user" and ":" not in r["content"] for r in rows)
    stats, rows = extract(
        export, tmp_path / "w2", memory_owner="author", user_id_template="{email}"
    )
    assert {r["user_id"] for r in rows} == {"bob@x.org"}
    assert stats.skipped == {"slack:author_unmapped": 2, "slack:bot_author": 1}
    mapping = tmp_path / "map.csv"
    mapping.write_text("slack,user_id\nU1,alice-memos\nbob@x.org,bob-memos\n")
    _, rows = extract(export, tmp_path / "w3", memory_owner="author", user_map=str(mapping))
    assert {r["author_id"]: r["user_id"] for r in rows} == {"U1": "alice-memos", "U2": "bob-memos"}


def test_user_map_in_a_config_file_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled run from another directory still finds the map next to its config."""
    export = basic(tmp_path, {"2024-01-01": _thread_day()})
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "map.csv").write_text("slack,user_id\nU1,alice-memos\nU2,bob-memos\n")
    (folder / "slack.yaml").write_text(
        "sources:\n"
        "  - kind: slack\n"
        "    path: ../export\n"
        "    options: {memory_owner: author, user_map: map.csv}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (source,) = load_config(folder / "slack.yaml", env={}).sources
    assert source.path == export.resolve()
    assert source.options["user_map"] == str(folder / "map.csv")
    stats = extract_source(source, tmp_path / "w")
    assert stats.balanced and stats.staged == 5
    rows = pq.read_table(tmp_path / "w" / "staging" / "slack").drop_columns(["bucket"]).to_pylist()
    assert {r["author_id"]: r["user_id"] for r in rows} == {"U1": "alice-memos", "U2": "bob-memos"}


def test_channel_include_and_exclude(tmp_path: Path) -> None:
    msg = {"type": "message", "user": "U1", "text": "hi", "ts": "1704103200.000001"}
    export = write_export(
        tmp_path / "e",
        {
            "channels.json": [
                {"id": "C1", "name": "general"},
                {"id": "C2", "name": "random"},
                {"id": "C3", "name": "rnd-lab"},
            ],
            **{f"{n}/2024-01-01.json": [msg] for n in ("general", "random", "rnd-lab")},
        },
    )
    _, rows = extract(export, tmp_path / "w", channels=["r*"])
    assert sorted(r["meta"]["channel"] for r in rows) == ["random", "rnd-lab"]
    _, rows = extract(export, tmp_path / "w2", exclude_channels=["C2", "rnd-*"])
    assert [r["meta"]["channel"] for r in rows] == ["general"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"user_id": None}, "needs a user_id"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"include_subtypes": ["bot_message"]}, "not system subtypes"),
        ({"memory_owner": "author", "user_id_template": "{phone}"}, "template"),
        ({"memory_owner": "author", "user_map": "/nonexistent/map.json"}, "user_map"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    source = SourceConfig(kind="slack", path=SAMPLE, options={"user_id": "u", **options})
    with pytest.raises(ConfigError, match=match):
        extract_source(source, tmp_path / "w")


def test_worker_processes_give_the_same_rows(tmp_path: Path) -> None:
    one = [e for e in read(SAMPLE, Options(user_id="u", workers=1))]
    two = [e for e in read(SAMPLE, Options(user_id="u", workers=2))]

    def rows(events: list[Any]) -> list[tuple[Any, ...]]:
        out = []
        for e in events:
            if isinstance(e, MessageTable):
                out += [tuple(r.values()) for r in e.table.to_pylist()]
        return sorted(out)

    def others(events: list[Any]) -> Counter[str]:
        return Counter(
            e.reason
            for e in events
            if isinstance(e, (Skipped, Quarantined))
            for _ in range(getattr(e, "count", 1))
        )

    assert rows(one) == rows(two) and len(rows(one)) == 14
    assert others(one) == others(two)


def test_cli_extract_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "slack",
            str(SAMPLE),
            "--workdir",
            str(tmp_path / "w"),
            "--user-id",
            "U",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["read"] == out["staged"] + sum(out["skipped"].values()) + out["quarantined"]
    assert out["staged"] == 14 and out["users"] == 1
    result = CliRunner().invoke(
        main, ["extract", "--source", "slack", str(SAMPLE), "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 2 and "needs a user_id" in result.stderr


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=1).filter(lambda t: t.strip() and "xox" not in t))
def test_any_text_survives_connector_to_parquet(tmp_path: Path, text: str) -> None:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    folder = tmp_path / f"h{abs(hash(text))}"
    export = basic(
        folder,
        {
            "2024-01-01": [
                {"type": "message", "ts": "1704103200.000001", "user": "U1", "text": escaped}
            ]
        },
    )
    _, rows = extract(export, folder / "w")
    expected = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert [r["content"] for r in rows] == [f"Ali: {expected}"]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_write_parts_with_the_same_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    flat_parts: dict[str, dict[str, int]],
) -> None:
    monkeypatch.setattr(slack_zip, "JOB_BYTES", 1)  # one job (and part) per unit
    stats, rows = extract(SAMPLE, tmp_path / "w", workers=workers)
    parts = sorted(flat_parts["slack"])
    assert len(parts) > 3 and "part-00000.parquet" not in parts
    tables = [
        e.table for e in read(SAMPLE, Options(user_id="owner")) if isinstance(e, MessageTable)
    ]
    expected = sorted(tuple(r.values()) for t in tables for r in t.to_pylist())
    for row in rows:
        del row["meta"]
    assert sorted(tuple(r.values()) for r in rows) == expected
    assert stats.staged == len(expected) == 14
    assert stats.conversations == len({r[4] for r in expected})


@pytest.mark.parametrize("workers", [1, 2])
def test_counts_of_parts_are_distinct_over_all_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Conversations and owners that span parts are counted once (author mode)."""
    monkeypatch.setattr(slack_zip, "JOB_BYTES", 1)
    monkeypatch.setattr(slack_zip, "PART_BYTES", 1)  # a channel's days in separate parts
    import pipeline.core.staging_buckets as sb

    parts: list[Any] = []
    original = sb.bucket_parts

    def spy(folder: Path, open_writer: Any, buckets: int | None = None) -> int:
        parts.extend(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))
        return original(folder, open_writer, buckets)

    monkeypatch.setattr(sb, "bucket_parts", spy)  # the parts as the workers wrote them
    stats, rows = extract(SAMPLE, tmp_path / "w", workers=workers, memory_owner="author")
    channels = [{f.split("/")[0] for f in part["source_file"].to_pylist()} for part in parts]
    assert len(set().union(*channels)) < sum(map(len, channels))  # a channel spans parts
    assert stats.users == len({r["user_id"] for r in rows}) > 1
    assert stats.conversations == len({(r["user_id"], r["conversation_id"]) for r in rows})


def test_workers_never_import_pandas() -> None:
    code = (
        "import sys, pyarrow as pa\n"
        "from connectors.slack.normalize import skip_pandas_probe\n"
        "skip_pandas_probe()\n"
        "assert pa.array(['a', 'b']).to_pylist() == ['a', 'b']\n"
        "assert 'pandas' not in sys.modules\n"
        "import pandas\n"  # still importable by code that wants it
        "print(pa.table({'a': [1]}).to_pandas().shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "(1, 1)"


def test_workers_start_without_numpy_or_pandas(tmp_path: Path) -> None:
    """The worker initializer loads pyarrow without numpy; the whole read still works."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from connectors.slack.workers import init_slack_worker\n"
        "init_slack_worker()\n"
        "from connectors.slack.read import Options, read\n"
        "from pipeline.core.models import StagedPart\n"
        f"parts = Path({str(tmp_path)!r})\n"
        "events = list(read(Path('data/samples/slack_export'), Options(user_id='u', workers=1),"
        " parts_dir=parts))\n"
        "print(sum(e.rows for e in events if isinstance(e, StagedPart)))\n"
        "print('numpy' in sys.modules, 'pandas' in sys.modules)\n"
        "import numpy\n"  # refused only while pyarrow loaded
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split("\n")[:2] == ["14", "False False"]
    assert pq.read_table(tmp_path).num_rows == 14


def test_a_script_without_main_guard_can_use_workers(tmp_path: Path) -> None:
    """Workers do not re-run the caller's script (spawn would, and start workers again)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from connectors.slack.read import Options, read\n"
        "from pipeline.core.models import StagedPart\n"
        f"events = read(Path({str(SAMPLE)!r}), Options(user_id='u', workers=2),"
        f" parts_dir=Path({str(tmp_path)!r}))\n"
        "print(sum(e.rows for e in events if isinstance(e, StagedPart)))\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["14"]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
_FIELDS = {
    "ts": st.sampled_from(["1704103200.000001", "1704103260.5", "17041032", "x"]) | _JSON,
    "user": st.sampled_from(["U1", "UBOT", "USLACKBOT", "U404", ""]) | _JSON,
    "subtype": st.sampled_from(["bot_message", "thread_broadcast", "channel_join"]) | _JSON,
    "text": st.sampled_from(["hi <@U1> &amp; <#C1|general>", "<https://x.org|x>"]) | _JSON,
    "thread_ts": st.sampled_from(["1704103200.000001", "0000000000.000000"]) | _JSON,
    **{
        name: _JSON
        for name in [
            *("bot_id", "hidden", "edited", "reactions", "username", "files", "file"),
            *("attachments", "blocks", "user_profile", "bot_profile", "comment"),
        ]
    },
}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=st.lists(st.fixed_dictionaries({}, optional=_FIELDS), max_size=6),
    owner=st.sampled_from(["workspace", "author"]),
    conversation=st.sampled_from(["thread", "session", "channel"]),
)
def test_any_field_of_any_json_type_is_counted_never_raised(
    tmp_path: Path, messages: list[dict[str, Any]], owner: str, conversation: str
) -> None:
    """Type drift in every field the connector reads: each record is staged, skipped or
    quarantined, and nothing raises (the per-message code is compiled, and compiled code
    checks declared types at run time)."""
    folder = tmp_path / f"h{abs(hash(json.dumps(messages, sort_keys=True)))}"
    export = basic(folder, {"2024-01-01": messages})
    stats, _ = extract(
        export, folder / "w", memory_owner=owner, conversation=conversation, workers=1
    )
    assert stats.read == len(messages)
