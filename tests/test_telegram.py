"""Telegram Desktop JSON connector: real `result.json` files (built the way Telegram
Desktop's export writer lays them out) staged to Parquet, through the library and the CLI."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.base import get_connector, known_sources
from connectors.export_files import ExportFiles as ExportFilesFor
from connectors.telegram import Options, flatten_text, looks_like, read
from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ExtractStats, MessageTable, Quarantined, Skipped
from pipeline.extract import extract_source
from pipeline.server.store import conversation_messages, message_counts

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "telegram_export"
BASE = 1_709_283_600  # 2024-03-01T09:00:00Z


def msg(mid: int, offset: int, text: Any = "hi", who: str = "Ann", uid: str = "user1", **kw: Any):
    out: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "date": "2024-03-01T10:00:00",
        "date_unixtime": str(BASE + offset),
        "from": who,
        "from_id": uid,
        "text": text,
    }
    out.update(kw)
    return out


def chat(cid: int, messages: list[Any], name: str = "Chat", kind: str = "personal_chat"):
    return {"name": name, "type": kind, "id": cid, "messages": messages}


def write(folder: Path, doc: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), "utf-8")
    return folder


def full(*chats: Any, left: list[Any] | None = None) -> dict[str, Any]:
    return {
        "about": "x",
        "personal_information": {"user_id": 1, "first_name": "Ann"},
        "chats": {"about": "y", "list": list(chats)},
        "left_chats": {"about": "z", "list": left or []},
    }


def extract(path: Path, workdir: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    source = SourceConfig(kind="telegram", path=path, user_id="owner", options=options)
    stats = extract_source(source, workdir)
    assert stats.balanced, stats
    rows = pq.read_table(workdir / "staging" / "telegram").drop_columns(["bucket"]).to_pylist()
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return stats, rows


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["message_id"]: row for row in rows}


# --- the committed sample -------------------------------------------------------------


def test_registered_and_recognised() -> None:
    assert "telegram" in known_sources()
    assert get_connector("telegram").options_model is Options
    assert looks_like(SAMPLE) and looks_like(SAMPLE / "result.json")


def test_sample_full_export_is_balanced_with_specific_reasons(tmp_path: Path) -> None:
    stats, rows = extract(SAMPLE, tmp_path / "w")
    assert stats.skipped == {
        "telegram:service:create_channel": 1,
        "telegram:service:create_group": 1,
        "telegram:service:group_call": 1,
        "telegram:service:invite_members": 1,
        "telegram:service:join_group_by_link": 1,
        "telegram:service:phone_call": 1,
        "telegram:service:pin_message": 1,
        "telegram:service:topic_created": 2,
        "telegram:unsupported": 1,
    }
    assert stats.quarantined == 0
    assert stats.staged == len(rows) == 33
    chats = {row["meta"]["chat"] for row in rows}
    assert chats == {
        "Ben Ortiz",
        "Release crew",
        "Support forum",
        "WeatherBot",
        "Acme News",
        "Saved Messages",
        "Old project",  # a left channel
    }


def test_sample_text_entities_are_flattened_faithfully(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w", speaker_prefix=False)
    got = by_id(rows)
    assert got["telegram:1002:102"]["content"] == (
        "Yes, they are at https://example.org/notes and the changelog "
        "(https://example.org/changelog)."
    )
    assert got["telegram:1002:103"]["content"] == (
        "Run `make test` first:\n```sh\nmake test\nmake bench\n```"
    )
    assert got["telegram:1002:104"]["content"] == "Ping @chloe_m and Dana 🎉 today #release"
    assert got["telegram:5005:30"]["content"] == "/weather Berlin"


def test_sample_media_placeholders_keep_file_names(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w", speaker_prefix=False)
    got = {k: v["content"] for k, v in by_id(rows).items()}
    assert got["telegram:1002:106"] == "[photo: photo_1@01-03-2024_10-05-00.jpg]"
    assert got["telegram:1002:107"] == "[file: roadmap-2024.pdf]\nSlides for Monday"
    assert got["telegram:1002:108"] == "[voice message: voice.ogg]"  # file not included
    assert got["telegram:1002:109"] == "[sticker 👍]"
    assert got["telegram:2200:5"] == "[poll: Deploy on Friday?] Yes / No\nPoll time"
    assert got["telegram:2200:7"] == "[location]"
    assert got["telegram:2200:8"] == "[contact: Eve Stone]"  # no phone number
    assert got["telegram:2200:9"] == "[venue: Café Central, Main street 1]\nMeeting point"
    assert got["telegram:2200:12"] == "[video: demo.mp4]"
    assert got["telegram:2200:13"] == "[video message: file_1.mp4]"
    assert got["telegram:2200:14"] == "[animation: party.mp4]"


def test_sample_replies_edits_forwards_bots_and_authors(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w")
    got = by_id(rows)
    reply = got["telegram:1002:102"]["meta"]
    assert reply["reply_to_message_id"] == 101 and reply["reply_to"] == "telegram:1002:101"
    assert got["telegram:1002:105"]["meta"]["edited"] == "2024-03-01T09:10:00Z"
    forwarded = got["telegram:1002:111"]
    assert forwarded["meta"]["forwarded_from"] == "Tech Weekly"
    assert forwarded["content"] == "Ben Ortiz: [forwarded from Tech Weekly]\nWorth a read"
    assert forwarded["author_id"] == "user1002"
    via = got["telegram:1002:112"]
    assert via["meta"]["via_bot"] == "@gif" and "[via @gif]" in via["content"]
    assert via["author_name"] == "Anna Keller"
    bot = got["telegram:5005:31"]
    assert (bot["role"], bot["meta"]["bot"]) == ("assistant", True)
    assert got["telegram:5005:30"]["role"] == "user"
    deleted = got["telegram:2200:4"]
    assert (deleted["author_id"], deleted["author_name"]) == ("user1099", "Deleted Account")
    post = got["telegram:7007:41"]
    assert (post["author_id"], post["author_name"]) == ("channel7007", "Acme News")
    assert post["meta"]["signature"] == "Anna Keller"
    assert got["telegram:1001:50"]["meta"]["saved_from"] == "Ben Ortiz"
    assert got["telegram:1002:114"]["meta"]["reactions"] == [{"emoji": "❤", "count": 1}]
    assert all(r["author_id"] and r["author_name"] for r in rows)
    assert all(r["seq"] == int(r["message_id"].rsplit(":", 1)[1]) for r in rows)


def test_unixtime_is_preferred_over_the_local_date(tmp_path: Path) -> None:
    export = write(
        tmp_path / "e",
        chat(
            9,
            [
                msg(1, 0, date="1999-01-01T00:00:00"),  # local date disagrees: ignored
                {**msg(2, 0, date="2024-03-01T12:00:00"), "date_unixtime": None},
            ],
        ),
    )
    _, rows = extract(export, tmp_path / "w", timezone="Europe/Berlin")
    times = {r["message_id"]: r["created_at"].isoformat() for r in rows}
    assert times == {
        "telegram:9:1": "2024-03-01T09:00:00+00:00",
        "telegram:9:2": "2024-03-01T11:00:00+00:00",  # 12:00 in Berlin
    }


# --- layouts ----------------------------------------------------------------------------


def test_single_chat_export_gives_the_same_ids_as_the_full_export(tmp_path: Path) -> None:
    doc = json.loads((SAMPLE / "result.json").read_text("utf-8"))
    personal = doc["chats"]["list"][0]
    single = write(tmp_path / "single", personal)
    _, one = extract(single / "result.json", tmp_path / "w1")
    _, every = extract(SAMPLE, tmp_path / "w2")
    ids = {r["message_id"]: r["content"] for r in one}
    assert ids and ids.items() <= {r["message_id"]: r["content"] for r in every}.items()
    assert {r["source_position"] for r in one} >= {"messages[0]", "messages[14]"}


def test_zip_equals_folder_and_a_wrapping_folder_is_fine(tmp_path: Path) -> None:
    target = tmp_path / "export.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(SAMPLE / "result.json", "DataExport_2024-03-05/result.json")
    assert looks_like(target)
    _, zipped = extract(target, tmp_path / "w1")
    _, folder = extract(SAMPLE, tmp_path / "w2")
    keep = ("message_id", "conversation_id", "content", "created_at", "metadata")
    assert [{k: r[k] for k in keep} for r in zipped] == [{k: r[k] for k in keep} for r in folder]
    assert zipped[0]["source_file"].endswith("export.zip:DataExport_2024-03-05/result.json")


def test_not_an_export_is_one_clear_input_error(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no result.json"):
        list(read(tmp_path / "other", Options(user_id="o")))
    for junk in (b"", b"\x00\x01garbage", b"[1, 2]", b'{"guild": {}, "channel": {}}'):
        path = tmp_path / "junk.json"
        path.write_bytes(junk)
        assert not looks_like(path)
    assert not looks_like(tmp_path / "missing")
    assert not looks_like(ROOT / "data" / "samples" / "slack_export")
    assert not looks_like(ROOT / "data" / "samples" / "discord_export")


# --- broken input ------------------------------------------------------------------------


def test_a_bad_record_quarantines_only_itself(tmp_path: Path) -> None:
    export = write(
        tmp_path / "e",
        full(
            chat(5, [msg(1, 0), "not an object", {"type": "message", "text": "no id"}, msg(4, 9)])
        ),
    )
    stats, rows = extract(export, tmp_path / "w")
    assert [r["message_id"] for r in rows] == ["telegram:5:1", "telegram:5:4"]
    assert stats.quarantined == 2
    lines = (tmp_path / "w" / "quarantine.jsonl").read_text().splitlines()
    reasons = sorted(json.loads(line)["reason"].split(":")[1] for line in lines)
    assert reasons == ["no_id", "not_a_message"]
    assert {json.loads(line)["position"] for line in lines} == {
        "chats.list[0].messages[1]",
        "chats.list[0].messages[2]",
    }


def test_a_cut_off_file_keeps_what_came_before(tmp_path: Path) -> None:
    doc = full(chat(5, [msg(i, i) for i in range(1, 40)]), chat(6, [msg(1, 0)]))
    data = json.dumps(doc, indent=1).encode()
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "result.json").write_bytes(data[: len(data) * 2 // 3])
    events = list(read(folder, Options(user_id="o")))
    staged = sum(e.table.num_rows for e in events if isinstance(e, MessageTable))
    bad = [e for e in events if isinstance(e, Quarantined)]
    assert 10 < staged < 39 and len(bad) == 1
    assert "malformed_json" in bad[0].reason and bad[0].position.startswith("byte ")


def test_a_chat_without_id_is_quarantined_as_one_record(tmp_path: Path) -> None:
    export = write(tmp_path / "e", full({"name": "x", "messages": [msg(1, 0), msg(2, 1)]}))
    stats, rows = extract(export, tmp_path / "w")
    assert rows == [] and stats.quarantined == 1
    assert stats.skipped == {"telegram:quarantined_chat": 1}


# --- options -----------------------------------------------------------------------------


def _two_sessions() -> dict[str, Any]:
    return chat(
        3,
        [
            msg(1, 0, "question?"),
            msg(2, 60, "more"),
            msg(3, 7200, "new topic"),  # two hours later: a new session
            msg(4, 7260, "late answer", reply_to_message_id=1),  # joins session 1
            msg(5, 7320, "answer to the late answer", reply_to_message_id=4),
        ],
    )


def test_conversation_policies(tmp_path: Path) -> None:
    export = write(tmp_path / "e", _two_sessions())
    _, rows = extract(export, tmp_path / "s")
    got = {r["message_id"].rsplit(":", 1)[1]: r["conversation_id"] for r in rows}
    assert got == {
        "1": "telegram:3:session-1",
        "2": "telegram:3:session-1",
        "3": "telegram:3:session-3",
        "4": "telegram:3:session-1",
        "5": "telegram:3:session-1",
    }
    _, rows = extract(export, tmp_path / "c", conversation="chat")
    assert {r["conversation_id"] for r in rows} == {"telegram:3"}
    _, rows = extract(export, tmp_path / "t", conversation="thread")
    got = {r["message_id"].rsplit(":", 1)[1]: r["conversation_id"] for r in rows}
    assert got == {
        "1": "telegram:3:2024-03-01",
        "2": "telegram:3:2024-03-01",
        "3": "telegram:3:2024-03-01",
        "4": "telegram:3:thread-1",
        "5": "telegram:3:thread-1",
    }


def test_forum_topics_are_threads(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "w", conversation="thread", chats=["Support forum"])
    got = {r["message_id"]: r["conversation_id"] for r in rows}
    assert got == {
        "telegram:2300:21": "telegram:2300:thread-20",
        "telegram:2300:22": "telegram:2300:thread-20",
        "telegram:2300:23": "telegram:2300:thread-20",
        "telegram:2300:25": "telegram:2300:thread-24",
    }


def test_owner_policies(tmp_path: Path) -> None:
    _, rows = extract(SAMPLE, tmp_path / "ws")
    first = by_id(rows)["telegram:1002:101"]
    assert (first["user_id"], first["content"]) == (
        "owner",
        "Anna Keller: Morning Ben! Did you see the release notes?",
    )
    _, rows = extract(SAMPLE, tmp_path / "g", memory_owner="group")
    assert {r["user_id"] for r in rows} == {"owner"}
    first = by_id(rows)["telegram:1002:101"]
    assert first["content"] == "Morning Ben! Did you see the release notes?"
    assert (first["author_id"], first["author_name"]) == ("user1001", "Anna Keller")
    user_map = tmp_path / "map.json"
    user_map.write_text(json.dumps({"user1001": "anna@example.org"}))
    stats, rows = extract(
        SAMPLE,
        tmp_path / "a",
        memory_owner="author",
        user_id_template="tg-{id}",
        user_map=str(user_map),
    )
    owners = {r["author_id"]: r["user_id"] for r in rows}
    assert owners["user1001"] == "anna@example.org" and owners["user1002"] == "tg-user1002"
    assert stats.skipped["telegram:bot_author"] == 1
    assert all(not r["content"].startswith(r["author_name"] + ":") for r in rows)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"memory_owner": "group", "speaker_prefix": True}, "speaker_prefix"),
        ({"timezone": "Mars/Base"}, "unknown time zone"),
        ({"user_id_template": "{email}"}, "template"),
        ({"conversation": "day"}, "conversation"),
    ],
)
def test_config_errors_are_clear(options: dict[str, Any], match: str) -> None:
    source = SourceConfig(kind="telegram", path=SAMPLE, options=options)
    with pytest.raises(ConfigError, match=match):
        extract_source(source, Path("/nonexistent-workdir"))


def test_workspace_mode_needs_a_user_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a user_id"):
        list(read(SAMPLE, Options()))


def test_chat_filters_and_left_chats(tmp_path: Path) -> None:
    stats, rows = extract(SAMPLE, tmp_path / "a", chats=["Release*", "5005"])
    assert {r["meta"]["chat"] for r in rows} == {"Release crew", "WeatherBot"}
    assert stats.skipped["telegram:excluded_chat"] > 0
    _, rows = extract(SAMPLE, tmp_path / "b", include_left_chats=False)
    assert "Old project" not in {r["meta"]["chat"] for r in rows}


def test_same_chat_twice_is_staged_once(tmp_path: Path) -> None:
    target = tmp_path / "two.zip"
    data = json.dumps(_two_sessions())
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("old/result.json", data)
        zf.writestr("new/result.json", data)
    stats, rows = extract(target, tmp_path / "w")
    assert len(rows) == 5 and stats.skipped == {"telegram:duplicate": 5}


def test_worker_processes_split_a_large_file_by_chat_with_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flat_parts: dict[str, dict[str, int]]
) -> None:
    import connectors.group_chat_jobs as jobs
    import connectors.telegram as telegram
    import connectors.telegram_split as split

    monkeypatch.setattr(telegram, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(jobs, "JOB_BYTES", 1)  # one job per chat
    with ExportFilesFor(SAMPLE) as export:
        spans = split.chat_spans(export, "result.json")
    assert [(s.list_name, s.index, s.id) for s, _ in spans] == [
        ("chats", 0, 1002),
        ("chats", 1, 2200),
        ("chats", 2, 2300),
        ("chats", 3, 5005),
        ("chats", 4, 7007),
        ("chats", 5, 1001),
        ("left_chats", 0, 8008),
    ]
    monkeypatch.setattr(split, "SCAN_CHUNK", 97)  # headers cut by chunk ends are found too
    with ExportFilesFor(SAMPLE) as export:
        assert split.chat_spans(export, "result.json") == spans
    stats, parallel = extract(SAMPLE, tmp_path / "p", workers=2)
    parts = list(flat_parts["telegram"])
    assert len(parts) >= 6
    _, serial = extract(SAMPLE, tmp_path / "s", workers=1)
    assert stats.staged == 33

    def key(r: dict[str, Any]) -> str:
        return str(r["message_id"])

    assert sorted(parallel, key=key) == sorted(serial, key=key)


@pytest.mark.parametrize("bad", ["WeatherBot\\q", "Weather\tBot"])
def test_a_chat_header_the_scan_cannot_read_makes_workers_redo_nothing_differently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """Workers start on the first chats while the scan goes on; a later chat header that
    does not parse (an invalid escape, a raw tab) sends the file to the in-process walk,
    and what workers did already is thrown away: the same rows and counts as one process."""
    import connectors.group_chat_jobs as jobs
    import connectors.telegram as telegram

    monkeypatch.setattr(telegram, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(jobs, "JOB_BYTES", 1)
    data = (SAMPLE / "result.json").read_text("utf-8").replace('"WeatherBot"', f'"{bad}"')
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "result.json").write_text(data, "utf-8")
    stats, parallel = extract(folder, tmp_path / "p", workers=2)
    parts = sorted(p.name for p in (tmp_path / "p" / "staging" / "telegram").rglob("*.parquet"))
    assert parts == ["part-00000.parquet"]
    serial_stats, serial = extract(folder, tmp_path / "s", workers=1)
    assert stats == serial_stats and stats.quarantined == 1
    assert parallel == serial


def test_flatten_text_entity_kinds() -> None:
    parts = [
        "a ",
        {"type": "text_link", "text": "", "href": "https://x.org"},
        {"type": "text_link", "text": "https://y.org", "href": "https://y.org"},
        {"type": "pre", "text": "x", "language": None},
        {"type": "spoiler", "text": " secret"},
        {"type": "blockquote", "text": " q", "collapsed": True},
        {"type": "bold", "text": 5},
        7,
    ]
    assert flatten_text(parts) == "a https://x.orghttps://y.org```\nx\n``` secret q"
    assert flatten_text(None) == "" and flatten_text({"a": 1}) == ""


def test_cli_extract_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "telegram",
            str(SAMPLE),
            "--workdir",
            str(tmp_path / "w"),
            "--user-id",
            "ann",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["staged"] == 33 and out["read"] == 33 + 10 and out["quarantined"] == 0
    bad = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "telegram",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "x"),
            "--user-id",
            "ann",
        ],
    )
    assert bad.exit_code == 3 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr


# --- streaming and fuzzing -------------------------------------------------------------


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "id",
    "type",
    "date",
    "date_unixtime",
    "from",
    "from_id",
    "text",
    "text_entities",
    "edited",
    "edited_unixtime",
    "reply_to_message_id",
    "reply_to_peer_id",
    "forwarded_from",
    "saved_from",
    "via_bot",
    "author",
    "photo",
    "file",
    "file_name",
    "media_type",
    "sticker_emoji",
    "poll",
    "contact_information",
    "location_information",
    "place_name",
    "address",
    "game_title",
    "invoice_information",
    "todo_list",
    "reactions",
    "action",
]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(
        st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, JSON)) | JSON, max_size=6
    ),
    header=st.fixed_dictionaries({}, optional={"name": JSON, "type": JSON}),
    owner=st.sampled_from(["workspace", "author", "group"]),
    conversation=st.sampled_from(["chat", "thread", "session"]),
)
# Found by the fuzz test: json.dumps writes an infinite float as `Infinity` (also NaN), which
# the message parser reads as a number but the walk over the chat's header refused, losing
# the whole chat.
@example(records=[], header={"name": math.inf}, owner="workspace", conversation="chat")
@example(records=[], header={"type": -math.inf}, owner="group", conversation="session")
@example(records=[], header={"name": [math.nan]}, owner="author", conversation="thread")
def test_any_json_in_any_field_is_counted_never_raised(
    tmp_path: Path,
    records: list[Any],
    header: dict[str, Any],
    owner: str,
    conversation: str,
) -> None:
    """Each record is staged, skipped or quarantined; a bad one never costs its neighbours."""
    good = msg(10**6, 0, "I always survive")
    doc = full({**header, "id": 77, "messages": [*records, good]})
    folder = tmp_path / f"h{abs(hash(json.dumps(doc, sort_keys=True)))}"
    stats, rows = extract(
        write(folder, doc), folder / "w", memory_owner=owner, conversation=conversation
    )
    assert stats.read == len(records) + 1
    assert f"telegram:77:{10**6}" in {r["message_id"] for r in rows}


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(), min_size=1, max_size=5))
def test_any_text_survives_to_parquet(texts: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = chat(
            1, [msg(i + 1, i, [{"type": "plain", "text": t}, "!"]) for i, t in enumerate(texts)]
        )
        _, rows = extract(write(Path(tmp) / "e", doc), Path(tmp) / "w", memory_owner="group")
    want = [t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") + "!" for t in texts]
    assert [r["content"] for r in sorted(rows, key=lambda r: r["seq"])] == want


# --- incremental delivery --------------------------------------------------------------


def _grown(first: int, total: int) -> dict[str, Any]:
    messages = [
        msg(i, i * 60, f"message number {i}", who=f"P{i % 3}", uid=f"user{i % 3}")
        for i in range(1, total + 1)
    ]
    return full(chat(42, messages[:first]), chat(43, messages[: first // 2]))


def _delivered(db: Path) -> dict[str, list[str]]:
    return {
        conv: [m["content"] for m in conversation_messages(db, user, conv)]
        for user, conv in message_counts(db)
    }


def test_longer_reexport_sends_only_new_messages_through_run(tmp_path: Path) -> None:
    write(tmp_path / "export", _grown(6, 6))
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nuser_id: ann\nsources:\n  - kind: telegram\n    path: export\n"
        "    options:\n      memory_owner: group\nload:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    first = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["load"]["sent"]["messages"] == 9
    write(
        tmp_path / "export",
        full(_grown(10, 10)["chats"]["list"][0], _grown(6, 6)["chats"]["list"][1]),
    )
    second = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert second.exit_code == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["load"]["sent"]["messages"] == 4 and out["changed"]["count"] == 0
    delivered = _delivered(tmp_path / "work" / "local-memos.sqlite")
    assert sum(len(v) for v in delivered.values()) == 13
    assert delivered["telegram:42:session-1"][-1] == "message number 10"


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_longer_reexport_sends_only_new_messages_step_by_step(tmp_path: Path) -> None:
    export, work = tmp_path / "export", str(tmp_path / "work")
    write(export, _grown(6, 6))
    steps = (
        ("extract", "--source", "telegram", str(export), "--workdir", work, "--user-id", "ann"),
        ("chunk", "--workdir", work),
        ("load", "--workdir", work, "--target", "local"),
    )
    for step in steps:
        _cli(*step)
    write(export, full(_grown(10, 10)["chats"]["list"][0], _grown(6, 6)["chats"]["list"][1]))
    for step in steps[:2]:
        _cli(*step)
    loaded = _cli(*steps[2])
    assert loaded["sent"]["messages"] == 4
    delivered = _delivered(tmp_path / "work" / "local-memos.sqlite")
    assert sum(len(v) for v in delivered.values()) == 13


def test_events_are_tables_and_counted_skips() -> None:
    events = list(read(SAMPLE, Options(user_id="o")))
    assert all(isinstance(e, MessageTable | Skipped) for e in events)
