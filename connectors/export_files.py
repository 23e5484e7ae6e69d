"""The one reader of exports given as a ZIP, an unpacked folder, or a single file.

Chat exports arrive zipped, unzipped, or as the one JSON file that matters. `ExportFiles`
hides the difference: it lists member names relative to the export's top folder and opens
them as binary streams, so connectors never extract a ZIP to disk.

Every ZIP is listed through `list_zip`, which refuses zip bombs before anything is
decompressed (`InputError`, exit code 3): too many members, a member or a total that
expands past its limit, a member over 1 MiB compressed more than `max_ratio`, or a whole
archive over 16 MiB compressed more than `max_ratio` (many small bombs add up). `zipfile`
never inflates a member past its declared size (a lying header fails its CRC check
instead), so the declared sizes bound what is read. Members that cannot be read as part of
the export are dropped and counted by reason (`ZipListing.dropped`): names that are
absolute or climb out of the archive (`../x.json`, `/etc/x`), and earlier copies of a
name that occurs twice (the last copy wins, as `zipfile` does). Connectors report those
counts as `Skipped` events, so nothing disappears silently. Limits and defaults:
docs/input-limits.md.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

from connectors.json_stream import (
    MAX_ELEMENT_BYTES,
    BadElement,
    JSONStreamError,
    StreamedElement,
    iter_array,
)
from pipeline.core.errors import InputError
from pipeline.core.models import Quarantined, Skipped

MIB = 1 << 20
GIB = 1 << 30
UTF8_FLAG = 0x800
RATIO_MIN_BYTES = MIB
"""Members smaller than this are not ratio-checked one by one (tiny JSON compresses
extremely well); the archive-wide ratio covers them."""
TOTAL_RATIO_MIN_BYTES = 16 * MIB
"""Archives expanding to less than this are not ratio-checked as a whole."""
MAX_JSON_FILE_BYTES = 64 * MIB
"""`read_json` parses a member whole: larger ones (index and user files are KBs) are refused."""


@dataclass(frozen=True)
class Limits:
    """Zip-bomb guards for one export (see the module docstring and docs/input-limits.md).

    `max_member_bytes` and `max_total_bytes` bound the declared uncompressed sizes,
    `max_ratio` the compression ratio of a member over 1 MiB and of the whole archive over
    16 MiB, `max_members` the number of entries. `max_element_bytes` bounds one record
    of a streamed JSON array (a ChatGPT or Claude conversation): it is the per-record
    memory bound of those connectors.
    """

    max_member_bytes: int = 16 * GIB
    max_total_bytes: int = 64 * GIB
    max_ratio: float = 100.0
    max_members: int = 1_000_000
    max_element_bytes: int = MAX_ELEMENT_BYTES


def decode_member_name(info: zipfile.ZipInfo) -> str:
    """The member's real name: UTF-8 if the flag is set or the raw bytes are UTF-8, else cp437."""
    if info.flag_bits & UTF8_FLAG:
        return info.filename
    raw = info.filename.encode("cp437")  # zipfile decoded the raw bytes as cp437: reversible
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return info.filename


@dataclass(frozen=True)
class ZipListing:
    """A checked ZIP: real name -> (`zipfile` name to open it, uncompressed size), and the
    members left out by reason (`unsafe_member_name`, `duplicate_member`)."""

    members: dict[str, tuple[str, int]]
    dropped: dict[str, int]


def list_zip(path: Path, limits: Limits) -> ZipListing:
    """List the files of the ZIP at `path`, refusing archives that are unreadable or look
    like zip bombs (`InputError` naming the file, the member and the option to change)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: not a readable ZIP file ({exc}); download the export again, or unpack "
            "it and pass the folder"
        ) from None
    if len(infos) > limits.max_members:
        raise InputError(
            f"{path}: lists {len(infos)} entries, over the limit of {limits.max_members} "
            "(option max_members); refusing a possible zip bomb"
        )
    members: dict[str, tuple[str, int]] = {}
    dropped: Counter[str] = Counter()
    total = packed = 0
    for info in infos:
        if info.is_dir():
            continue
        name = decode_member_name(info)
        size = info.file_size
        if size > limits.max_member_bytes:
            raise InputError(
                f"{path}: member {name!r} expands to {size} bytes, over the limit of "
                f"{limits.max_member_bytes} (option max_member_bytes); refusing a possible "
                "zip bomb"
            )
        if size >= RATIO_MIN_BYTES and size > limits.max_ratio * max(info.compress_size, 1):
            ratio = size / max(info.compress_size, 1)
            raise InputError(
                f"{path}: member {name!r} has compression ratio {ratio:.0f}:1, over the limit "
                f"of {limits.max_ratio:g}:1 (option max_compression_ratio); refusing a "
                "possible zip bomb"
            )
        total += size
        packed += info.compress_size
        if total > limits.max_total_bytes:
            raise InputError(
                f"{path}: members expand to more than {limits.max_total_bytes} bytes (option "
                "max_total_bytes); refusing a possible zip bomb"
            )
        if not _safe_name(name):
            dropped["unsafe_member_name"] += 1
            continue
        if name in members:
            dropped["duplicate_member"] += 1
        members[name] = (info.filename, size)
    if total >= TOTAL_RATIO_MIN_BYTES and total > limits.max_ratio * max(packed, 1):
        raise InputError(
            f"{path}: members expand to {total} bytes from {packed} compressed (ratio "
            f"{total / max(packed, 1):.0f}:1), over the limit of {limits.max_ratio:g}:1 "
            "(option max_compression_ratio); refusing a possible zip bomb"
        )
    return ZipListing(members, dict(dropped))


def _safe_name(name: str) -> bool:
    """False for names no export holds: absolute, with a drive, or climbing with `..`."""
    if not name or name.startswith("/"):
        return False
    parts = PurePosixPath(name).parts
    return ".." not in parts and not (parts and parts[0].endswith(":"))


def dropped_events(dropped: dict[str, int], kind: str) -> list[Skipped]:
    """`Skipped` counts (reason `<kind>:<why>`) for the members a listing left out."""
    return [Skipped(f"{kind}:{why}", n) for why, n in sorted(dropped.items()) if n]


class ExportFiles:
    """The files of one export. `names` are POSIX paths relative to the export root.

    For a ZIP whose entries all sit in one top folder, and for a folder holding nothing but
    one subfolder (and no JSON file), that inner folder is the root. For a single
    file, the root is the file's folder but only its small JSON siblings are listed (plus the
    file itself), so `user.json` next to a bare `conversations.json` is found. A ZIP is
    checked against `limits` when it is opened (see `list_zip`); `dropped` counts the
    members left out (report them with `dropped_events`).
    """

    def __init__(
        self,
        path: Path,
        *,
        sibling_globs: tuple[str, ...] = ("*.json",),
        limits: Limits | None = None,
    ) -> None:
        self.path = path
        self.limits = limits or Limits()
        self._zip: zipfile.ZipFile | None = None
        self._keys: dict[str, tuple[str, int]] = {}
        self._prefix = ""
        self.single_file: str | None = None
        self.dropped: dict[str, int] = {}
        if path.is_dir():
            self._root = _unwrap_folder(path)
            self.names = sorted(p.name for p in self._root.iterdir() if p.is_file())
        elif path.is_file() and zipfile.is_zipfile(path):
            listing = list_zip(path, self.limits)
            self.dropped = listing.dropped
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise InputError(f"{path}: not a readable ZIP file ({exc})") from None
            self._prefix = _common_folder(list(listing.members))
            cut = len(self._prefix)
            self._keys = {name[cut:]: where for name, where in listing.members.items()}
            self.names = sorted(self._keys)
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
        """Open a member for binary reading (a ZIP member is decompressed as it is read,
        never past its checked size)."""
        if self._zip is not None:
            where = self._keys.get(name)
            if where is None:
                raise OSError(f"no member {name!r} in {self.path}")
            with self._zip.open(where[0]) as fh:
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
        if self._zip is not None:
            where = self._keys.get(name)
            return 0 if where is None else where[1]
        try:
            return (self._root / name).stat().st_size
        except OSError:
            return 0

    def read_json(self, name: str) -> Any:
        """Parse a small member whole; an unreadable one, or one over 64 MiB, is an
        `InputError` naming it."""
        try:
            with self.open(name) as fh:
                data = fh.read(MAX_JSON_FILE_BYTES + 1)
            if len(data) > MAX_JSON_FILE_BYTES:
                raise InputError(
                    f"{self.label(name)}: larger than {MAX_JSON_FILE_BYTES // MIB} MiB, "
                    "too large for this file"
                )
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{self.label(name)}: malformed JSON ({exc})") from None
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
            raise InputError(f"{self.label(name)}: cannot read ({exc})") from None

    def skipped(self, kind: str) -> list[Skipped]:
        """The members this listing left out, as `Skipped` events (`<kind>:<why>`)."""
        return dropped_events(self.dropped, kind)

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

    An element that cannot be used on its own (nested deeper than the parser allows, or
    larger than `limits.max_element_bytes`) becomes one `Quarantined` entry and reading
    goes on after it. A malformed, cut-off or unreadable file ends with one `Quarantined`
    entry naming the byte offset and element number (reason prefixed `<kind>:`); every
    element before the damage has been yielded already, so earlier conversations are still
    staged. With `start` (a byte offset where an element begins), reading starts there and
    element numbers count from `index` at that element.
    """
    label = export.label(name)
    try:
        with export.open(name) as fh:
            elements = iter_array(
                fh, start=start, index=index, max_element=export.limits.max_element_bytes
            )
            for element in elements:
                index = element.index
                if isinstance(element.value, BadElement):
                    yield Quarantined(
                        source_file=label,
                        position=f"byte {element.offset} (conversation #{element.index})",
                        reason=f"{kind}:unusable_conversation: {element.value.reason}; "
                        "this conversation was not read",
                    )
                    continue
                yield element
    except JSONStreamError as exc:
        yield Quarantined(
            source_file=label,
            position=f"byte {exc.offset} (conversation #{exc.index})",
            reason=f"{kind}:malformed_json: {exc}; conversations from here to the end "
            "of this file were not read",
        )
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        yield Quarantined(
            source_file=label,
            position=f"after conversation #{index}",
            reason=f"{kind}:unreadable_file: {exc}; the rest of this file was not read",
        )
