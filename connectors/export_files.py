"""Uniform access to an export given as a ZIP, an unpacked folder, or a single file.

Chat exports arrive zipped, unzipped, or as the one JSON file that matters. `ExportFiles`
hides the difference: it lists member names relative to the export's top folder and opens
them as binary streams, so connectors never extract a ZIP to disk.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

from connectors.json_stream import JSONStreamError, StreamedElement, iter_array
from pipeline.core.errors import InputError
from pipeline.core.models import Quarantined


class ExportFiles:
    """The files of one export. `names` are POSIX paths relative to the export root.

    For a ZIP whose entries all sit in one top folder, and for a folder holding nothing but
    one subfolder (and no JSON file), that inner folder is the root. For a single
    file, the root is the file's folder but only its small JSON siblings are listed (plus the
    file itself), so `user.json` next to a bare `conversations.json` is found.
    """

    def __init__(self, path: Path, *, sibling_globs: tuple[str, ...] = ("*.json",)) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        self.single_file: str | None = None
        if path.is_dir():
            self._root = _unwrap_folder(path)
            self.names = sorted(p.name for p in self._root.iterdir() if p.is_file())
        elif path.is_file() and zipfile.is_zipfile(path):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise InputError(f"{path}: not a readable ZIP file ({exc})") from None
            members = [i.filename for i in self._zip.infolist() if not i.is_dir()]
            self._prefix = _common_folder(members)
            self.names = sorted(m[len(self._prefix) :] for m in members)
            self._root = path
        elif path.is_file() and path.suffix.lower() == ".zip":
            raise InputError(
                f"{path}: not a readable ZIP file (truncated or corrupt?); download the "
                "export again, or unpack it and pass the folder"
            )
        elif path.is_file():
            self._root = path.parent
            self.single_file = path.name
            siblings = {p.name for g in sibling_globs for p in path.parent.glob(g) if p.is_file()}
            self.names = sorted(siblings | {path.name})
        else:
            raise InputError(f"input not found: {path}")

    def label(self, name: str) -> str:
        """How a member is named in errors and in the staging table's `source_file`."""
        if self._zip is not None:
            return f"{self.path}:{self._prefix}{name}"
        return str(self._root / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Open a member for binary reading (a ZIP member is decompressed as it is read)."""
        if self._zip is not None:
            with self._zip.open(self._prefix + name) as fh:
                yield fh
        else:
            with (self._root / name).open("rb") as fh:
                yield fh

    @property
    def zipped(self) -> bool:
        """True when members are read out of a ZIP (so seeking in them is slow)."""
        return self._zip is not None

    def size(self, name: str) -> int:
        """Uncompressed size of a member in bytes (0 when it does not exist)."""
        try:
            if self._zip is not None:
                return self._zip.getinfo(self._prefix + name).file_size
            return (self._root / name).stat().st_size
        except (KeyError, OSError):
            return 0

    def read_json(self, name: str) -> Any:
        """Parse a small member whole; an unreadable one is an `InputError` naming it."""
        try:
            with self.open(name) as fh:
                data = fh.read()
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{self.label(name)}: malformed JSON ({exc})") from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"{self.label(name)}: cannot read ({exc})") from None

    def close(self) -> None:
        """Release the ZIP handle, if any."""
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ExportFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrap_folder(path: Path) -> Path:
    """`path`, or its only subfolder when `path` holds no JSON file (an export unzipped
    into a folder of its own)."""
    entries = list(path.iterdir())
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if len(folders) == 1 and not any(p.suffix == ".json" for p in entries if p.is_file()):
        return folders[0]
    return path


def _common_folder(members: list[str]) -> str:
    """`"folder/"` when every member sits under that one top folder, else `""`."""
    tops = {PurePosixPath(m).parts[0] for m in members if m}
    if len(tops) == 1 and all("/" in m for m in members):
        return f"{tops.pop()}/"
    return ""


def stream_array_file(
    export: ExportFiles, name: str, kind: str, *, start: int = 0, index: int = 0
) -> Iterator[StreamedElement | Quarantined]:
    """The elements of the JSON array in export member `name`, one at a time.

    A malformed, cut-off or unreadable file ends with one `Quarantined` entry naming the
    byte offset and element number (reason prefixed `<kind>:`); every element before the
    damage has been yielded already, so earlier conversations are still staged. With
    `start` (a byte offset where an element begins), reading starts there and element
    numbers count from `index` at that element.
    """
    label = export.label(name)
    try:
        with export.open(name) as fh:
            for element in iter_array(fh, start=start, index=index):
                index = element.index
                yield element
    except JSONStreamError as exc:
        yield Quarantined(
            source_file=label,
            position=f"byte {exc.offset} (conversation #{exc.index})",
            reason=f"{kind}:malformed_json: {exc}; conversations from here to the end "
            "of this file were not read",
        )
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        yield Quarantined(
            source_file=label,
            position=f"after conversation #{index}",
            reason=f"{kind}:unreadable_file: {exc}; the rest of this file was not read",
        )
