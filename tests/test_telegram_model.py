"""Telegram's msgspec message schema (`connectors.telegram_model`): what it takes, what it
leaves to orjson, and that staging through it gives exactly the rows and counts that
staging every record as orjson's dict gives."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.telegram_model import Message, decode_message
from pipeline.core.config import SourceConfig
from pipeline.core.errors import InputError
from pipeline.extract import extract_source

PLAIN = {
    "id": 5,
    "type": "message",
    "date": "2024-03-01T10:00:00",
    "date_unixtime": "1709283600",
    "from": "Ann",
    "from_id": "user1",
    "text": "hello",
    "text_entities": [{"type": "plain", "text": "hello"}],
}


def test_a_plain_message_decodes_to_the_schema_without_its_entities() -> None:
    msg = decode_message(orjson.dumps(PLAIN))
    assert type(msg) is Message
    assert (msg.id, msg.from_, msg.text, msg.date_unixtime) == (5, "Ann", "hello", "1709283600")
    reply = decode_message(orjson.dumps({**PLAIN, "reply_to_message_id": 3, "edited": "x"}))
    assert type(reply) is Message and reply.reply_to_message_id == 3


def test_other_shapes_are_left_to_orjson() -> None:
    others = [
        {**PLAIN, "photo": "photos/a.jpg"},  # media: a key outside the schema
        {**PLAIN, "reactions": [{"emoji": "x", "count": 1}]},
        {**PLAIN, "id": 2**64},  # orjson reads it as a float: quarantined as no integer id
        {**PLAIN, "from_id": 7},
        {**PLAIN, "text": [{"type": "custom_emoji", "text": "x", "document_id": 1}]},
        {key: value for key, value in PLAIN.items() if key != "text"},  # entities are read
    ]
    for record in others:
        data = json.dumps(record).encode()
        assert decode_message(data) == orjson.loads(data)


def _one_of(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


ANY = st.none() | st.booleans() | st.integers() | st.text(max_size=4)
TEXT = st.text(max_size=6)
ENTITY = st.fixed_dictionaries(
    {"type": _one_of("plain", "link", "text_link", "code", "pre", "bold"), "text": TEXT},
    optional={"href": TEXT, "language": TEXT},
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": _one_of("message", "service", "unsupported", "poll") | ANY,
    "action": _one_of("pin_message", "phone_call", "made_up") | ANY,
    "date": _one_of("2024-03-01T10:00:00", "2024-03-01", "not a date") | ANY,
    "date_unixtime": _one_of("1709283600", "1709283700", "999999999999", "12a") | ANY,
    "from": TEXT | st.none() | ANY,
    "from_id": _one_of("user1", "user2", "user77", "channel77", "") | ANY,
    "text": TEXT | st.lists(TEXT | ENTITY, max_size=3) | ANY,
    "text_entities": st.lists(ENTITY, max_size=2) | ANY,
    "edited": TEXT | ANY,
    "edited_unixtime": _one_of("1709283999", "x") | ANY,
    "reply_to_message_id": st.integers(min_value=-3, max_value=12) | ANY,
    "reply_to_peer_id": TEXT | ANY,
    "forwarded_from": TEXT | st.none() | ANY,
    "saved_from": TEXT | ANY,
    "via_bot": TEXT | ANY,
    "author": TEXT | ANY,
    "photo": TEXT,
}
RECORD = st.fixed_dictionaries(
    {"id": st.integers(min_value=1, max_value=12) | ANY},
    optional=VALUES,
)


def _stage(folder: Path, chat: dict[str, Any], options: dict[str, Any]) -> Any:
    """The extract's counts and rows, or the error it refused the export with."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    doc = {"chats": {"list": [chat]}, "left_chats": {"list": []}}
    (folder / "result.json").write_text(json.dumps(doc, indent=1), "utf-8")
    source = SourceConfig(kind="telegram", path=folder, user_id="owner", options=options)
    try:
        stats = extract_source(source, folder / "w")
    except InputError as exc:
        return str(exc)
    return stats, pq.read_table(folder / "w" / "staging" / "telegram").to_pylist()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORD, max_size=6),
    kind=_one_of("personal_chat", "bot_chat", "public_channel", "private_group"),
    owner=_one_of("workspace", "author", "group"),
    conversation=_one_of("chat", "thread", "session"),
)
def test_the_schema_stages_what_orjson_dicts_stage(
    records: list[dict[str, Any]], kind: str, owner: str, conversation: str
) -> None:
    chat = {"name": "C", "type": kind, "id": 77, "messages": records}
    options = {"memory_owner": owner, "conversation": conversation}
    with tempfile.TemporaryDirectory() as tmp:
        typed = _stage(Path(tmp) / "e", chat, options)
        with mock.patch("connectors.telegram.decode_message", orjson.loads):
            plain = _stage(Path(tmp) / "e", chat, options)
    assert typed == plain


def test_an_id_beyond_64_bits_is_quarantined_alone(tmp_path: Path) -> None:
    """Found by the test above: orjson reads ids up to 2**64 - 1 as integers, which the
    staging table's 64-bit `seq` cannot hold (the extract failed)."""
    records = [{**PLAIN, "id": 2**63}, {**PLAIN, "id": 6, "photo": "a.jpg"}, PLAIN]
    result = _stage(
        tmp_path / "e", {"name": "C", "type": "personal_chat", "id": 77, "messages": records}, {}
    )
    stats, rows = result
    assert (stats.staged, stats.quarantined) == (2, 1)
    assert sorted(row["seq"] for row in rows) == [5, 6]


def test_integers_beyond_64_bits_in_metadata_are_left_out(tmp_path: Path) -> None:
    """Found by the schema test: the last element of an array is read by the standard
    library's parser, which keeps large integers as integers; the metadata JSON cannot
    hold them (the extract failed)."""
    big = {
        **PLAIN,
        "reply_to_message_id": -(2**63) - 1,
        "reactions": [{"emoji": "x", "count": 2**64}],
    }
    chat = {"name": "C", "type": "personal_chat", "id": 77, "messages": [big]}
    stats, rows = _stage(tmp_path / "e", chat, {})
    assert stats.staged == 1
    meta = json.loads(rows[0]["metadata"])
    assert "reply_to_message_id" not in meta and "reactions" not in meta
