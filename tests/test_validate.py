"""validate(): figures checked against small inputs counted by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import Config
from pipeline.core.models import stable_id
from pipeline.dryrun.validate import validate
from tests.jsonl_connector import register, write_jsonl

T = "2024-03-0{}T10:00:00+00:00"


@pytest.fixture
def jsonl_source(monkeypatch: pytest.MonkeyPatch) -> str:
    return register(monkeypatch)


def _config(tmp_path: Path, inputs: dict[str, Path], **extra: Any) -> Config:
    sources = [{"kind": "jsonl", "name": name, "path": str(p)} for name, p in inputs.items()]
    return Config.model_validate({"workdir": str(tmp_path / "work"), "sources": sources, **extra})


def _basic(tmp_path: Path) -> Path:
    """5 messages (alice: conv a x3; bob: conv b x2, second one older), 3 skips, 2 bad lines."""
    return write_jsonl(
        tmp_path / "basic.jsonl",
        [
            {
                "user_id": "alice",
                "conversation_id": "a",
                "content": "hi",
                "created_at": T.format(1),
            },
            {"skip": "system"},
            {
                "user_id": "alice",
                "conversation_id": "a",
                "content": "ho",
                "created_at": T.format(2),
            },
            {
                "user_id": "alice",
                "conversation_id": "a",
                "content": "hu",
                "created_at": T.format(3),
            },
            "{broken",
            {"skip": "deleted"},
            {"user_id": "bob", "conversation_id": "b", "content": "one", "created_at": T.format(5)},
            {"user_id": "bob", "conversation_id": "b", "content": "two", "created_at": T.format(4)},
            {"skip": "system"},
            "not json either",
        ],
    )


def test_counts_add_up_on_hand_counted_input(tmp_path: Path, jsonl_source: str) -> None:
    cfg = _config(
        tmp_path, {"chats": _basic(tmp_path)}, chunk={"max_messages": 2}, load={"rate": 0.5}
    )
    report = validate(cfg)
    d = report.data
    t = d["totals"]
    assert (t["read"], t["staged"], t["skipped"], t["quarantined"]) == (10, 5, 3, 2)
    assert t["read"] == t["staged"] + t["skipped"] + t["quarantined"]
    assert d["skipped"] == {"deleted": 1, "system": 2}
    assert (t["users"], t["conversations"]) == (2, 2)
    # alice: 3 messages at 2 per call -> 2 batches; bob: 1 batch.
    assert (t["batches"], t["api_calls"], t["messages_to_send"]) == (3, 3, 5)
    assert t["estimated_seconds"] == 6.0  # 3 calls at 0.5 calls/s
    assert t["already_delivered"] == 0 and d["ledger"]["present"] is False
    assert d["checks"]["out_of_order"]["count"] == 1
    assert d["checks"]["out_of_order"]["details"] == {"conversations": 1}
    assert d["checks"]["out_of_order"]["examples"][0]["source_position"] == "line 8"
    assert d["checks"]["quarantined"]["count"] == 2
    positions = [e["position"] for e in d["checks"]["quarantined"]["examples"]]
    assert positions == ["line 5", "line 10"]
    assert d["batches"]["messages"]["max"] == 2
    assert d["users"]["largest"][0] == {"user_id": "alice", "messages": 3, "conversations": 1}
    assert d["conversations"]["largest"][0]["messages"] == 3
    assert d["sources"][0]["balanced"] is True
    assert report.exit_code == 0 and d["ok"] is True
    assert sum(d["conversations"]["size_histogram"]["counts"]) == 2
    assert sum(d["batches"]["token_histogram"]["counts"]) == 3
    assert d["timeline"]["unit"] == "day"
    assert [n for _, n in d["timeline"]["series"]["chats"]] == [1, 1, 1, 1, 1]
    on_disk = json.loads((tmp_path / "work" / "report.json").read_text())
    assert on_disk == d
    assert (tmp_path / "work" / "report.html").exists()
    assert not (tmp_path / "work" / "batches").exists()


def test_two_sources_are_summed(tmp_path: Path, jsonl_source: str) -> None:
    other = write_jsonl(
        tmp_path / "other.jsonl",
        [
            {"user_id": "carol", "conversation_id": "z", "content": "x", "created_at": T.format(1)},
            {"skip": "system"},
        ],
    )
    report = validate(_config(tmp_path, {"one": _basic(tmp_path), "two": other}))
    t = report.data["totals"]
    assert (t["sources"], t["read"], t["staged"], t["skipped"]) == (2, 12, 6, 4)
    assert report.data["skipped"] == {"deleted": 1, "system": 3}
    assert [s["read"] for s in report.data["sources"]] == [10, 2]
    assert t["users"] == 3


def test_unknown_role_blocks_the_load(tmp_path: Path, jsonl_source: str) -> None:
    path = write_jsonl(
        tmp_path / "roles.jsonl",
        [
            {"conversation_id": "a", "content": "fine", "role": "assistant"},
            {"conversation_id": "a", "content": "who am I", "role": "bot"},
            {"conversation_id": "b", "content": "also fine"},
        ],
    )
    report = validate(_config(tmp_path, {"r": path}))
    checks = report.data["checks"]
    assert checks["unknown_role"]["count"] == 1
    assert checks["unknown_role"]["examples"][0]["role"] == "bot"
    assert checks["schema"]["count"] == 1  # conversation a's one batch
    assert "messages/1/role" in checks["schema"]["examples"][0]["errors"][0]
    assert report.exit_code == 3 and report.data["ok"] is False
    assert report.data["problems"][0]["severity"] == "error"


def test_message_checks(tmp_path: Path, jsonl_source: str) -> None:
    long_conv = "c" * 150
    path = write_jsonl(
        tmp_path / "checks.jsonl",
        [
            {"message_id": "m1", "content": "   ", "created_at": T.format(1)},
            {"message_id": "m2", "content": "\u3000\n\t", "created_at": T.format(2)},
            {"message_id": "m3", "content": "no time"},
            {"message_id": "m3", "content": "same id again", "created_at": T.format(3)},
            {"message_id": "m5", "content": "in a long conversation", "conversation_id": long_conv},
            {"message_id": "m6", "content": "big " * 400, "created_at": T.format(4)},
        ],
    )
    report = validate(_config(tmp_path, {"c": path}, chunk={"max_tokens": 100}))
    checks = report.data["checks"]
    assert checks["empty_content"]["count"] == 2
    assert checks["missing_timestamp"]["count"] == 2
    assert checks["duplicate_id"]["count"] == 1
    assert checks["duplicate_id"]["examples"][0] == {
        **checks["duplicate_id"]["examples"][0],
        "message_id": "m3",
        "occurrences": 2,
    }
    assert checks["long_id"]["count"] == 1
    example = checks["long_id"]["examples"][0]
    assert example["length"] == 150 and len(example["sent_as"]) <= 100
    assert example["sent_as"].startswith("c" * 80)
    assert checks["split_message"]["count"] == 1
    assert checks["split_message"]["examples"][0]["message_id"] == "m6"
    assert report.data["totals"]["split_messages"] == 1
    assert report.data["totals"]["shortened_ids"] == 1
    assert checks["schema"]["count"] == 0
    assert report.exit_code == 0


def test_user_volume_outliers(tmp_path: Path, jsonl_source: str) -> None:
    counts = {"a": 20, "b": 20, "c": 20, "few": 1, "many": 250}  # median 20
    records = [
        {"user_id": u, "conversation_id": "x", "content": f"{u} {i}"}
        for u, n in counts.items()
        for i in range(n)
    ]
    report = validate(_config(tmp_path, {"v": write_jsonl(tmp_path / "v.jsonl", records)}))
    finding = report.data["checks"]["user_volume"]
    assert finding["count"] == 2
    assert {(e["user_id"], e["kind"]) for e in finding["examples"]} == {
        ("few", "few"),
        ("many", "many"),
    }
    assert report.data["users"]["messages"]["median"] == 20
    assert finding["details"] == {"median": 20, "factor": 10, "min_users": 3, "few": 1, "many": 1}


SECRET = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
AWS = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"


def test_secrets_and_personal_data_are_reported_masked(tmp_path: Path, jsonl_source: str) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"content": f"my key is {SECRET} keep it safe"},
            {"content": f"aws {AWS} and password: hunter22"},
            {"content": f"write to {EMAIL} or call {PHONE}"},
            {"content": "nothing to see"},
            f"{{broken line with {SECRET}",
        ],
    )
    report = validate(_config(tmp_path, {"s": path}))
    checks = report.data["checks"]
    assert checks["secrets"]["count"] == 2
    assert checks["personal_data"]["count"] == 1
    kinds = sorted(k for e in checks["secrets"]["examples"] for k in e["kinds"])
    assert kinds == ["api_key", "aws_access_key", "password"]
    by_kind = checks["secrets"]["details"]["by_kind"]
    assert {k: n for k, n in by_kind.items() if n} == {
        "api_key": 1,
        "aws_access_key": 1,
        "password": 1,
    }
    assert checks["personal_data"]["details"]["by_kind"] == {"email": 1, "phone": 1}
    assert sorted(checks["personal_data"]["examples"][0]["kinds"]) == ["email", "phone"]
    work = tmp_path / "work"
    for text in [(work / "report.json").read_text(), (work / "report.html").read_text()]:
        for value in (SECRET, AWS, EMAIL, PHONE, "hunter22"):
            assert value not in text
    assert "sk-p…[api_key]" in (work / "report.json").read_text(encoding="utf-8")


def _ledger(workdir: Path, rows: dict[str, str]) -> Path:
    """A real ledger recording `rows` as delivered to the workdir's local store."""
    from pipeline.load.ledger import Ledger

    workdir.mkdir(parents=True, exist_ok=True)
    with Ledger.open(workdir) as ledger:
        ledger.conn.executemany(
            "insert into delivered_messages values (?, ?, ?, 'b', '2026-01-01')",
            [(ledger.dest, m, h) for m, h in rows.items()],
        )
    return workdir / "ledger.sqlite"


@pytest.mark.parametrize("resend_changed", [False, True])
def test_ledger_incremental_run(tmp_path: Path, jsonl_source: str, resend_changed: bool) -> None:
    path = write_jsonl(
        tmp_path / "l.jsonl",
        [{"message_id": f"m{i}", "conversation_id": "c", "content": f"text {i}"} for i in range(5)],
    )
    ledger = _ledger(
        tmp_path / "work",
        {
            "m0": stable_id("text 0", length=16),
            "m1": stable_id("text 1", length=16),
            "m2": stable_id("old text 2", length=16),  # changed since delivery
            "gone": stable_id("x", length=16),  # delivered, no longer staged
        },
    )
    before = ledger.read_bytes()
    cfg = _config(tmp_path, {"l": path}, load={"resend_changed": resend_changed})
    report = validate(cfg)
    d = report.data
    assert d["ledger"]["present"] is True
    assert d["ledger"]["delivered_total"] == 4
    assert d["ledger"]["staged_already_delivered"] == 3
    assert d["ledger"]["changed"] == 1
    assert d["checks"]["changed_since_delivery"]["examples"][0]["message_id"] == "m2"
    excluded = 2 if resend_changed else 3
    assert d["totals"]["already_delivered"] == excluded
    assert d["totals"]["messages_to_send"] == 5 - excluded
    assert d["totals"]["staged"] == d["totals"]["messages_to_send"] + excluded
    assert ledger.read_bytes() == before


def test_nothing_staged_still_reports(tmp_path: Path, jsonl_source: str) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"skip": "system"}])
    report = validate(_config(tmp_path, {"e": path}))
    t = report.data["totals"]
    assert (t["read"], t["staged"], t["skipped"], t["batches"]) == (1, 0, 1, 0)
    assert report.exit_code == 0
    assert "<svg" in (tmp_path / "work" / "report.html").read_text()


def test_real_csv_connector(tmp_path: Path) -> None:
    """The lead's CSV connector: 5 data rows, 2 of them unreadable, 1 multi-line."""
    path = tmp_path / "chats.csv"
    path.write_text(
        "conversation_id,user_id,role,content,timestamp\n"
        "c1,ann,customer,where is my parcel?,2025-01-02T10:00:00Z\n"
        'c1,ann,agent,"on its way,\nsorry",2025-01-02T10:01:00Z\n'
        "c1,ann,wizard,not a role,2025-01-02T10:02:00Z\n"
        "c2,ben,customer,,2025-01-03T08:00:00Z\n"
        "c2,ben,customer,hello?,2025-01-03T08:05:00Z\n",
        encoding="utf-8",
    )
    cfg = Config.model_validate(
        {
            "workdir": str(tmp_path / "work"),
            "sources": [{"kind": "csv", "name": "support", "path": str(path)}],
        }
    )
    d = validate(cfg).data
    t = d["totals"]
    assert (t["read"], t["staged"], t["skipped"], t["quarantined"]) == (5, 3, 0, 2)
    assert (t["users"], t["conversations"], t["batches"]) == (2, 2, 2)
    assert {e["position"] for e in d["checks"]["quarantined"]["examples"]} == {"line 5", "line 6"}
    assert d["timeline"]["series"] == {"support": [["2025-01-02", 2], ["2025-01-03", 1]]}
    assert d["sources"][0]["kind"] == "csv"


def test_since_leaves_older_messages_out(tmp_path: Path, jsonl_source: str) -> None:
    from datetime import datetime, timezone

    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"message_id": "old", "content": "a", "created_at": T.format(1)},
            {"message_id": "new", "content": "b", "created_at": T.format(5)},
            {"message_id": "undated", "content": "c"},
            {"message_id": "sent", "content": "d", "created_at": T.format(2)},
        ],
    )
    _ledger(tmp_path / "work", {"sent": stable_id("d", length=16)})
    since = datetime(2024, 3, 3, tzinfo=timezone.utc)
    d = validate(_config(tmp_path, {"s": path}), since=since).data
    t = d["totals"]
    # old: before since; sent: already delivered (and also old, counted once there).
    assert (t["before_since"], t["already_delivered"], t["messages_to_send"]) == (1, 1, 2)
    assert t["staged"] == t["messages_to_send"] + t["already_delivered"] + t["before_since"]
    assert d["settings"]["since"] == "2024-03-03T00:00:00+00:00"


def test_other_staged_sources_are_flagged(tmp_path: Path, jsonl_source: str) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [{"content": "x"}, {"content": "y"}])
    validate(_config(tmp_path, {"old": first}))
    second = write_jsonl(tmp_path / "b.jsonl", [{"content": "z"}])
    d = validate(_config(tmp_path, {"new": second})).data
    finding = d["checks"]["other_staged_sources"]
    assert finding["count"] == 2
    assert finding["examples"][0]["source"] == "old"
    assert d["totals"]["staged"] == 1


def test_refuses_a_workdir_in_use(tmp_path: Path, jsonl_source: str) -> None:
    from pipeline.core.errors import LockError
    from pipeline.core.lock import workdir_lock

    cfg = _config(tmp_path, {"chats": _basic(tmp_path)})
    with workdir_lock(cfg.workdir), pytest.raises(LockError):
        validate(cfg)
    with workdir_lock(cfg.workdir):
        assert validate(cfg, lock=False).data["totals"]["read"] == 10
