from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.csv_export import Options, parse_timestamp, read
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import Message, Quarantined
from pipeline.core.quarantine import read_quarantine
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source
from tests.conftest import SAMPLES

HEADER = "conversation_id,user_id,role,content,timestamp\n"


def _write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _events(path: Path, **options: object) -> list[object]:
    return list(read(path, Options.model_validate(options)))


def test_sample_file_stages_every_row(tmp_path: Path) -> None:
    source = SourceConfig(kind="csv", path=SAMPLES / "support_chats.csv")
    stats = extract_source(source, tmp_path)
    with (SAMPLES / "support_chats.csv").open(encoding="utf-8", newline="") as fh:
        data_rows = sum(1 for _ in csv.reader(fh)) - 1
    assert stats.read == stats.staged == data_rows
    assert stats.balanced
    table = read_staging(tmp_path)
    assert set(table.column("role").to_pylist()) == {"user", "assistant"}
    assert stats.users == len(set(table.column("user_id").to_pylist())) == 3
    multiline = [c for c in table.column("content").to_pylist() if "\n" in c]
    assert len(multiline) == 2


def test_counts_stay_distinct_across_buffer_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conversation and user counts of message events, counted bucket by bucket."""
    monkeypatch.setattr(
        "pipeline.core.staging_buckets.choose_buckets", lambda files, target_bytes=0: 8
    )
    stats = extract_source(SourceConfig(kind="csv", path=SAMPLES / "support_chats.csv"), tmp_path)
    table = read_staging(tmp_path)
    users, conversations = table.column("user_id"), table.column("conversation_id")
    pairs = set(zip(users.to_pylist(), conversations.to_pylist(), strict=True))
    assert stats.conversations == len(pairs) < stats.staged // 2
    assert stats.users == len(set(table.column("user_id").to_pylist())) == 3


def test_broken_rows_are_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    source = SourceConfig(kind="csv", path=SAMPLES / "broken_chats.csv")
    stats = extract_source(source, tmp_path)
    entries = list(read_quarantine(tmp_path))
    reasons = {e["position"]: e["reason"] for e in entries}
    assert reasons["line 3"] == "missing content"
    assert reasons["line 4"].startswith("bad timestamp 'yesterday at noon'")
    assert reasons["line 5"].startswith("bytes that are not valid utf-8 (")
    assert "--encoding cp1252" in reasons["line 5"]
    assert reasons["line 8"] == "unknown role 'wizard'"
    assert stats.quarantined == len(entries) == 4
    # the good rows, including the multi-line one after the bad lines, still flow
    assert stats.staged == 2
    assert "Have a good weekend!" in read_staging(tmp_path).column("content").to_pylist()[1]
    assert stats.read == stats.staged + stats.quarantined


def test_bom_and_crlf_are_handled(tmp_path: Path) -> None:
    text = HEADER.replace("\n", "\r\n") + 'c1,u1,user,"a\r\nb",2025-01-01T00:00:00Z\r\n'
    path = _write(tmp_path, codecs.BOM_UTF8 + text.encode("utf-8"))
    (event,) = _events(path)
    assert isinstance(event, Message)
    assert event.conversation_id == "c1"
    assert event.content == "a\r\nb"


def test_utf16_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, (HEADER + "c1,u1,user,hi,\n").encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16.*options.encoding"):
        _events(path)


def test_latin1_file_is_refused_unless_configured(tmp_path: Path) -> None:
    rows = "".join(f"c1,u1,user,caf\xe9 n\xb0{i},\n" for i in range(10))
    path = _write(tmp_path, (HEADER + rows).encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        _events(path)
    events = _events(path, encoding="latin-1")
    assert [e.content for e in events if isinstance(e, Message)][0] == "café n°0"


def test_column_and_role_mapping(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "ticket,who,text,at\nT1,Customer,hello,1700000000\nT1,Rep,hi,1700000060000\n"
    )
    events = _events(
        path,
        user_id="owner",
        columns={"conversation_id": "ticket", "role": "who", "content": "text", "timestamp": "at"},
        roles={"rep": "assistant"},
    )
    assert [(e.role, e.user_id, e.conversation_id) for e in events] == [
        ("user", "owner", "T1"),
        ("assistant", "owner", "T1"),
    ]
    assert [e.created_at for e in events] == [
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc),
        datetime(2023, 11, 14, 22, 14, 20, tzinfo=timezone.utc),
    ]


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("2025-03-03T09:15:00Z", None, datetime(2025, 3, 3, 9, 15, tzinfo=timezone.utc)),
        ("2025-03-03T11:15:00+02:00", None, datetime(2025, 3, 3, 9, 15, tzinfo=timezone.utc)),
        ("2025-03-03 09:15:00", None, datetime(2025, 3, 3, 9, 15, tzinfo=timezone.utc)),
        ("1741000000", None, datetime(2025, 3, 3, 11, 6, 40, tzinfo=timezone.utc)),
        ("1741000000500", None, datetime(2025, 3, 3, 11, 6, 40, 500000, tzinfo=timezone.utc)),
        ("03/03/2025 09:15", "%d/%m/%Y %H:%M", datetime(2025, 3, 3, 9, 15, tzinfo=timezone.utc)),
    ],
)
def test_timestamp_forms(value: str, fmt: str | None, expected: datetime) -> None:
    from zoneinfo import ZoneInfo

    assert parse_timestamp(value, fmt, ZoneInfo("UTC")) == expected


def test_naive_times_use_configured_zone(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "c1,u1,user,hi,2025-07-01 12:00:00\n")
    (event,) = _events(path, timezone="Asia/Shanghai")
    assert event.created_at == datetime(2025, 7, 1, 4, 0, tzinfo=timezone.utc)


def test_unknown_timezone_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "c1,u1,user,hi,\n")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        _events(path, timezone="Mars/Olympus")


def test_missing_user_id_without_default_is_quarantined(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "c1,,user,hi,\nc1,u9,user,there,\n")
    first, second = _events(path)
    assert isinstance(first, Quarantined) and "user_id" in first.reason
    assert isinstance(second, Message) and second.user_id == "u9"


def test_missing_required_column_is_one_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "conversation_id,user_id,text\nc1,u1,hi\n")
    with pytest.raises(InputError, match=r"line 1: missing column\(s\) \['role', 'content'\]"):
        _events(path)


def test_wrong_field_count_is_quarantined(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "c1,u1,user,hi,,extra\nc1,u1,user,ok,\n")
    bad, good = _events(path)
    assert isinstance(bad, Quarantined) and bad.reason == "expected 5 fields, found 6"
    assert isinstance(good, Message)


def test_message_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    text = HEADER + "c1,u1,user,same,\nc1,u1,user,same,\nc1,u1,assistant,other,\n"
    first = [e.message_id for e in _events(_write(tmp_path, text))]
    # a newer export with a row inserted before keeps the old rows' ids
    newer = HEADER + "c0,u1,user,new,\n" + text[len(HEADER) :]
    second = [e.message_id for e in _events(_write(tmp_path, newer, "newer.csv"))]
    assert len(set(first)) == 3
    assert second[1:] == first


def test_explicit_message_id_column_is_used(tmp_path: Path) -> None:
    path = _write(tmp_path, "message_id," + HEADER + "abc,c1,u1,user,hi,\n")
    (event,) = _events(path)
    assert event.message_id == "csv:abc"


def test_seq_counts_per_conversation(tmp_path: Path) -> None:
    text = HEADER + "a,u,user,1,\nb,u,user,1,\na,u,assistant,2,\na,u,user,3,\n"
    events = _events(_write(tmp_path, text))
    assert [(e.conversation_id, e.seq) for e in events] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
).filter(lambda s: s.strip() != "")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(contents=st.lists(_text, min_size=1, max_size=8))
def test_any_text_survives_csv_to_parquet(tmp_path: Path, contents: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["conversation_id", "user_id", "role", "content"])
    for text in contents:
        writer.writerow(["c", "u", "user", text])
    path = tmp_path / "fuzz.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    stats = extract_source(SourceConfig(kind="csv", path=path), tmp_path / "w")
    assert stats.staged == len(contents)
    assert read_staging(tmp_path / "w").column("content").to_pylist() == contents
