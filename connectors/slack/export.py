"""Raw access to a Slack export: a ZIP read in place or an extracted folder.

`open_export` lists the export's files under their real names through the one ZIP reader,
`connectors.export_files.list_zip` (ZIP names written as UTF-8 without the UTF-8 flag are
decoded as UTF-8, falling back to cp437), which refuses zip bombs before anything is
decompressed and counts the members it leaves out. The listing is a plain picklable
`ExportListing`, so worker processes reopen the export themselves; `FileReader` reads
whole files from it, reading folder files ahead. `discover` maps the
listing to conversations: index files, Enterprise Grid `teams/<workspace>/` exports, and
one work unit per conversation with its day files in name order.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from connectors.export_files import Limits, list_zip
from pipeline.core.errors import InputError

DAY_FILE = re.compile(r"\d{4}-\d{2}-\d{2}\.json")
INDEX_FILES = frozenset(
    {"channels.json", "groups.json", "mpims.json", "dms.json", "users.json", "org_users.json"}
)
NOT_CONVERSATIONS = frozenset({"__uploads", "__MACOSX"})
READ_AHEAD_FILES = 16
"""Folder files opened ahead of the one being read, for the kernel to read in the
background (~300 KB of typical day files)."""


@dataclass(frozen=True)
class ExportListing:
    """The files of an export: display name -> (key to open it, uncompressed size).

    For a ZIP the key is the member name as `zipfile` knows it and the size comes from
    the central directory; for a folder the key is the file path and the size is -1 (not
    looked up: stat'ing every day file costs more than it tells). Picklable, so worker
    processes reopen the export themselves. `dropped` counts the ZIP members left out
    (see `connectors.export_files.list_zip`).
    """

    path: Path
    is_zip: bool
    files: dict[str, tuple[str, int]]
    dropped: dict[str, int] = field(default_factory=dict)

    def label(self) -> str:
        """How errors name this export."""
        return str(self.path)


def open_export(path: Path, limits: Limits) -> ExportListing:
    """List an export's files, refusing unreadable archives and zip bombs (`InputError`)."""
    if path.is_dir():
        return _list_folder(path)
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a ZIP file or folder; give a Slack export ZIP or its folder")
    listing = list_zip(path, limits)
    return ExportListing(path=path, is_zip=True, files=listing.members, dropped=listing.dropped)


def _list_folder(root: Path) -> ExportListing:
    """Every file under `root` by relative POSIX name (size -1: not needed, not stat'ed)."""
    files: dict[str, tuple[str, int]] = {}
    stack = [(str(root), "")]
    while stack:
        path, prefix = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            raise InputError(f"{path}: cannot list folder ({exc.strerror or exc})") from None
        for entry in entries:
            if entry.is_dir():
                stack.append((entry.path, prefix + entry.name + "/"))
            else:
                files[prefix + entry.name] = (entry.path, -1)
    return ExportListing(path=root, is_zip=False, files=files)


class FileReader:
    """Reads whole files of one export; keeps the ZIP open between reads. Close when done.

    Folder files announced with `expect` are read ahead: the next `READ_AHEAD_FILES` are
    opened and handed to the kernel (`POSIX_FADV_WILLNEED`), so on a cold page cache
    the disk reads them while earlier files are processed instead of one at a time.
    """

    def __init__(self, export: ExportListing):
        self.export = export
        self._zip: zipfile.ZipFile | None = None
        self._ahead: deque[tuple[str, int]] = deque()
        """(key, descriptor) of files opened ahead, in the announced order."""
        self._upcoming: Iterator[str] = iter(())

    def read(self, name: str) -> bytes:
        """The bytes of file `name` (a display name from `ExportListing.files`); raises OSError."""
        return self.read_key(self.export.files[name][0])

    def expect(self, keys: Iterable[str]) -> None:
        """Announce the files (keys) about to be read, in order (replaces earlier ones).

        Reading them in another order, or others, still works: without read-ahead.
        """
        self._drop_ahead()
        if not self.export.is_zip and hasattr(os, "posix_fadvise"):
            self._upcoming = iter(keys)
            self._top_up()

    def read_key(self, key: str, limit: int | None = None) -> bytes:
        """The bytes of the file with this key (member name or path); raises OSError.

        A folder file larger than `limit` is refused before it is read (ZIP members were
        checked against the limits when the export was opened).
        """
        if not self.export.is_zip:
            fd = self._opened_ahead(key)
            if fd is None:
                fd = os.open(key, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if limit is not None and size > limit:
                    raise OSError(f"{size} bytes, over max_member_bytes ({limit})")
                chunks = [os.read(fd, size + 1)]
                while len(chunks[-1]) > size:  # the file grew while we read it
                    chunks.append(os.read(fd, 1 << 20))
                    if not chunks[-1]:
                        break
                return b"".join(chunks) if len(chunks) > 1 else chunks[0]
            finally:
                os.close(fd)
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.export.path)
        try:
            with self._zip.open(key) as fh:
                return fh.read()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, zlib.error) as exc:
            raise OSError(f"cannot decompress: {exc}") from None
        except NotImplementedError as exc:  # unsupported compression method
            raise OSError(str(exc)) from None

    def _opened_ahead(self, key: str) -> int | None:
        """The descriptor opened ahead for `key` (earlier unread ones are closed)."""
        ahead = self._ahead
        if not ahead or (ahead[0][0] != key and all(k != key for k, _ in ahead)):
            return None
        while True:
            k, fd = ahead.popleft()
            if k == key:
                self._top_up()
                return fd
            os.close(fd)

    def _top_up(self) -> None:
        while len(self._ahead) < READ_AHEAD_FILES:
            key = next(self._upcoming, None)
            if key is None:
                return
            try:
                fd = os.open(key, os.O_RDONLY)
            except OSError:
                continue  # reported by `read_key` when its turn comes
            with contextlib.suppress(OSError):  # advice only
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            self._ahead.append((key, fd))

    def _drop_ahead(self) -> None:
        while self._ahead:
            os.close(self._ahead.popleft()[1])
        self._upcoming = iter(())

    def close(self) -> None:
        """Release the ZIP handle and any files opened ahead."""
        self._drop_ahead()
        if self._zip is not None:
            self._zip.close()
            self._zip = None


@dataclass
class Folder:
    """One conversation folder of one export root."""

    root: str
    name: str
    day_files: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """Where things are: export roots (the main one, then Grid workspaces) and folders."""

    roots: list[str]
    folders: list[Folder]
    stray_day_files: int = 0
    """Day files (`YYYY-MM-DD.json`) outside every conversation folder: not read, counted."""


def _by_folder(names: Iterable[str]) -> dict[str, list[str]]:
    """Sorted file names grouped by their folder ("" for top-level files), in name order."""
    folders: dict[str, list[str]] = {}
    for name in sorted(names):
        head, _, base = name.rpartition("/")
        files = folders.get(head)
        if files is None:
            files = folders[head] = []
        files.append(base)
    return folders


def find_root(folders: dict[str, list[str]]) -> str:
    """The prefix of the main export root: where the shallowest index file sits.

    `folders` is `_by_folder` of the export's names. Without index files, a single
    wrapping directory holding `<dir>/<folder>/<day>.json` files is stripped; otherwise
    the root is the top of the archive.
    """
    best: tuple[int, str, str] | None = None  # (depth, first index file name, prefix)
    for head, bases in folders.items():
        if INDEX_FILES.isdisjoint(bases) or "teams" in head.split("/"):
            continue
        prefix = head + "/" if head else ""
        first = min(b for b in bases if b in INDEX_FILES)
        candidate = (prefix.count("/"), prefix + first, prefix)
        if best is None or candidate < best:
            best = candidate
    if best is not None:
        return best[2]
    tops = {head.split("/", 1)[0] for head in folders if head}
    if (
        len(tops) == 1
        and "" not in folders
        and any(
            head.count("/") == 1 and any(DAY_FILE.fullmatch(b) for b in bases)
            for head, bases in folders.items()
        )
    ):
        return next(iter(tops)) + "/"
    return ""


def discover(names: Iterable[str]) -> Layout:
    """Split an export's file names into roots and conversation folders (pure).

    Works folder by folder: only the day-file test looks at each file name.
    """
    by_folder = _by_folder(names)
    root = find_root(by_folder)
    teams = root + "teams/"
    team_roots = sorted(
        {
            teams + path[len(teams) :].split("/", 1)[0] + "/"
            for head in by_folder
            if (path := head + "/").startswith(teams) and len(path) > len(teams)
        }
    )
    roots = [root, *team_roots]
    nested = sorted(team_roots, key=len, reverse=True)
    folders: dict[tuple[str, str], Folder] = {}
    stray = 0
    for head, bases in by_folder.items():
        path = head + "/"
        owner = next((r for r in nested if path.startswith(r)), root)
        parent, _, folder_name = head.rpartition("/")
        if (
            not head
            or (parent + "/" if parent else "") != owner
            or folder_name in NOT_CONVERSATIONS
        ):
            if folder_name not in NOT_CONVERSATIONS:
                stray += sum(1 for b in bases if DAY_FILE.fullmatch(b) is not None)
            continue
        folder = Folder(owner, folder_name)
        teams_folder = owner == root and folder_name == "teams"
        for base in bases:
            if DAY_FILE.fullmatch(base) is not None:
                folder.day_files.append(path + base)
            elif not teams_folder:
                folder.other_files.append(path + base)
        if folder.day_files or folder.other_files:
            folders[(owner, folder_name)] = folder
    return Layout(roots=roots, folders=[folders[k] for k in sorted(folders)], stray_day_files=stray)
