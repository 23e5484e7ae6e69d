"""DiscordChatExporter JSON connector: channel files (as its JSON writer lays them out) in
folders and ZIPs, staged to Parquet, through the library and the CLI."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.base import get_connector, known_sources
from connectors.discord import Options, looks_like, read
from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ExtractStats, MessageTable, Quarantined
from pipeline.extract import extract_source
from pipeline.server.store import conversation_messages, message_counts

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "discord_export"
GUILD = {"id": "700", "name": "Acme", "iconUrl": "https://cdn.example/i.png"}
EPOCH_MS = 1_420_070_400_000
BASE_MS = 1_709_283_600_000  # 2024-03-01T09:00:00Z


def snowflake(minutes: int, n: int = 0) -> str:
    return str(((BASE_MS + minutes * 60_000 - EPOCH_MS) << 22) + n)


def author(uid: str = "1", name: str = "ann", nick: str | None = "Ann", bot: bool = False):
    return {
        "id": uid,
        "name": name,
        "discriminator": "0000",
        "nickname": nick,
        "color": None,
        "isBot": bot,
        "roles": [],
        "avatarUrl": "https://cdn.example/a.png",
    }


def message(minutes: int, content: str = "hi", kind: str = "Default", n: int = 0, **kw: Any):
    out: dict[str, Any] = {
        "id": snowflake(minutes, n),
        "type": kind,
        "timestamp": f"2024-03-01T{9 + minutes // 60:02d}:{minutes % 60:02d}:00.123+00:00",
        "timestampEdited": None,
        "callEndedTimestamp": None,
        "isPinned": False,
        "content": content,
        "author": author(),
        "attachments": [],
        "embeds": [],
        "stickers": [],
        "reactions": [],
        "mentions": [],
        "inlineEmojis": [],
    }
    out.update(kw)
    return out


def channel_file(cid: str, name: str, messages: list[Any], **channel: Any) -> dict[str, Any]:
    meta = {
        "id": cid,
        "type": "GuildTextChat",
        "categoryId": "9",
        "category": "Text",
        "name": name,
        "topic": None,
        **channel,
    }
    return {
        "guild": GUILD,
        "channel": meta,
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-03-05T12:00:00+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }


def write(folder: Path, files: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        data = doc if isinstance(doc, bytes) else json.dumps(doc, indent=2).encode()
        (folder / name).write_bytes(data)
    return folder


def extract(path: Path, workdir: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    source = SourceConfig(kind="discord", path=path, user_id="owner", options=options)
    stats = extract_source(source, workdir)
    assert stats.balanced, stats
    rows = pq.read_table(workdir / "staging" / "discord").drop_columns(["bucket"]).to_pylist()
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return stats, rows


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["message_id"]: row for row in rows}


def sample_rows(tmp_path: Path, **options: Any) -> tuple[ExtractStats, list[dict[str, Any]]]:
    return extract(SAMPLE, tmp_path / "w", **options)


# --- the committed sample -------------------------------------------------------------


def test_registered_and_recognised() -> None:
    assert "discord" in known_sources()
    assert get_connector("discord").options_model is Options
    assert looks_like(SAMPLE)
    assert all(looks_like(p) for p in SAMPLE.glob("*.json"))


def test_sample_is_balanced_with_specific_reasons(tmp_path: Path) -> None:
    stats, rows = sample_rows(tmp_path)
    assert stats.skipped == {
        "discord:Call": 1,
        "discord:ChannelPinnedMessage": 1,
        "discord:GuildMemberJoin": 1,
        "discord:ThreadCreated": 1,
        "discord:empty": 1,
    }
    assert stats.quarantined == 0 and stats.staged == len(rows) == 16
    channels = {r["meta"]["channel"]: r["meta"]["channel_type"] for r in rows}
    assert channels == {
        "general": "GuildTextChat",
        "release-planning": "GuildPublicThread",
        "ben_o": "DirectTextChat",
    }


def test_sample_rendering_of_mentions_attachments_embeds_stickers(tmp_path: Path) -> None:
    _, rows = sample_rows(tmp_path, speaker_prefix=False)
    text = [r["content"] for r in sorted(rows, key=lambda r: r["seq"])]
    assert (
        "Welcome @Chloé! Release notes are in #release-planning, ping @Maintainers with "
        "questions :party:"
    ) in text
    assert "Thanks @Anna! Where do I start?" in text  # already rendered by the exporter
    assert "Screenshot of the failing test\n[attachment: failing-test.png]" in text
    assert (
        "[embed: Build #42 failed] (https://ci.example/42)\n3 tests failed on main\n"
        "Branch: main\nDuration: 4m 12s\nCI"
    ) in text
    assert "[sticker: thumbs up]" in text
    assert "[forwarded message]\nMaintenance window is Friday 18:00 UTC" in text
    assert "Deadline is 2024-03-08T10:00:00Z." in text


def test_sample_replies_edits_bots_threads_and_order(tmp_path: Path) -> None:
    _, rows = sample_rows(tmp_path)
    got = {r["content"].split(": ", 1)[1]: r for r in rows}
    reply = got["Start with the contributing guide."]
    question = got["Thanks @Anna! Where do I start?"]
    assert reply["meta"]["reply_to"] == question["message_id"]
    edited = got["Fixed: the flaky test is quarantined now."]
    assert edited["meta"]["edited"] == "2024-03-01T09:12:00Z" and edited["meta"]["pinned"]
    assert edited["meta"]["reactions"] == [{"emoji": "🎉", "count": 2}]
    command = got["Deploying version 2.0 to staging"]
    assert (command["role"], command["author_name"]) == ("assistant", "CI Bot")
    assert command["meta"]["interaction"] == {"name": "deploy", "user": "Ben"}
    assert command["meta"]["type"] == "ChatInputCommand"
    thread = got["Let's plan 2.0 here."]
    assert thread["meta"]["thread_of"] == "general"
    assert thread["conversation_id"].startswith("discord:710000000000000333:")
    assert all(r["message_id"] == f"discord:{r['seq']}" for r in rows)
    assert all(r["author_id"] and r["author_name"] for r in rows)
    # partition 2 sorts before partition 1 by name, yet sessions follow the messages
    general = sorted((r for r in rows if r["meta"]["channel"] == "general"), key=lambda r: r["seq"])
    assert (
        general[0]["conversation_id"] == f"discord:710000000000000111:session-{general[0]['seq']}"
    )
    late_reply = got["Great news!"]
    assert late_reply["conversation_id"] == general[0]["conversation_id"]


def test_zip_equals_folder(tmp_path: Path) -> None:
    target = tmp_path / "discord.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(SAMPLE.glob("*.json")):
            zf.write(path, f"export/{path.name}")
    assert looks_like(target)
    _, zipped = extract(target, tmp_path / "z")
    _, folder = extract(SAMPLE, tmp_path / "f")
    keep = ("message_id", "conversation_id", "content", "created_at", "metadata")
    assert [{k: r[k] for k in keep} for r in zipped] == [{k: r[k] for k in keep} for r in folder]


def test_not_an_export(tmp_path: Path) -> None:
    folder = write(tmp_path / "x", {"notes.json": {"a": 1}})
    with pytest.raises(InputError, match="no DiscordChatExporter JSON"):
        list(read(folder, Options(user_id="o")))
    for junk in (b"", b"\xff\xfe junk", b'{"name": "c", "type": "personal_chat", "messages": []}'):
        path = tmp_path / "junk.json"
        path.write_bytes(junk)
        assert not looks_like(path)
    assert not looks_like(tmp_path / "missing")
    assert not looks_like(ROOT / "data" / "samples" / "telegram_export")


# --- broken input ------------------------------------------------------------------------


def test_bad_records_and_files_quarantine_only_themselves(tmp_path: Path) -> None:
    good = channel_file("10", "a", [message(0), [1, 2], {"content": "no id"}, message(1)])
    cut = json.dumps(channel_file("11", "b", [message(i) for i in range(30)]), indent=2).encode()
    folder = write(
        tmp_path / "e",
        {
            "a.json": good,
            "b.json": cut[: len(cut) // 2],
            "c.json": b"{not json",
            "d.json": {"x": 1},
        },
    )
    stats, rows = extract(folder, tmp_path / "w")
    staged = {r["meta"]["channel"] for r in rows}
    assert staged == {"a", "b"} and sum(r["meta"]["channel"] == "a" for r in rows) == 2
    lines = [json.loads(x) for x in (tmp_path / "w" / "quarantine.jsonl").read_text().splitlines()]
    reasons = sorted(line["reason"].split(":")[1] for line in lines)
    assert reasons == [
        "malformed_json",
        "malformed_json",
        "no_id",
        "not_a_channel_file",
        "not_a_message",
    ]
    assert stats.quarantined == 5


def test_overlapping_exports_stage_each_message_once(tmp_path: Path) -> None:
    first = channel_file("10", "a", [message(i) for i in range(3)])
    second = channel_file("10", "a", [message(i) for i in range(5)])
    folder = write(tmp_path / "e", {"old.json": first, "new.json": second})
    stats, rows = extract(folder, tmp_path / "w")
    assert len(rows) == 5 and stats.skipped == {"discord:duplicate": 3}


# --- options -----------------------------------------------------------------------------


def _sessions() -> dict[str, Any]:
    question = message(0, "question?")
    return channel_file(
        "10",
        "a",
        [
            question,
            message(1, "more"),
            message(180, "new topic"),
            message(181, "late answer", "Reply", reference={"messageId": question["id"]}),
        ],
    )


def test_conversation_policies(tmp_path: Path) -> None:
    folder = write(tmp_path / "e", {"a.json": _sessions()})
    _, rows = extract(folder, tmp_path / "s")
    first = snowflake(0)
    got = [r["conversation_id"] for r in sorted(rows, key=lambda r: r["seq"])]
    assert got == [f"discord:10:session-{first}"] * 2 + [f"discord:10:session-{snowflake(180)}"] + [
        f"discord:10:session-{first}"
    ]
    _, rows = extract(folder, tmp_path / "c", conversation="channel")
    assert {r["conversation_id"] for r in rows} == {"discord:10"}
    _, rows = extract(folder, tmp_path / "t", conversation="thread")
    got = [r["conversation_id"] for r in sorted(rows, key=lambda r: r["seq"])]
    assert got == ["discord:10:2024-03-01"] * 3 + [f"discord:10:thread-{first}"]


def test_owner_policies(tmp_path: Path) -> None:
    _, rows = sample_rows(tmp_path / "ws")
    assert {r["user_id"] for r in rows} == {"owner"}
    assert all(r["content"].startswith(r["author_name"] + ": ") for r in rows)
    _, rows = sample_rows(tmp_path / "g", memory_owner="group")
    assert {r["user_id"] for r in rows} == {"owner"}
    assert not any(r["content"].startswith(r["author_name"] + ": ") for r in rows)
    assert all(r["author_id"] and r["author_name"] for r in rows)
    stats, rows = sample_rows(tmp_path / "a", memory_owner="author", user_id_template="dc-{name}")
    assert {r["user_id"] for r in rows} == {"dc-anna.k", "dc-ben_o", "dc-chloe"}
    assert stats.skipped["discord:bot_author"] == 2


def test_channel_filters(tmp_path: Path) -> None:
    _, rows = sample_rows(tmp_path / "a", channels=["general/release-*", "ben_o"])
    assert {r["meta"]["channel"] for r in rows} == {"release-planning", "ben_o"}
    _, rows = sample_rows(tmp_path / "b", exclude_channels=["710000000000000111"])
    assert "general" not in {r["meta"]["channel"] for r in rows}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"memory_owner": "group", "speaker_prefix": True}, "speaker_prefix"),
        ({"conversation": "chat"}, "conversation"),
        ({"session_gap_minutes": 0}, "session_gap_minutes"),
    ],
)
def test_config_errors_are_clear(options: dict[str, Any], match: str) -> None:
    source = SourceConfig(kind="discord", path=SAMPLE, options=options)
    with pytest.raises(ConfigError, match=match):
        extract_source(source, Path("/nonexistent-workdir"))


def test_worker_processes_give_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flat_parts: dict[str, dict[str, int]]
) -> None:
    import connectors.group_chat_jobs as jobs

    monkeypatch.setattr(jobs, "JOB_BYTES", 1)  # one job per channel: four parts
    stats, parallel = sample_rows(tmp_path / "p", workers=2)
    parts = sorted(flat_parts["discord"])
    assert len([p for p in parts if p.endswith(".parquet")]) >= 3
    _, serial = sample_rows(tmp_path / "s", workers=1)
    assert stats.staged == 16

    def key(r: dict[str, Any]) -> str:
        return str(r["message_id"])

    drop = ("source_file",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in sorted(parallel, key=key)] == [
        {k: v for k, v in r.items() if k not in drop} for r in sorted(serial, key=key)
    ]


def test_cli_extract_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "discord",
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
    assert (out["staged"], out["read"], out["conversations"]) == (16, 21, 4)


# --- fuzzing -----------------------------------------------------------------------------


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
    "timestamp",
    "timestampEdited",
    "isPinned",
    "content",
    "author",
    "attachments",
    "embeds",
    "stickers",
    "reactions",
    "mentions",
    "reference",
    "forwardedMessage",
    "interaction",
]
AUTHOR = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(["id", "name", "nickname", "isBot", "roles"], JSON)
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(
        st.fixed_dictionaries({}, optional={**dict.fromkeys(FIELDS, JSON), "author": AUTHOR})
        | JSON,
        max_size=6,
    ),
    header=JSON,
    owner=st.sampled_from(["workspace", "author", "group"]),
    conversation=st.sampled_from(["channel", "thread", "session"]),
)
@example(records=[{"id": 1, "type": []}], header=None, owner="workspace", conversation="channel")
def test_any_json_in_any_field_is_counted_never_raised(
    tmp_path: Path, records: list[Any], header: Any, owner: str, conversation: str
) -> None:
    good = message(0, "I always survive <@1> <#2> <t:99999999999999:R>", n=77)
    docs = {
        "a.json": channel_file("10", "a", [*records, good]),
        "b.json": {"guild": header, "channel": header, "messages": records},
    }
    folder = tmp_path / f"h{abs(hash(json.dumps(docs, sort_keys=True)))}"
    stats, rows = extract(
        write(folder, docs), folder / "w", memory_owner=owner, conversation=conversation
    )
    assert stats.read >= len(records) + 1
    assert good["id"] in {str(r["seq"]) for r in rows}


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(), min_size=1, max_size=5))
def test_any_text_survives_to_parquet(texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        doc = channel_file("10", "a", [message(i, t + "!") for i, t in enumerate(texts)])
        _, rows = extract(
            write(Path(tmp) / "e", {"a.json": doc}), Path(tmp) / "w", memory_owner="group"
        )
    want = [t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") + "!" for t in texts]
    assert [r["content"] for r in sorted(rows, key=lambda r: r["seq"])] == want


# --- incremental delivery --------------------------------------------------------------


def _export(folder: Path, count: int) -> None:
    messages = [message(i, f"message number {i}") for i in range(count)]
    write(
        folder,
        {
            "a.json": channel_file("10", "a", messages),
            "b.json": channel_file("20", "b", [message(i, "b", n=1) for i in range(3)]),
        },
    )


def _delivered(db: Path) -> int:
    return sum(len(conversation_messages(db, user, conv)) for user, conv in message_counts(db))


def test_longer_reexport_sends_only_new_messages_through_run(tmp_path: Path) -> None:
    _export(tmp_path / "export", 5)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nuser_id: ann\nsources:\n  - kind: discord\n    path: export\n"
        "load:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    first = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["load"]["sent"]["messages"] == 8
    _export(tmp_path / "export", 9)
    second = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert second.exit_code == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["load"]["sent"]["messages"] == 4 and out["changed"]["count"] == 0
    assert _delivered(tmp_path / "work" / "local-memos.sqlite") == 12


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_longer_reexport_sends_only_new_messages_step_by_step(tmp_path: Path) -> None:
    export, work = tmp_path / "export", str(tmp_path / "work")
    steps = (
        ("extract", "--source", "discord", str(export), "--workdir", work, "--user-id", "ann"),
        ("chunk", "--workdir", work),
        ("load", "--workdir", work, "--target", "local"),
    )
    _export(export, 5)
    for step in steps:
        _cli(*step)
    _export(export, 9)
    for step in steps[:2]:
        _cli(*step)
    assert _cli(*steps[2])["sent"]["messages"] == 4
    assert _delivered(tmp_path / "work" / "local-memos.sqlite") == 12


def test_events_are_tables_skips_or_quarantine() -> None:
    events = list(read(SAMPLE, Options(user_id="o")))
    assert any(isinstance(e, MessageTable) for e in events)
    assert not any(isinstance(e, Quarantined) for e in events)
