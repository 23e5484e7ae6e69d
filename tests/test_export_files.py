"""The one export reader: zip-bomb limits, counted members, and the capped JSON stream."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from connectors.export_files import ExportFiles, Limits, list_zip
from connectors.json_stream import BadElement, JSONStreamError, iter_array
from pipeline.cli import main
from pipeline.core.config import SourceConfig
from pipeline.core.errors import InputError
from pipeline.core.quarantine import read_quarantine
from pipeline.extract import extract_source
from tests.test_chatgpt import conversation, node

MIB = 1 << 20


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def chatgpt_conversations(*conversations: object) -> bytes:
    return json.dumps(list(conversations)).encode()


GOOD = conversation("good", [node("r", None), node("u", "r", "user", "hi", 1.7e9)], "u")


# --- the limits, checked before anything is inflated -------------------------------------


def test_many_small_members_add_up_to_a_refused_ratio(tmp_path: Path) -> None:
    """Each member stays under 1 MiB (no per-member ratio check), the archive does not."""
    spaces = b"[" + b" " * (MIB - 3) + b"]"
    bomb = write_zip(tmp_path / "b.zip", [(f"c/2024-01-{i:02d}.json", spaces) for i in range(20)])
    with pytest.raises(InputError, match=r"ratio \d+:1.*max_compression_ratio"):
        list_zip(bomb, Limits())
    assert list_zip(bomb, Limits(max_ratio=10_000)).members  # the option lifts it


def test_member_ratio_size_total_and_count_limits(tmp_path: Path) -> None:
    big = write_zip(tmp_path / "big.zip", [("a.json", b" " * (2 * MIB))])
    with pytest.raises(InputError, match="member 'a.json' has compression ratio"):
        list_zip(big, Limits())
    with pytest.raises(InputError, match="max_member_bytes"):
        list_zip(big, Limits(max_member_bytes=MIB, max_ratio=1e9))
    with pytest.raises(InputError, match="max_total_bytes"):
        list_zip(big, Limits(max_total_bytes=MIB, max_ratio=1e9))
    many = write_zip(tmp_path / "many.zip", [(f"{i}.json", b"[]") for i in range(5)])
    with pytest.raises(InputError, match="5 entries.*max_members"):
        list_zip(many, Limits(max_members=4))


def test_unsafe_and_duplicate_member_names_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "e.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_zip(
            path,
            [
                ("conversations.json", chatgpt_conversations(GOOD)),
                ("user.json", b'{"id": "first"}'),
                ("user.json", b'{"id": "second"}'),
                ("../../x.json", b"[]"),
                ("/etc/evil.json", b"[]"),
                ("a/../../b.json", b"[]"),
            ],
        )
    listing = list_zip(path, Limits())
    assert listing.dropped == {"unsafe_member_name": 3, "duplicate_member": 1}
    stats = extract_source(SourceConfig(kind="chatgpt", path=path), tmp_path / "w")
    assert stats.balanced and stats.staged == 1
    assert stats.skipped["chatgpt:unsafe_member_name"] == 3
    assert stats.skipped["chatgpt:duplicate_member"] == 1
    with ExportFiles(path) as export:  # the last copy wins, as zipfile reads it
        assert export.read_json("user.json") == {"id": "second"}


def test_slack_counts_dropped_members_and_day_files_outside_the_layout(tmp_path: Path) -> None:
    day = json.dumps([{"type": "message", "ts": "1709571900.000200", "user": "U1", "text": "x"}])
    path = write_zip(
        tmp_path / "s.zip",
        [
            ("users.json", b'[{"id": "U1", "name": "alice"}]'),
            ("channels.json", b'[{"id": "C1", "name": "general"}]'),
            ("general/2024-03-04.json", day.encode()),
            ("../../general/2024-03-07.json", day.encode()),
            ("general/deeper/2024-03-05.json", day.encode()),
            ("2024-03-06.json", day.encode()),
        ],
    )
    source = SourceConfig(kind="slack", path=path, options={"user_id": "team"})
    stats = extract_source(source, tmp_path / "w")
    assert stats.balanced and stats.staged == 1
    assert stats.skipped["slack:unsafe_member_name"] == 1
    assert stats.skipped["slack:day_file_outside_export_layout"] == 2


@pytest.mark.parametrize("kind", ["chatgpt", "claude"])
def test_chatgpt_and_claude_zip_bombs_are_refused_with_exit_3(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("user.json", '{"id": "user-X"}')
        with zf.open("conversations.json", "w", force_zip64=True) as fh:
            fh.write(b'{"conversations": [], "pad": "')
            for _ in range(32):
                fh.write(b"A" * MIB)
            fh.write(b'"}')
    result = CliRunner().invoke(
        main,
        ["extract", "--source", kind, str(path), "--workdir", str(tmp_path / "w"), "-q"],
        env={"MEMOS_ETL_USER_ID": "me"},
    )
    assert result.exit_code == 3, result.output
    assert "refusing a possible zip bomb" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- the JSON stream never buffers past its element cap ----------------------------------


def test_element_cap_holds_while_the_fast_path_looks_for_the_end() -> None:
    """The fast path grows its buffer looking for `}, {`: the cap must stop it there."""
    data = b'[{"id": "a", "pad": "' + b"A" * (3 * MIB) + b'"}, {"id": "b"}]'
    seen: list[int] = []

    class Counting(io.BytesIO):
        def readinto(self, target: object) -> int:  # type: ignore[override]
            got = super().readinto(target)  # type: ignore[arg-type]
            seen.append(got)
            return got

    with pytest.raises(JSONStreamError, match="larger than 1 MB"):
        list(iter_array(Counting(data), chunk=64 * 1024, max_element=MIB))
    assert sum(seen) < 2 * MIB  # stopped reading soon after the cap, not at the end


def test_wrapped_form_is_capped_too() -> None:
    data = b'{"conversations": [], "pad": "' + b"A" * (3 * MIB) + b'"}'
    with pytest.raises(JSONStreamError, match="larger than 1 MB"):
        list(iter_array(io.BytesIO(data), chunk=64 * 1024, max_element=MIB))
    small = b'{"conversations": [{"id": 1}, {"id": 2}]}'
    assert [e.value for e in iter_array(io.BytesIO(small))] == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize("chunk", [5, 1000, 1 << 20])
def test_too_deep_element_is_skipped_alone(chunk: int) -> None:
    deep = '{"x": "]]}\\"", "y": ' + "[" * 50_000 + "]" * 50_000 + "}"
    objects = '{"z": ' + '[{"a": ' * 3000 + "1" + "}]" * 3000 + "}"
    doc = f'[{{"id": "a"}}, {deep}, {{"id": "b"}}, {objects}, {{"id": "c"}}]'
    values = [e.value for e in iter_array(io.BytesIO(doc.encode()), chunk=chunk)]
    assert values[0] == {"id": "a"} and values[2] == {"id": "b"} and values[4] == {"id": "c"}
    assert isinstance(values[1], BadElement) and isinstance(values[3], BadElement)


def test_max_record_bytes_option_bounds_a_chatgpt_conversation(tmp_path: Path) -> None:
    big = conversation("big", [node("r", None), node("u", "r", "user", "x" * 5000, 1.7e9)], "u")
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "conversations.json").write_text(json.dumps([GOOD, big]))
    (folder / "user.json").write_text('{"id": "me"}')
    options = {"max_record_bytes": 4096}
    stats = extract_source(
        SourceConfig(kind="chatgpt", path=folder, options=options), tmp_path / "w"
    )
    assert stats.staged == 1 and stats.quarantined == 1 and stats.balanced
    (entry,) = list(read_quarantine(tmp_path / "w"))
    assert "larger than 4096 bytes" in entry["reason"] and "max_record_bytes" in entry["reason"]
