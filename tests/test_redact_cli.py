"""Redaction end to end: what the local server receives and stores, the dry-run report's
counts against the load summary, and a policy change after a load."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pipeline.chunk import ChunkLimits, chunk_workdir
from pipeline.cli import main
from pipeline.core.config import LoadConfig
from pipeline.core.redact import DEFAULT_POLICY, Policy, mask_token
from pipeline.load.entry import load_workdir
from pipeline.load.targets import Endpoint
from pipeline.server import ServerConfig, start_server
from pipeline.server.store import conversation_messages, message_counts
from tests.test_redact import PERSONAL, SECRETS, SENSITIVE

Row = tuple[str, str, str, str]  # message_id, conversation_id, content, timestamp


def rows_with_every_kind() -> list[Row]:
    rows: list[Row] = [
        (f"s{i}", "A", f"here you go: {value} -- keep it safe", f"2025-01-01T10:{i:02d}:00Z")
        for i, value in enumerate(SENSITIVE.values())
    ]
    rows.append(("p1", "B", "nothing secret here", "2025-01-02T09:00:00Z"))
    rows.append(
        (
            "p2",
            "B",
            f"two keys {SECRETS['api_key']} {SECRETS['slack_token']}",
            "2025-01-02T09:01:00Z",
        )
    )
    return rows


def write_export(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["message_id", "conversation_id", "user_id", "role", "content", "timestamp"])
        for mid, conv, content, ts in rows:
            out.writerow([mid, conv, "ann", "user", content, ts])


def write_config(tmp_path: Path, redact_section: str = "", resend_changed: bool = False) -> Path:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\n"
        "sources:\n  - kind: csv\n    path: export.csv\n"
        f"load:\n  target: local\n  rate: 500\n  resend_changed: {str(resend_changed).lower()}\n"
        + redact_section,
        encoding="utf-8",
    )
    return config


def cli(*args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def stored(tmp_path: Path) -> list[str]:
    db = tmp_path / "work" / "local-memos.sqlite"
    return [
        m["content"]
        for user, conv in sorted(message_counts(db))
        for m in conversation_messages(db, user, conv)
    ]


def stored_bytes(tmp_path: Path) -> bytes:
    """Every byte the local server and the pipeline keep, staging aside (it holds the
    original export by design)."""
    work = tmp_path / "work"
    files = [p for p in work.rglob("*") if p.is_file() and "staging" not in p.parts]
    assert any(p.name == "local-memos.sqlite" for p in files)
    return b"".join(p.read_bytes() for p in files).lower()


def test_default_run_masks_every_secret_in_what_is_stored(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    out = cli("run", str(write_config(tmp_path)))
    contents = stored(tmp_path)
    assert len(contents) == len(SENSITIVE) + 2
    everything = stored_bytes(tmp_path)
    for kind, value in SECRETS.items():
        assert mask_token(kind) in "\n".join(contents)
        for line in value.splitlines():
            assert line.lower().encode() not in everything, kind
    for value in PERSONAL.values():  # personal data is kept unless asked for
        assert value in "\n".join(contents)
    expected = {k: 1 for k in SECRETS} | {"api_key": 2, "slack_token": 2}
    assert out["load"]["redacted"] == expected
    assert out["chunk"]["redacted"]["masked"] == expected
    assert out["chunk"]["redacted"]["masked_messages"] == len(SECRETS) + 1


def test_masking_personal_data_and_dropping_messages_by_flag(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    out = cli(
        "run",
        str(write_config(tmp_path)),
        "--redact",
        "personal=mask",
        "--redact",
        "api_key=drop-message",
        "--redact-pattern",
        "safe_phrase=keep it safe",
    )
    contents = stored(tmp_path)
    everything = stored_bytes(tmp_path)
    for value in PERSONAL.values():
        assert value.lower().encode() not in everything
    assert b"keep it safe" not in everything
    assert "[REDACTED:safe_phrase]" in contents[0]
    assert len(contents) == len(SENSITIVE) + 2 - 2  # api_key messages dropped
    assert out["chunk"]["dropped"] == 2
    assert out["chunk"]["redacted"]["dropped"] == {"api_key": 2}
    assert out["load"]["redacted"]["email"] == 1 and out["load"]["redacted"]["phone"] == 1


def test_keep_everything_sends_content_unchanged(tmp_path: Path) -> None:
    rows = rows_with_every_kind()
    write_export(tmp_path / "export.csv", rows)
    out = cli(
        "run",
        str(
            write_config(tmp_path, "redact:\n" + "".join(f"  {kind}: keep\n" for kind in SENSITIVE))
        ),
    )
    assert sorted(stored(tmp_path)) == sorted(r[2] for r in rows)
    assert out["load"]["redacted"] == {}


def test_bad_redact_flags_are_usage_errors(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    config = str(write_config(tmp_path))
    for flag, text in [
        ("emails=mask", "unknown kind 'emails'"),
        ("email=hide", "action must be one of keep, mask, drop-message"),
        ("email", "expects KIND=ACTION"),
    ]:
        result = CliRunner().invoke(main, ["run", config, "--redact", flag])
        assert result.exit_code == 2, result.output
        assert text in result.stderr
    result = CliRunner().invoke(main, ["run", config, "--redact-pattern", "x=("])
    assert result.exit_code == 2 and "not usable" in result.stderr


def test_report_counts_equal_the_load_summary(tmp_path: Path) -> None:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    config = str(write_config(tmp_path, "redact:\n  email: mask\n  phone: drop-message\n"))
    report = cli("validate", config)
    redaction = report["redaction"]
    assert redaction["policy"]["email"] == "mask" and redaction["policy"]["phone"] == "drop-message"
    finding = report["checks"]["redaction"]
    assert finding["count"] == redaction["masked_messages"] + redaction["dropped_messages"]
    assert finding["examples"], "masked examples are listed"
    for example in finding["examples"]:
        assert "[REDACTED:" in example["sent"] or example["action"] == "drop-message"
    assert {e["action"] for e in finding["examples"]} == {"mask", "drop-message"}
    html = (tmp_path / "work" / "report.html").read_text(encoding="utf-8")
    assert "Messages redacted before sending" in html and "[REDACTED:email]" in html
    files = b"".join(p.read_bytes() for p in (tmp_path / "work").glob("report.*")).lower()
    for value in SENSITIVE.values():
        for line in value.splitlines():
            assert line.lower().encode() not in files
    out = cli("run", config)
    assert out["load"]["redacted"] == redaction["masked"]
    assert out["chunk"]["redacted"]["dropped"] == redaction["dropped"] == {"phone": 1}
    assert out["chunk"]["dropped"] == redaction["dropped_messages"] == 1
    assert report["totals"]["messages_to_send"] == out["load"]["sent"]["messages"]


def test_policy_change_after_a_load_is_reported_and_resent_only_when_asked(
    tmp_path: Path,
) -> None:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    first = cli("run", str(write_config(tmp_path)))
    assert first["changed"]["count"] == 0
    again = cli("run", str(write_config(tmp_path)))
    assert again["load"]["sent"]["messages"] == 0 and again["changed"]["count"] == 0
    masking = "redact:\n  email: mask\n"
    report = cli("validate", str(write_config(tmp_path, masking)))
    assert report["ledger"]["changed"] == 1
    changed = cli("run", str(write_config(tmp_path, masking)))
    assert changed["changed"] == {"count": 1, "message_ids": ["csv:s9"]}
    assert changed["load"]["sent"]["messages"] == 0
    assert PERSONAL["email"] in "\n".join(stored(tmp_path))  # not silently resent
    resent = cli("run", str(write_config(tmp_path, masking, resend_changed=True)))
    assert resent["load"]["sent"]["messages"] == 1
    assert resent["load"]["redacted"] == {"email": 1}
    assert "[REDACTED:email]" in "\n".join(stored(tmp_path))
    settled = cli("run", str(write_config(tmp_path, masking)))
    assert settled["changed"]["count"] == 0 and settled["load"]["sent"]["messages"] == 0


class RecordingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real local server and keeps every request body it carried."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def staged_workdir(tmp_path: Path) -> Iterator[Path]:
    write_export(tmp_path / "export.csv", rows_with_every_kind())
    cli("extract", "--config", str(write_config(tmp_path)))
    yield tmp_path / "work"


@pytest.mark.parametrize(
    "policy", [DEFAULT_POLICY, Policy.build({"email": "mask", "phone": "mask"})]
)
def test_request_bodies_the_server_receives_are_masked(
    staged_workdir: Path, policy: Policy
) -> None:
    chunk_workdir(staged_workdir, ChunkLimits(max_messages=3), policy=policy)
    transport = RecordingTransport()
    with start_server(ServerConfig(db_path=staged_workdir / "server.sqlite")) as server:
        stats = load_workdir(
            staged_workdir, Endpoint(server.url), LoadConfig(rate=500), transport=transport
        )
    assert stats.complete and transport.bodies
    sent = b"".join(transport.bodies)
    masked = {r.kind for r in policy.active}
    for kind, value in SENSITIVE.items():
        first_line = value.splitlines()[0].encode()
        assert (first_line in sent) == (kind not in masked), kind
        assert (f"[REDACTED:{kind}]".encode() in sent) == (kind in masked), kind


def test_chunk_and_validate_take_the_flags_and_rechunk_without_extracting(
    staged_workdir: Path,
) -> None:
    config = str(staged_workdir.parent / "pipeline.yaml")
    default = cli("chunk", "--config", config)
    assert default["redacted"]["masked_messages"] == len(SECRETS) + 1
    manifest = json.loads((staged_workdir / "batches" / "manifest.json").read_text())
    assert manifest["redact"]["email"] == "keep" and manifest["redacted"] == default["redacted"]
    off = cli("chunk", "--config", config, "--redact", "all=keep", "--redact", "email=mask")
    assert off["redacted"]["masked"] == {"email": 1}
    batches = (staged_workdir / "batches" / "batches.jsonl").read_text()
    assert SECRETS["aws_access_key"] in batches and PERSONAL["email"] not in batches
    report = cli("validate", config, "--redact", "secrets=drop-message")
    assert report["redaction"]["dropped_messages"] == len(SECRETS) + 1
    assert report["totals"]["dropped_by_redaction"] == len(SECRETS) + 1
    assert report["checks"]["secrets"]["severity"] == "info"
