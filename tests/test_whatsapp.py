"""WhatsApp chat export connector: line formats, locales, skips, ids, owners, CLI and reruns."""

from __future__ import annotations

import json
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.base import get_connector
from connectors.whatsapp import read as wa_read
from connectors.whatsapp.lines import decide_order, parse_clock
from connectors.whatsapp.read import Options, chat_name_of, looks_like, read
from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import MessageTable, Quarantined, Skipped
from pipeline.core.staging_buckets import all_files
from pipeline.extract import extract_source
from pipeline.server.store import conversation_messages, message_counts
from tests.conftest import SAMPLES

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from gen_whatsapp import write as write_synthetic  # noqa: E402

NB = "\u202f"
LRM = "\u200e"


class Staged:
    """Everything `read` yielded for one export."""

    def __init__(self, path: Path, **options: Any) -> None:
        options.setdefault("user_id", "me")
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, int] = {}
        self.quarantined: list[Quarantined] = []
        for event in read(path, Options(**options)):
            if isinstance(event, MessageTable):
                self.rows.extend(event.table.to_pylist())
            elif isinstance(event, Skipped):
                self.skipped[event.reason] = self.skipped.get(event.reason, 0) + event.count
            elif isinstance(event, Quarantined):
                self.quarantined.append(event)
            else:
                raise AssertionError(f"unexpected event {event!r}")

    @property
    def contents(self) -> list[str]:
        return [r["content"] for r in self.rows]

    @property
    def read(self) -> int:
        return len(self.rows) + sum(self.skipped.values()) + len(self.quarantined)


def chat_file(tmp_path: Path, text: str, name: str = "WhatsApp Chat with Ann.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


# --- formats -------------------------------------------------------------------------


def test_android_sample_keeps_messages_and_skips_notices_by_reason() -> None:
    got = Staged(SAMPLES / "whatsapp_export")
    ann = [r for r in got.rows if r["conversation_id"].startswith("whatsapp:Ann Example:")]
    assert [r["content"] for r in ann] == [
        "Sam Rivera: Morning Ann! Are we still on for the bike trip on Saturday?",
        "Ann Example: Yes! I booked the campsite near the lake.\nIt has showers and a small "
        "shop.\nBring the blue tent, mine has a broken pole.",
        "Sam Rivera: Great. I am allergic to peanuts, so no satay this time 🙂",
        "Ann Example: Train leaves at 8:05 from platform 4",
        "Sam Rivera: [attachment: IMG-20240104-WA0003.jpg]\nRoute map for day one",
        "Ann Example: Back home. Best trip this year!",
        "+44 7700 900123: Hi, this is Sam's new number, please save it.",
    ]
    assert ann[0]["created_at"] == utc(2024, 1, 3, 9, 12)
    assert ann[-2]["created_at"] == utc(2024, 1, 13, 18, 2)  # 13/01: day first, whole file
    assert json.loads(ann[3]["metadata"]) == {"edited": True}
    assert json.loads(ann[4]["metadata"]) == {"attachment": "IMG-20240104-WA0003.jpg"}
    assert ann[-1]["author_id"] == "+447700900123"
    assert [r["source_position"] for r in ann][:3] == ["line 2", "line 3", "line 7"]
    assert got.skipped == {
        "whatsapp:call": 1,
        "whatsapp:deleted": 2,
        "whatsapp:encryption_notice": 2,
        "whatsapp:media_omitted": 2,
        "whatsapp:system": 3,
        "whatsapp:view_once": 1,
    }
    assert got.quarantined == [] and got.read == 21
    chor = [r for r in got.rows if r["conversation_id"].startswith("whatsapp:Chor Probe:")]
    assert chor[-1]["content"].endswith("- 20 € pro Halbjahr\n- Überweisung bis Ende März")
    assert chor[-1]["created_at"] == utc(2024, 2, 15, 8, 11)


def test_ios_zip_sample_reads_brackets_seconds_marks_and_attributed_events() -> None:
    got = Staged(SAMPLES / "whatsapp_export_ios.zip", memory_owner="group")
    assert got.contents == [
        "Grandma turns 80 on January 27 🎂",
        "Let's rent the hall at the community center.\nI can pay the deposit.",
        "[attachment: 00000004-PHOTO-2024-01-05-21-05-02.jpg]",
        "Happy to help set up the chairs!",
        "Thanks Tom! The party starts at 3 PM.",
    ]
    assert got.rows[0]["created_at"] == utc(2024, 1, 5, 21, 4, 1)  # 9:04:01 PM, month first
    assert got.rows[3]["author_name"] == "Tom Neighbor"  # "~ Tom Neighbor": not a contact
    assert got.skipped == {
        "whatsapp:deleted": 1,
        "whatsapp:encryption_notice": 1,
        "whatsapp:media_omitted": 1,
        "whatsapp:system": 3,  # created group, "added you" (from the group), "left"
    }
    assert {r["conversation_id"] for r in got.rows} == {
        "whatsapp:whatsapp_export_ios:2024-01-05",
        "whatsapp:whatsapp_export_ios:2024-01-14",
    }


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("12/31/23, 10:15 PM - Ann: hi", utc(2023, 12, 31, 22, 15)),
        (f"12/31/23, 10:15{NB}PM - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("12/31/23, 12:05 am - Ann: hi", utc(2023, 12, 31, 0, 5)),
        ("31/12/2023, 10:15 p.m. - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("31/12/2023, 10:15\u00a0p.\u00a0m. - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("31.12.23, 22:15 - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("31-12-2023 22:15 - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("2023-12-31, 22:15 - Ann: hi", utc(2023, 12, 31, 22, 15)),
        ("[31/12/2023, 22:15:09] Ann: hi", utc(2023, 12, 31, 22, 15, 9)),
        ("[31/12/2023 22:15:09] Ann: hi", utc(2023, 12, 31, 22, 15, 9)),
        (f"{LRM}[12/31/23, 10:15:09{NB}PM] Ann: hi", utc(2023, 12, 31, 22, 15, 9)),
        ("[31.12.2023 klo 22.15.09] Ann: hi", utc(2023, 12, 31, 22, 15, 9)),
    ],
)
def test_line_formats_and_locales(tmp_path: Path, line: str, expected: datetime) -> None:
    got = Staged(chat_file(tmp_path, line + "\n"))
    assert [(r["created_at"], r["author_name"], r["content"]) for r in got.rows] == [
        (expected, "Ann", "Ann: hi")
    ]


def test_day_month_order_is_decided_per_file_not_per_line(tmp_path: Path) -> None:
    text = "".join(
        f"{m}/{d}/24, 09:00 - Ann: day {m}/{d}\n" for m, d in [(1, 5), (2, 3), (3, 4), (3, 14)]
    )
    got = Staged(chat_file(tmp_path, text))  # only 3/14 proves month-first
    assert [r["created_at"].date().isoformat() for r in got.rows] == [
        "2024-01-05",
        "2024-02-03",
        "2024-03-04",
        "2024-03-14",
    ]
    forced = Staged(chat_file(tmp_path, text), date_order="dmy")
    assert [q.reason for q in forced.quarantined] == [
        "whatsapp:bad_timestamp: not a valid date in dmy order: '3/14/24'"
    ]
    assert forced.quarantined[0].position == "line 4" and forced.read == 4


def test_ambiguous_dates_follow_the_reading_that_runs_forward() -> None:
    daily = [(f"{d:02d}", "01", "2024") for d in range(1, 13)]
    assert decide_order(daily).order == "dmy"  # 12 days, not 12 months
    assert decide_order([("1", "5", "24"), ("1", "7", "24"), ("2", "3", "24")]).order == "mdy"
    assert decide_order([("3", "4", "24")]).basis == "default"
    assert decide_order([("2024", "01", "31")]).order == "ymd"


def test_clock_parsing() -> None:
    assert parse_clock("12:00 AM") == (0, 0, 0)
    assert parse_clock("12:30 p.m.") == (12, 30, 0)
    assert parse_clock("9.05.07") == (9, 5, 7)
    assert parse_clock("13:00 PM") is None
    assert parse_clock("24:00") is None


def test_multiline_crlf_bom_and_continuation_that_looks_like_a_date(tmp_path: Path) -> None:
    text = (
        "\ufeff01/02/2024, 10:00 - Ann: first line\r\n"
        "second line\r\n"
        "01/02 is not a header\r\n"
        "\r\n"
        "01/02/2024, 10:01 - Bob: reply\r\n"
    )
    got = Staged(chat_file(tmp_path, text))
    assert got.contents == [
        "Ann: first line\nsecond line\n01/02 is not a header",
        "Bob: reply",
    ]
    assert [r["source_position"] for r in got.rows] == ["line 1", "line 5"]


def test_block_boundaries_do_not_change_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.whatsapp import stage

    path = tmp_path / "WhatsApp Chat with Bench.txt"
    write_synthetic(path, 400, "ios")
    with path.open("a", encoding="utf-8") as fh:
        fh.write("[1/9/21, 9:00:00\u202fAM] Ann: " + "long line " * 200 + "\n\xe9t\xe9\n")
    whole = Staged(path)
    monkeypatch.setattr(stage, "BLOCK_BYTES", 7)
    tiny = Staged(path)
    assert tiny.rows == whole.rows and tiny.skipped == whole.skipped
    assert whole.rows[-1]["content"].endswith("long line \n\xe9t\xe9")


def test_invalid_utf8_is_replaced_and_flagged_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "WhatsApp Chat with Ann.txt"
    path.write_bytes(b"01/02/2024, 10:00 - Ann: caf\xe9 au lait\n01/02/2024, 10:01 - Bob: fine\n")
    got = Staged(path)
    assert got.contents == ["Ann: caf\ufffd au lait", "Bob: fine"]
    assert json.loads(got.rows[0]["metadata"]) == {"invalid_utf8": True}
    assert got.rows[1]["metadata"] is None


def test_impossible_timestamps_are_quarantined_and_counts_add_up(tmp_path: Path) -> None:
    text = (
        "13/02/2024, 10:00 - Ann: ok\n"
        "31/02/2024, 10:00 - Ann: no such day\n"
        "14/02/2024, 25:61 - Ann: no such time\n"
        "14/02/2024, 10:02 - Ann: ok again\n"
    )
    got = Staged(chat_file(tmp_path, text))
    assert got.contents == ["Ann: ok", "Ann: ok again"]
    assert [(q.position, q.reason.split(":")[1]) for q in got.quarantined] == [
        ("line 2", "bad_timestamp"),
        ("line 3", "bad_timestamp"),
    ]
    assert got.quarantined[0].excerpt == "Ann: no such day"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<Media omitted>", "whatsapp:media_omitted"),
        ("<Multimedia omitido>", "whatsapp:media_omitted"),
        (f"{LRM}video omitted", "whatsapp:media_omitted"),
        ("This message was deleted", "whatsapp:deleted"),
        ("You deleted this message", "whatsapp:deleted"),
        ("Se eliminó este mensaje.", "whatsapp:deleted"),
        ("null", "whatsapp:view_once"),
        (f"{LRM}Missed voice call, {LRM}Tap to call back", "whatsapp:call"),
        ("Les messages et les appels sont chiffrés de bout en bout. Personne…", None),
        (f"{LRM}Ann changed the group description", "whatsapp:system"),
    ],
)
def test_placeholders_and_notices_are_skipped_by_reason(
    tmp_path: Path, body: str, reason: str | None
) -> None:
    got = Staged(chat_file(tmp_path, f"01/02/2024, 10:00 - Ann: {body}\n"))
    assert got.rows == []
    assert got.skipped == {reason or "whatsapp:encryption_notice": 1}


def test_android_system_lines_without_sender_are_skipped(tmp_path: Path) -> None:
    text = (
        '01/02/2024, 10:00 - Ann created group "Trip: 2024"\n'
        '01/02/2024, 10:00 - Ann changed the subject from "a: b" to "c"\n'
        "01/02/2024, 10:01 - Bob joined using this group's invite link\n"
        "01/02/2024, 10:02 - Bob: hello: everyone\n"
    )
    got = Staged(chat_file(tmp_path, text))
    assert got.contents == ["Bob: hello: everyone"]
    assert got.skipped == {"whatsapp:system": 3}


def test_attachments_become_placeholders_with_captions(tmp_path: Path) -> None:
    text = (
        "01/02/2024, 10:00 - Ann: DOC-20240201-WA0001.pdf (Datei angehängt)\nthe contract\n"
        "01/02/2024, 10:01 - Ann: see report.pdf (later)\n"
        f"[01/02/2024, 10:02:00] Ann: {LRM}<attached: 00000009-AUDIO-2024-02-01.opus>\n"
    )
    got = Staged(chat_file(tmp_path, text))
    assert got.contents == [
        "Ann: [attachment: DOC-20240201-WA0001.pdf]\nthe contract",
        # prose is not an attachment; an iOS line in an Android file continues the message
        "Ann: see report.pdf (later)\n[01/02/2024, 10:02:00] Ann: <attached: "
        "00000009-AUDIO-2024-02-01.opus>",
    ]
    ios = Staged(chat_file(tmp_path, text.split("\n", 3)[3], name="_chat.txt"))
    assert ios.contents == ["Ann: [attachment: 00000009-AUDIO-2024-02-01.opus]"]


# --- inputs --------------------------------------------------------------------------


def test_folder_zip_and_single_file_give_the_same_rows(tmp_path: Path) -> None:
    source = SAMPLES / "whatsapp_export" / "WhatsApp Chat with Ann Example.txt"
    single = Staged(source)
    zipped = tmp_path / "WhatsApp Chat - Ann Example (1).zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(source, "_chat.txt")
        zf.writestr("IMG-20240104-WA0003.jpg", b"\xff\xd8")
    in_zip = Staged(zipped)
    assert [r["message_id"] for r in in_zip.rows] == [r["message_id"] for r in single.rows]
    assert in_zip.rows[0]["source_file"].endswith("Ann Example (1).zip:_chat.txt")
    folder = Staged(SAMPLES / "whatsapp_export")
    assert {r["message_id"] for r in single.rows} <= {r["message_id"] for r in folder.rows}


def test_chat_names(tmp_path: Path) -> None:
    from connectors.export_files import ExportFiles

    for file_name, expected in [
        ("WhatsApp Chat with Ann (2).txt", "Ann"),
        ("WhatsApp-Chat mit Chor Probe.txt", "Chor Probe"),
        ("Conversa do WhatsApp com Rui.txt", "Rui"),
        ("notes.txt", "notes"),
    ]:
        path = chat_file(tmp_path, "01/02/2024, 10:00 - Ann: hi\n", file_name)
        with ExportFiles(path, sibling_globs=()) as export:
            assert chat_name_of(export, file_name) == expected
    named = Staged(SAMPLES / "whatsapp_export_ios.zip", chat_name="Family Group")
    assert named.rows[0]["conversation_id"] == "whatsapp:Family Group:2024-01-05"


def test_looks_like_is_cheap_and_never_raises(tmp_path: Path) -> None:
    assert looks_like(SAMPLES / "whatsapp_export")
    assert looks_like(SAMPLES / "whatsapp_export_ios.zip")
    assert looks_like(SAMPLES / "whatsapp_export" / "WhatsApp Chat with Ann Example.txt")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 300)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    empty = tmp_path / "empty"
    empty.mkdir()
    not_first = chat_file(tmp_path, "hello\n01/02/2024, 10:00 - Ann: hi\n", "x.txt")
    for path in [
        SAMPLES / "support_chats.csv",
        SAMPLES / "slack_export",
        SAMPLES / "claude_export",
        junk,
        broken,
        empty,
        not_first,
        tmp_path / "missing.txt",
    ]:
        assert looks_like(path) is False, path


def test_not_a_whatsapp_export_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a WhatsApp chat export"):
        list(read(SAMPLES / "support_chats.csv", Options(user_id="me")))
    with pytest.raises(InputError, match="not a WhatsApp chat export"):
        list(read(SAMPLES / "slack_export", Options(user_id="me")))


def test_options_are_checked() -> None:
    model = get_connector("whatsapp").options_model
    assert model is Options
    with pytest.raises(ValueError, match="speaker_prefix"):
        Options(user_id="me", memory_owner="group", speaker_prefix=True)
    with pytest.raises(ValueError, match="owner_name"):
        Options(user_id="me", others_role="assistant")
    with pytest.raises(ValueError, match="time zone"):
        Options(user_id="me", timezone="Mars/Base")
    with pytest.raises(ValueError, match="template"):
        Options(user_id_template="{email}")
    with pytest.raises(ConfigError, match="needs a user_id"):
        list(read(SAMPLES / "whatsapp_export", Options()))


# --- owners, conversations, time zones -----------------------------------------------

GROUP = (
    "01/02/2024, 10:00 - Ann: hi all\n"
    "01/02/2024, 10:05 - Bob: hi Ann\n"
    "01/02/2024, 13:00 - Ann: lunch?\n"
    "02/02/2024, 09:00 - Bob: next day\n"
)


def test_workspace_mode_prefixes_speakers_and_fills_authors(tmp_path: Path) -> None:
    got = Staged(chat_file(tmp_path, GROUP))
    assert {r["user_id"] for r in got.rows} == {"me"} and {r["role"] for r in got.rows} == {"user"}
    assert got.contents[0] == "Ann: hi all"
    assert [(r["author_id"], r["author_name"]) for r in got.rows][:2] == [
        ("Ann", "Ann"),
        ("Bob", "Bob"),
    ]


def test_group_mode_has_no_prefix_one_owner_and_authors(tmp_path: Path) -> None:
    got = Staged(chat_file(tmp_path, GROUP), memory_owner="group")
    assert got.contents == ["hi all", "hi Ann", "lunch?", "next day"]
    assert {r["user_id"] for r in got.rows} == {"me"}
    assert [r["author_name"] for r in got.rows] == ["Ann", "Bob", "Ann", "Bob"]


def test_author_mode_maps_people_and_the_owner(tmp_path: Path) -> None:
    got = Staged(
        chat_file(tmp_path, GROUP),
        memory_owner="author",
        user_id="ann-memory",
        owner_name="Ann",
        others_role="assistant",
        user_id_template="wa-{name}",
    )
    assert [(r["user_id"], r["role"], r["content"]) for r in got.rows] == [
        ("ann-memory", "user", "hi all"),
        ("wa-Bob", "assistant", "hi Ann"),
        ("ann-memory", "user", "lunch?"),
        ("wa-Bob", "assistant", "next day"),
    ]
    mapped = Staged(chat_file(tmp_path, GROUP), memory_owner="author", user_map={"Bob": "bob-1"})
    assert [r["user_id"] for r in mapped.rows] == ["Ann", "bob-1", "Ann", "bob-1"]


def test_conversation_modes_and_time_zone(tmp_path: Path) -> None:
    path = chat_file(tmp_path, GROUP)
    day = Staged(path)
    assert [r["conversation_id"] for r in day.rows] == [
        "whatsapp:Ann:2024-02-01",
        "whatsapp:Ann:2024-02-01",
        "whatsapp:Ann:2024-02-01",
        "whatsapp:Ann:2024-02-02",
    ]
    session = Staged(path, conversation="session", session_gap_minutes=60)
    assert [r["conversation_id"] for r in session.rows] == [
        "whatsapp:Ann:2024-02-01T10:00",
        "whatsapp:Ann:2024-02-01T10:00",
        "whatsapp:Ann:2024-02-01T13:00",
        "whatsapp:Ann:2024-02-02T09:00",
    ]
    whole = Staged(path, conversation="chat")
    assert {r["conversation_id"] for r in whole.rows} == {"whatsapp:Ann"}
    berlin = Staged(path, timezone="Europe/Berlin")
    assert berlin.rows[0]["created_at"] == utc(2024, 2, 1, 9, 0)
    assert [r["message_id"] for r in berlin.rows] == [r["message_id"] for r in day.rows]
    summer = Staged(chat_file(tmp_path, "01/07/2024, 10:00 - Ann: x\n"), timezone="Europe/Berlin")
    assert summer.rows[0]["created_at"] == utc(2024, 7, 1, 8, 0)


# --- stable ids ----------------------------------------------------------------------

FIRST_EXPORT = (
    "03/01/2024, 09:12 - Messages and calls are end-to-end encrypted. Tap to learn more.\n"
    "03/01/2024, 09:12 - Sam: Morning!\n"
    "03/01/2024, 09:12 - Sam: Morning!\n"
    "03/01/2024, 09:12 - Ann: <Media omitted>\n"
    "03/01/2024, 09:12 - Ann: nice photo, right?\n"
    "03/01/2024, 09:13 - Ann: Train at 8 <This message was edited>\n"
)
LONGER_EXPORT = (
    "03/01/2024, 09:12 - Sam: Morning!\n"
    "03/01/2024, 09:12 - Sam: Morning!\n"
    "03/01/2024, 09:12 - Ann: IMG-20240103-WA0001.jpg (file attached)\n"
    "03/01/2024, 09:12 - Ann: nice photo, right?\n"
    "03/01/2024, 09:13 - Ann: Train at 8:05 <This message was edited>\n"
    "03/01/2024, 09:40 - Sam: See you there\n"
    "04/01/2024, 10:00 - Ann: Back home\n"
)


def ids(got: Staged) -> dict[str, str]:
    return {r["message_id"]: r["content"] for r in got.rows}


def test_a_longer_re_export_repeats_every_shared_id(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    first = Staged(chat_file(tmp_path / "old", FIRST_EXPORT))
    longer = Staged(chat_file(tmp_path, LONGER_EXPORT))
    assert len(first.rows) == 4 and len(set(ids(first))) == 4  # two "Morning!" differ
    shared = set(ids(first)) & set(ids(longer))
    assert shared == set(ids(first))  # media attached now, first line gone, edit: same ids
    new = [ids(longer)[i] for i in ids(longer) if i not in shared]
    assert new == [
        "Ann: [attachment: IMG-20240103-WA0001.jpg]",
        "Sam: See you there",
        "Ann: Back home",
    ]
    twelve_hour = LONGER_EXPORT.replace("09:12", "9:12 AM").replace("09:13", "9:13 AM")
    twelve_hour = twelve_hour.replace("09:40", "9:40 AM").replace("10:00", "10:00 AM")
    other_clock = Staged(chat_file(tmp_path, twelve_hour))
    assert ids(other_clock).keys() == ids(longer).keys()


# --- fuzz ----------------------------------------------------------------------------

_piece = st.sampled_from(
    [
        "01/02/2024, 10:00 - ",
        "13/02/24, 23:59 - ",
        "2/30/24, 9:00 PM - ",
        "[1/2/24, 10:00:01\u202fAM] ",
        "\u200e[31.12.23 klo 22.15.09] ",
        "Ann: ",
        "\u202a+1 555 0100\u202c: ",
        "<Media omitted>",
        "\u200eimage omitted",
        "<attached: x.jpg>",
        "IMG-1.jpg (file attached)",
        "\n",
        "\r\n",
        ": ",
        "\ufeff",
        '"',
    ]
)
_chunk = st.one_of(_piece, st.text(max_size=12))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=st.lists(_chunk, max_size=40), tail=st.binary(max_size=20))
def test_fuzz_never_raises_and_counts_add_up(
    tmp_path: Path, pieces: list[str], tail: bytes
) -> None:
    data = ("01/02/2024, 10:00 - Ann: start\n" + "".join(pieces)).encode("utf-8", "replace")
    for fmt_data in (data + tail, b"[1/2/24, 10:00:01 AM] Ann: x\n" + data[30:] + tail):
        path = tmp_path / "WhatsApp Chat with Fuzz.txt"
        path.write_bytes(fmt_data)
        got = Staged(path)
        text = fmt_data.decode("utf-8", "replace")
        from connectors.whatsapp.lines import FAMILIES, detect_family

        family = detect_family(text[:65536])
        assert family is not None
        headers = len(FAMILIES[family].findall(text.lstrip("\ufeff")))
        assert got.read == headers
        assert len({r["message_id"] for r in got.rows}) == len(got.rows)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_fuzz_looks_like_and_read_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "_chat.txt"
    path.write_bytes(data)
    if looks_like(path):
        Staged(path)
    else:
        with pytest.raises(InputError):
            Staged(path)


# --- pipeline: extract counts, parallel halves, CLI, reruns --------------------------


def test_generated_exports_balance_through_extract(tmp_path: Path) -> None:
    for fmt in ("android", "ios"):
        path = tmp_path / fmt / "WhatsApp Chat with Bench.txt"
        path.parent.mkdir()
        write_synthetic(path, 3000, fmt)
        stats = extract_source(
            SourceConfig(kind="whatsapp", path=path, user_id="me", name=fmt), tmp_path / "w"
        )
        assert stats.balanced and stats.read == 3000 and stats.quarantined == 0
        assert stats.staged > 2900 and set(stats.skipped) == {
            "whatsapp:deleted",
            "whatsapp:encryption_notice",
            "whatsapp:system",
        }


def test_large_files_split_in_two_halves_give_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flat_parts: dict[str, dict[str, int]]
) -> None:
    path = tmp_path / "WhatsApp Chat with Bench.txt"
    write_synthetic(path, 20_000, "android")

    def staged(name: str, parallel_from: int) -> list[tuple[Any, ...]]:
        monkeypatch.setattr(wa_read, "PARALLEL_MIN_BYTES", parallel_from)
        src = SourceConfig(kind="whatsapp", path=path, user_id="me", name=name)
        stats = extract_source(src, tmp_path / "w")
        assert stats.balanced
        assert len(flat_parts[name]) == (2 if parallel_from == 1 else 1)
        files = all_files(tmp_path / "w" / "staging" / name)
        rows = [pq.read_table(f).to_pylist() for f in files]
        cols = ("message_id", "conversation_id", "seq", "content", "created_at", "source_position")
        return sorted(tuple(r[c] for c in cols) for part in rows for r in part)

    assert staged("one", 1 << 40) == staged("two", 1)
    zipped = tmp_path / "WhatsApp Chat - Bench.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "_chat.txt")
    path = zipped  # a ZIP member is entered in the middle by decompressing up to it
    assert [r[1:] for r in staged("zip", 1)] == [r[1:] for r in staged("one-zip", 1 << 40)]


def test_cli_extract_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "whatsapp",
            str(SAMPLES / "whatsapp_export"),
            "--user-id",
            "me",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["read"], out["staged"], out["quarantined"]) == (21, 10, 0)
    assert out["read"] == out["staged"] + sum(out["skipped"].values())


def test_cli_refuses_a_non_export_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--source",
            "whatsapp",
            str(SAMPLES / "support_chats.csv"),
            "--user-id",
            "me",
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ") and "not a WhatsApp chat export" in result.stderr
    assert "Traceback" not in result.stderr


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nuser_id: me\n"
        "sources:\n  - kind: whatsapp\n    path: chat\n    options: {conversation: chat}\n"
        "load:\n  target: local\n  rate: 500\n",
        encoding="utf-8",
    )
    (tmp_path / "chat").mkdir(exist_ok=True)
    return config


def stored(tmp_path: Path) -> list[str]:
    db = tmp_path / "work" / "local-memos.sqlite"
    return [
        m["content"]
        for user, conv in message_counts(db)
        for m in conversation_messages(db, user, conv)
    ]


def invoke(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_run_on_a_longer_re_export_sends_only_the_new_tail(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    chat_file(tmp_path / "chat", FIRST_EXPORT)
    first = invoke("run", str(config))
    assert first["load"]["sent"]["messages"] == 4
    chat_file(tmp_path / "chat", LONGER_EXPORT)
    second = invoke("run", str(config))
    assert second["load"]["sent"]["messages"] == 3
    assert second["changed"]["count"] == 1  # the edited message: reported, not resent
    assert stored(tmp_path) == [
        "Sam: Morning!",
        "Sam: Morning!",
        "Ann: nice photo, right?",
        "Ann: Train at 8",
        "Ann: [attachment: IMG-20240103-WA0001.jpg]",
        "Sam: See you there",
        "Ann: Back home",
    ]
    assert invoke("run", str(config))["load"]["sent"]["messages"] == 0


def test_step_by_step_on_a_longer_re_export_sends_only_the_new_tail(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    def steps() -> dict[str, Any]:
        invoke("extract", "--config", str(config))
        invoke("chunk", "--config", str(config))
        return invoke("load", "--config", str(config))

    chat_file(tmp_path / "chat", FIRST_EXPORT)
    assert steps()["sent"]["messages"] == 4
    chat_file(tmp_path / "chat", LONGER_EXPORT)
    assert steps()["sent"]["messages"] == 3
    assert stored(tmp_path) == [
        "Sam: Morning!",
        "Sam: Morning!",
        "Ann: nice photo, right?",
        "Ann: Train at 8",
        "Ann: [attachment: IMG-20240103-WA0001.jpg]",
        "Sam: See you there",
        "Ann: Back home",
    ]
