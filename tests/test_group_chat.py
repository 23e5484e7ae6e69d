"""Group-chat mode end to end: a multi-party source (`memory_owner: group`) is staged without
name prefixes, sent with its participants as the `user_id` list and each speaker per
message, and stored by the local server under every participant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from connectors.csv_export import Options as CsvOptions
from connectors.csv_export import read as read_csv
from connectors.slack.read import Options as SlackOptions
from pipeline.cli import main
from pipeline.core.batches import read_batches
from pipeline.core.errors import ConfigError
from pipeline.core.models import Message
from pipeline.server.store import conversation_messages, message_counts
from tests.conftest import SAMPLES


def _run(config: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["run", str(config), "--json", *args])
    assert result.exit_code == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def _slack_config(tmp_path: Path, owner: str) -> Path:
    config = tmp_path / "slack.yaml"
    config.write_text(
        f"workdir: work\nuser_id: acme\n"
        f"sources:\n  - kind: slack\n    path: {SAMPLES / 'slack_export'}\n"
        f"    options:\n      conversation: channel\n      memory_owner: {owner}\n"
        f"      channels: [engineering]\n"
        "load:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    return config


def test_a_slack_channel_in_group_mode_keeps_its_speakers_per_message(tmp_path: Path) -> None:
    config = _slack_config(tmp_path, "group")
    out = _run(config)
    assert out["load"]["complete"]  # type: ignore[index]
    batches = list(read_batches(tmp_path / "work"))
    listed = batches[0].body["user_id"]
    assert isinstance(listed, list) and len(listed) >= 2
    assert all(b.body["user_id"] == listed for b in batches)  # one list per conversation
    db = tmp_path / "work" / "local-memos.sqlite"
    counts = message_counts(db)
    conversation = batches[0].conversation_id
    # the chat is stored once for each participant, as MemOS writes it into each memory
    assert {user for user, conv in counts if conv == conversation} == set(listed)
    stored = conversation_messages(db, listed[0], conversation)
    sent = [m for b in batches for m in b.body["messages"]]
    assert len(stored) == len(sent)
    for message, row in zip(sent, stored, strict=True):
        extra = row["extra"] or {}
        assert extra.get("role_name") == message.get("role_name"), row
        assert extra.get("role_id") == message.get("role_id"), row
        assert row["content"] == message["content"]
    speakers = {(m.get("role_id"), m.get("role_name")) for m in sent if m["role"] == "user"}
    assert ("U01ALICE", "Alice Martin") in speakers or ("U01ALICE", "alice") in speakers
    assert not any(m["content"].startswith(f"{m.get('role_name')}: ") for m in sent)


def test_workspace_mode_prefixes_names_and_owns_everything(tmp_path: Path) -> None:
    """The comparison: without group mode one owner gets 'Name: text' messages."""
    _run(_slack_config(tmp_path, "workspace"))
    batches = list(read_batches(tmp_path / "work"))
    assert {b.body["user_id"] for b in batches} == {"acme"}
    sent = [m for b in batches for m in b.body["messages"]]
    assert all("role_id" not in m for m in sent)
    assert any(": " in m["content"] for m in sent)


def test_the_dry_run_shows_the_qps_charge_of_group_mode(tmp_path: Path) -> None:
    config = _slack_config(tmp_path, "group")
    result = CliRunner().invoke(main, ["validate", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "work" / "report.json").read_text(encoding="utf-8"))
    group = report["checks"]["group_chat"]
    details = group["details"]
    chunked = CliRunner().invoke(main, ["chunk", "--config", str(config)])
    assert chunked.exit_code == 0, chunked.stderr
    batches = list(read_batches(tmp_path / "work"))
    assert group["count"] == 1
    assert details["requests"] == details["qps_charge_workspace"] == len(batches)
    assert details["qps_charge"] == sum(len(b.body["user_id"]) for b in batches) > len(batches)


def test_slack_group_mode_refuses_a_name_prefix_and_needs_an_owner() -> None:
    with pytest.raises(ValueError, match="role_name"):
        SlackOptions(memory_owner="group", speaker_prefix=True, user_id="acme")
    assert SlackOptions(memory_owner="group", user_id="acme").speaker_prefix is None


CHAT = (
    "conversation_id,user_id,author_name,role,content,timestamp\n"
    "standup,u-ana,Ana,user,I finished the parser.,2025-05-01T09:00:00Z\n"
    "standup,u-ben,Ben,user,Reviewing it now.,2025-05-01T09:01:00Z\n"
    "standup,,Bot,assistant,Reminder: demo at 3.,2025-05-01T09:02:00Z\n"
)


def test_csv_group_mode_stages_one_owner_and_the_row_authors(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    path.write_text(CHAT, encoding="utf-8")
    events = list(read_csv(path, CsvOptions(memory_owner="group", user_id="team")))
    rows = [e for e in events if isinstance(e, Message)]
    assert [(m.user_id, m.author_id, m.author_name) for m in rows] == [
        ("team", "u-ana", "Ana"),
        ("team", "u-ben", "Ben"),
        ("team", None, "Bot"),
    ]
    plain = [e for e in read_csv(path, CsvOptions(user_id="team")) if isinstance(e, Message)]
    assert [m.message_id for m in plain] == [m.message_id for m in rows]  # same ids
    with pytest.raises(ConfigError, match="needs a user_id"):
        list(read_csv(path, CsvOptions(memory_owner="group")))


def test_csv_group_chat_round_trip(tmp_path: Path) -> None:
    (tmp_path / "chat.csv").write_text(CHAT, encoding="utf-8")
    config = tmp_path / "csv.yaml"
    config.write_text(
        "workdir: work\nuser_id: team\n"
        "sources:\n  - kind: csv\n    path: chat.csv\n    options:\n      memory_owner: group\n"
        "load:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    _run(config)
    (batch,) = read_batches(tmp_path / "work")
    assert batch.body["user_id"] == ["u-ana", "u-ben"]
    db = tmp_path / "work" / "local-memos.sqlite"
    assert message_counts(db) == {("u-ana", "standup"): 3, ("u-ben", "standup"): 3}
    stored = conversation_messages(db, "u-ben", "standup")
    assert [(r["extra"] or {}).get("role_name") for r in stored] == ["Ana", "Ben", "Bot"]


def test_the_dry_run_for_a_self_hosted_server_checks_its_bodies(tmp_path: Path) -> None:
    """The self-hosted server takes one user id: no group charge, and the bodies are
    checked against what `/product/add` takes."""
    config = _slack_config(tmp_path, "group")
    config.write_text(
        config.read_text(encoding="utf-8").replace("target: local", "target: memos-server"),
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "work" / "report.json").read_text(encoding="utf-8"))
    details = report["checks"]["group_chat"]["details"]
    assert details["qps_charge"] == details["requests"] >= 1
    assert report["checks"]["schema"]["count"] == 0
