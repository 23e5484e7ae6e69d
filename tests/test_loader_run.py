"""`memos-etl run`: extract -> chunk -> load, incremental on a newer export of the same source."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.server.store import conversation_messages, message_counts

Row = tuple[str, str, str, str, str]  # message_id, conversation_id, role, content, timestamp


def write_export(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["message_id", "conversation_id", "user_id", "role", "content", "timestamp"])
        for mid, conv, role, content, ts in rows:
            out.writerow([mid, conv, "ann", role, content, ts])


def write_config(tmp_path: Path, resend_changed: bool = False) -> Path:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\n"
        "sources:\n  - kind: csv\n    path: export.csv\n"
        f"load:\n  target: local\n  rate: 500\n  resend_changed: {str(resend_changed).lower()}\n",
        encoding="utf-8",
    )
    return config


def stored(tmp_path: Path) -> dict[str, list[str]]:
    db = tmp_path / "work" / "local-memos.sqlite"
    return {
        conv: [m["content"] for m in conversation_messages(db, user, conv)]
        for user, conv in message_counts(db)
    }


def run(config: Path, *extra: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["run", str(config), "--json", *extra])
    assert result.exit_code == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


FIRST: list[Row] = [
    ("a1", "A", "user", "How do I reset my password?", "2025-01-01T10:00:00Z"),
    ("a2", "A", "assistant", "Use the link on the login page.", "2025-01-01T10:01:00Z"),
    ("a3", "A", "user", "Thanks, that worked.", "2025-01-01T10:02:00Z"),
    ("b1", "B", "user", "Is the shop open on Sunday?", "2025-01-02T09:00:00Z"),
    ("b2", "B", "assistant", "Yes, from 10 to 4.", "2025-01-02T09:01:00Z"),
]


def test_rerun_on_a_grown_export_sends_only_the_new_tail(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    write_export(export, FIRST)
    config = write_config(tmp_path)
    first = run(config)
    assert first["load"]["sent"]["messages"] == 5  # type: ignore[index]
    assert "search_command" in first
    newer = [
        *FIRST[:4],
        ("b2", "B", "assistant", "Yes, from 10 to 5.", "2025-01-02T09:01:00Z"),  # edited
        ("a4", "A", "assistant", "Glad to help!", "2025-01-03T10:03:00Z"),
        ("a5", "A", "user", "One more question.", "2025-01-03T10:04:00Z"),
        ("c1", "C", "user", "New conversation here.", "2025-01-03T11:00:00Z"),
    ]
    write_export(export, newer)
    second = run(config)
    assert second["chunk"]["batched"] == 3  # type: ignore[index]
    assert second["load"]["sent"]["messages"] == 3  # type: ignore[index]
    assert second["changed"] == {"count": 1, "message_ids": ["csv:b2"]}
    assert stored(tmp_path) == {
        "A": [r[3] for r in FIRST[:3]] + ["Glad to help!", "One more question."],
        "B": [r[3] for r in FIRST[3:]],  # the edit is reported, not resent
        "C": ["New conversation here."],
    }
    third = run(write_config(tmp_path, resend_changed=True))
    assert third["load"]["sent"]["messages"] == 1  # type: ignore[index]
    assert stored(tmp_path)["B"][-1] == "Yes, from 10 to 5."
    fourth = run(config)
    assert fourth["load"]["sent"]["messages"] == 0  # type: ignore[index]
    assert fourth["changed"] == {"count": 0, "message_ids": []}


def test_since_limits_by_time(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", FIRST)
    out = run(write_config(tmp_path), "--since", "2025-01-02")
    assert out["chunk"]["batched"] == 2  # type: ignore[index]
    assert stored(tmp_path) == {"B": [r[3] for r in FIRST[3:]]}


def test_status_shows_the_ledger(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", FIRST)
    run(write_config(tmp_path))
    result = CliRunner().invoke(main, ["status", "--workdir", str(tmp_path / "work"), "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["batches"]["done"]["messages"] == 5 and info["delivered_messages"] == 5
    empty = CliRunner().invoke(main, ["status", "--workdir", str(tmp_path / "nothing")])
    assert empty.exit_code == 0 and "nothing was loaded" in empty.stdout


def test_load_and_status_have_help() -> None:
    for command in ("load", "status", "run"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.stdout


def test_run_finishes_what_a_stopped_run_left_before_new_data(tmp_path: Path) -> None:
    from pipeline.server import ServerConfig, start_server
    from pipeline.server.faults import FaultConfig, ForcedAnswer

    export = tmp_path / "export.csv"
    write_export(export, FIRST)
    db = tmp_path / "server.sqlite"
    quota = ForcedAnswer(code=40304, conversation_id="B", path="/add/message")
    with start_server(ServerConfig(db_path=db, faults=FaultConfig(forced=(quota,)))) as server:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            "workdir: work\nsources:\n  - kind: csv\n    path: export.csv\n"
            f"load:\n  target: local\n  base_url: {server.url}\n  max_in_flight: 1\n",
            encoding="utf-8",
        )
        first = CliRunner().invoke(main, ["run", str(config), "--json"])
        assert first.exit_code == 4 and "quota exhausted" in first.stderr
        server.clear_forced()
        write_export(
            export, [*FIRST, ("b3", "B", "user", "And on Monday?", "2025-01-04T09:00:00Z")]
        )
        second = CliRunner().invoke(main, ["run", str(config), "--json"])
        assert second.exit_code == 0, second.stderr
        out = json.loads(second.stdout)
        assert out["resumed"]["sent"]["messages"] == 2  # B's pending batch, first
        # then only the new message; the run's totals count both steps
        assert out["load"]["sent"]["messages"] == 3
    got = {
        conv: [m["content"] for m in conversation_messages(db, user, conv)]
        for user, conv in message_counts(db)
    }
    assert got == {
        "A": [r[3] for r in FIRST[:3]],
        "B": [r[3] for r in FIRST[3:]] + ["And on Monday?"],
    }


def test_source_tags_reach_memos_with_every_batch(tmp_path: Path) -> None:
    """`tags:` of a source are sent with each of its batches; a source without tags sends none."""
    write_export(tmp_path / "export.csv", FIRST)
    write_export(tmp_path / "other.csv", [("c1", "C", "user", "Untagged.", "2025-01-03T08:00:00Z")])
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\n"
        "sources:\n"
        "  - kind: csv\n    path: export.csv\n    tags: [support, import-2025, support]\n"
        "  - kind: csv\n    name: other\n    path: other.csv\n"
        "load:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    run(config)
    db = tmp_path / "work" / "local-memos.sqlite"
    tags = {
        conv: {tuple(m["tags"]) for m in conversation_messages(db, user, conv)}
        for user, conv in message_counts(db)
    }
    assert tags == {"A": {("support", "import-2025")}, "B": {("support", "import-2025")}, "C": {()}}
    lines = (tmp_path / "work/batches/batches.jsonl").read_text().splitlines()
    batches = [json.loads(line) for line in lines]
    assert all(("tags" in b["body"]) == (b["conversation_id"] != "C") for b in batches)
