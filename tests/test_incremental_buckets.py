"""`run` and the dry run ask the ledger one staging bucket at a time, through the CLI.

A rerun after a partial delivery must send exactly the missing messages whatever bucket
they are in, and no ledger query may mix message ids of two buckets (that would mean the
whole record, or a wrong bucket's answer, is being used).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import incremental
from pipeline.cli import main
from pipeline.core.buckets import bucket_of
from pipeline.core.staging import read_staging
from pipeline.server.store import conversation_messages, message_counts

BUCKETS = 8
MESSAGES = 160


def _rows(edit: int | None = None) -> list[list[str]]:
    """`MESSAGES` rows over 40 conversations, one day apart in blocks (row `edit` edited)."""
    out = []
    for i in range(MESSAGES):
        content = f"message {i} of conversation {i % 40}" + (" (edited)" if i == edit else "")
        day = 1 + i // 40
        out.append([f"m{i:03d}", f"conv-{i % 40:02d}", "ann", "user", content, f"2025-03-0{day}"])
    return out


def _write(tmp_path: Path, rows: list[list[str]], resend_changed: bool = False) -> Path:
    with (tmp_path / "export.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["message_id", "conversation_id", "user_id", "role", "content", "timestamp"])
        out.writerows(rows)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nsources:\n  - kind: csv\n    path: export.csv\n"
        f"load:\n  target: local\n  rate: 1000\n  resend_changed: {str(resend_changed).lower()}\n",
        encoding="utf-8",
    )
    return config


def _cli(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def _held(tmp_path: Path) -> Counter[str]:
    db = tmp_path / "work" / "local-memos.sqlite"
    held: Counter[str] = Counter()
    for user, conv in message_counts(db):
        held.update(m["content"] for m in conversation_messages(db, user, conv))
    return held


class Asked:
    """Every list of ids the ledger is asked about, by any process of the run: a forked
    dry-run worker inherits the spy and appends to the same file."""

    def __init__(self, path: Path):
        self.path = path

    def calls(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Asked:
    """Eight staging buckets; every list of ids the ledger is asked about, recorded."""
    import pipeline.core.staging_buckets as sb

    if not sys.platform.startswith("linux"):
        pytest.skip("a spawned dry-run worker would not inherit the spy")
    monkeypatch.setattr(sb, "choose_buckets", lambda files, target_bytes=0: BUCKETS)
    record = Asked(tmp_path / "asked.jsonl")
    among = incremental.DeliveredLedger.among

    def spy(self: incremental.DeliveredLedger, message_ids: Sequence[str]) -> dict[str, str]:
        with record.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(list(message_ids)) + "\n")
        return among(self, message_ids)

    monkeypatch.setattr(incremental.DeliveredLedger, "among", spy)
    return record


def _one_bucket_per_query(tmp_path: Path, asked: Asked) -> None:
    staged = read_staging(tmp_path / "work", ["message_id", "conversation_id"]).to_pydict()
    bucket = {
        m: bucket_of(c, BUCKETS)
        for m, c in zip(staged["message_id"], staged["conversation_id"], strict=True)
    }
    queried = [call for call in asked.calls() if call]
    assert len(queried) >= BUCKETS // 2  # the ledger was asked bucket by bucket
    for call in queried:
        assert len({bucket[m] for m in call}) == 1, "one query mixed two buckets' ids"
    assert sorted(m for call in queried for m in call) == sorted(bucket)  # each id once


def test_rerun_after_a_partial_delivery_sends_exactly_the_missing_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: Asked
) -> None:
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, _rows())
    first = _cli("run", str(config), "--since", "2025-03-03")  # the last two days only
    assert first["load"]["sent"]["messages"] == 80  # type: ignore[index]
    assert not asked.calls()  # nothing delivered yet: the ledger is not asked

    config = _write(tmp_path, _rows(edit=150))  # a delivered message edited since
    preview = _cli("validate", str(config))
    _one_bucket_per_query(tmp_path, asked)
    assert preview["ledger"]["to_send"] == 80  # type: ignore[index]
    assert preview["ledger"]["changed"] == 1  # type: ignore[index]
    asked.clear()
    second = _cli("run", str(config))
    _one_bucket_per_query(tmp_path, asked)
    assert second["load"]["sent"]["messages"] == 80  # type: ignore[index]
    assert second["load"]["already_delivered"]["messages"] == 80  # type: ignore[index]
    assert second["changed"]["message_ids"] == ["csv:m150"]  # type: ignore[index]
    assert _held(tmp_path) == Counter(r[4] for r in _rows())  # each once, the edit not resent

    third = _cli("run", str(_write(tmp_path, _rows(edit=150), resend_changed=True)))
    assert third["load"]["sent"]["messages"] == 1  # type: ignore[index]
    assert _cli("run", str(config))["load"]["sent"]["messages"] == 0  # type: ignore[index]
