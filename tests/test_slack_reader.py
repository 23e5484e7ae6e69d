"""Reading an export folder's files ahead of use (FileReader.expect)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.slack import export as slack_source
from connectors.slack.export import READ_AHEAD_FILES, ExportListing, FileReader

pytestmark = pytest.mark.skipif(
    not hasattr(os, "posix_fadvise"), reason="read-ahead needs posix_fadvise"
)


def folder_reader(tmp_path: Path, count: int) -> tuple[FileReader, list[str]]:
    keys = []
    for i in range(count):
        path = tmp_path / f"2024-01-{i:02d}.json"
        path.write_bytes(f'[{{"ts": "{i}"}}]'.encode())
        keys.append(str(path))
    files = {Path(k).name: (k, -1) for k in keys}
    return FileReader(ExportListing(path=tmp_path, is_zip=False, files=files)), keys


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_announced_files_are_opened_once_and_advised_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, keys = folder_reader(tmp_path, 3 * READ_AHEAD_FILES)
    opened: list[str] = []
    path_of: dict[int, str] = {}
    advised: set[str] = set()
    open_now = 0
    most_open = 0
    real_open, real_close, real_advise = os.open, os.close, os.posix_fadvise

    def counting_open(path: str, flags: int, *args: int) -> int:
        nonlocal open_now, most_open
        fd = real_open(path, flags, *args)
        opened.append(path)
        path_of[fd] = path
        open_now += 1
        most_open = max(most_open, open_now)
        return fd

    def counting_close(fd: int) -> None:
        nonlocal open_now
        if path_of.pop(fd, None) is not None:
            open_now -= 1
        real_close(fd)

    def recording_advise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            advised.add(path_of[fd])
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(slack_source.os, "open", counting_open)
    monkeypatch.setattr(slack_source.os, "close", counting_close)
    monkeypatch.setattr(slack_source.os, "posix_fadvise", recording_advise)

    reader.expect(iter(keys))
    for i, key in enumerate(keys):
        assert key in advised, f"file {i} was read without being advised first"
        assert reader.read_key(key) == f'[{{"ts": "{i}"}}]'.encode()
    reader.close()

    assert sorted(opened) == sorted(keys)  # each file opened once, read-ahead or not
    assert most_open <= READ_AHEAD_FILES + 1
    assert open_now == 0


def test_reads_out_of_order_or_of_missing_files_work_and_leak_nothing(tmp_path: Path) -> None:
    reader, keys = folder_reader(tmp_path, 6)
    missing = str(tmp_path / "2024-02-01.json")
    before = open_descriptors()

    reader.expect([*keys[:4], missing, *keys[4:]])
    assert reader.read_key(keys[2]) == b'[{"ts": "2"}]'  # skips 0 and 1
    assert reader.read_key(keys[0]) == b'[{"ts": "0"}]'  # no longer ahead: read plainly
    with pytest.raises(OSError):
        reader.read_key(missing)
    assert reader.read_key(keys[5]) == b'[{"ts": "5"}]'
    reader.expect(keys)  # a new announcement drops what was opened for the last
    assert reader.read_key(keys[1]) == b'[{"ts": "1"}]'
    reader.close()  # and closing drops files announced but never read

    assert open_descriptors() == before
