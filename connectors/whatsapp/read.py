"""WhatsApp chat export -> staged messages (`kind: whatsapp`; see docs/whatsapp.md).

Input: one chat text file (`_chat.txt` from iOS, `WhatsApp Chat with X.txt` from Android,
or a localized name), the ZIP WhatsApp shares, or a folder holding one or more chat files;
read through `ExportFiles`, never extracted. Each file is read twice, streamed: first its
header dates only (to decide the day/month order for the whole file), then its messages.

Contract: staged rows come as `MessageTable` events (and, for a large chat file read
with a parts folder, one `StagedPart` that a helper process wrote for the file's
second half: see `_split_point`); lines that are not messages are
`Skipped` under `whatsapp:<reason>`; a header whose date or time is impossible (and text
before the first header) is `Quarantined` with its line; read == staged + skipped +
quarantined, one record per message header. Invalid UTF-8 becomes U+FFFD (noted as
`invalid_utf8` in metadata), never an error.

Message ids: the export has none, so `whatsapp:` + `stable_id(chat, author id, local minute,
n)` where n counts the author's earlier lines in that minute (skipped lines included).
Text is not part of the id: a re-export with media attached instead of omitted, in
another language, or with an edited message keeps every id; a longer re-export of the
same chat repeats the ids of the messages both share and adds only its new tail.
"""

from __future__ import annotations

import codecs
import re
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

from connectors.export_files import ExportFiles
from connectors.row_buffer import RowBuffer
from connectors.whatsapp.lines import Clock, Order, detect_family
from connectors.whatsapp.options import Options
from connectors.whatsapp.stage import ChatFile
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import Event, MessageTable, Quarantined, Skipped, StagedPart
from pipeline.core.process_start import main_module_hidden
from pipeline.core.staging import PartWriter, part_path

__all__ = ["Options", "looks_like", "read", "WRITES_PARTS"]

WRITES_PARTS = True
"""`read` takes `parts_dir=` (see connectors/base.py)."""
SNIFF_BYTES = 64 * 1024
PARALLEL_MIN_BYTES = 16 << 20
"""A chat file at least this large is staged in two halves, the second by a helper
process, when `read` is given a parts folder."""
SPLIT_WINDOW_BYTES = 4 << 20
"""How far past the middle of a file a line where the date changes is looked for."""
CHAT_FILE_PREFIXES = (
    "WhatsApp Chat with ",
    "WhatsApp Chat - ",
    "WhatsApp Chat mit ",
    "WhatsApp-Chat mit ",
    "Chat de WhatsApp con ",
    "Discussion WhatsApp avec ",
    "Conversa do WhatsApp com ",
    "Chat WhatsApp con ",
    "WhatsApp-chat met ",
)
"""Beginnings of the file names WhatsApp gives exports; the rest is the chat's name."""
_COPY_SUFFIX = re.compile(r"(?: \(\d+\)|-\d+)$")


def looks_like(path: Path) -> bool:
    """True when `path` is a WhatsApp chat export (a chat file, or a ZIP or folder with
    one). Reads at most ~64 KB per candidate file; never raises."""
    try:
        with ExportFiles(path, sibling_globs=()) as export:
            return bool(_chat_files(export, limit=1))
    except (OSError, InputError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError):
        return False
    except (EOFError, zlib.error, RuntimeError, NotImplementedError, UnicodeError):
        return False


def read(path: Path, options: Options, parts_dir: Path | None = None) -> Iterator[Event]:
    """Yield events for every message line of every chat file in the export at `path`."""
    if options.memory_owner != "author" and not options.user_id:
        raise ConfigError(
            f"whatsapp source: memory_owner {options.memory_owner!r} needs a user_id (set "
            "`user_id:` on the source or at the top of the config, or pass --user-id)"
        )
    with ExportFiles(path, sibling_globs=()) as export:
        chats = _chat_files(export)
        if not chats:
            what = export.single_file or "no chat file (_chat.txt or 'WhatsApp Chat with X.txt')"
            raise InputError(
                f"{path}: not a WhatsApp chat export ({what} does not start with a "
                "WhatsApp message line such as '31/12/2020, 22:15 - Name: text' or "
                "'[31/12/2020, 22:15:30] Name: text')"
                if export.single_file
                else f"{path}: not a WhatsApp chat export ({what} found)"
            )
        if options.chat_name is not None and len(chats) > 1:
            raise ConfigError(
                f"{path}: option chat_name names one chat, but the export holds "
                f"{len(chats)} chat files; remove chat_name"
            )
        rows = RowBuffer()
        parts = 0
        for name, family in chats:
            chat = ChatFile(
                export, name, family, options.chat_name or chat_name_of(export, name), options
            )
            chat.decide(_head(export, name))
            split = None
            if parts_dir is not None:
                split = _split_point(chat, export.size(name))
            if parts_dir is None or split is None:
                yield from chat.stage(rows)
                continue
            offset, line = split
            yield from _in_two(chat, rows, offset, line, part_path(parts_dir, parts))
            parts += 1
        table = rows.take()
        if table is not None:
            yield table


def _chat_files(export: ExportFiles, limit: int | None = None) -> list[tuple[str, str]]:
    """(member name, header family) of the chat files of an export, in name order."""
    if export.single_file is not None:
        candidates = [export.single_file]
    else:
        candidates = [n for n in export.names if "/" not in n and n.lower().endswith(".txt")]
    found: list[tuple[str, str]] = []
    for name in candidates:
        family = _sniff(export, name)
        if family is not None:
            found.append((name, family))
            if limit is not None and len(found) >= limit:
                break
    return found


def _head(export: ExportFiles, name: str) -> str:
    """The first ~64 KB of a member, decoded leniently ("" when unreadable)."""
    try:
        with export.open(name) as fh:
            data = fh.read(SNIFF_BYTES)
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError):
        return ""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return ""
    return data.decode("utf-8", "replace")


def _sniff(export: ExportFiles, name: str) -> str | None:
    return detect_family(_head(export, name))


def chat_name_of(export: ExportFiles, name: str) -> str:
    """The chat's name from its file name (`WhatsApp Chat with Ann.txt` -> `Ann`), or for
    `_chat.txt` from the ZIP's or folder's name (`WhatsApp Chat - Ann.zip` -> `Ann`);
    copy suffixes such as ` (1)` are dropped, so a re-download keeps its ids."""
    stem = PurePosixPath(name).stem
    if stem.lstrip("_").lower() in ("chat", ""):
        holder = export.path
        stem = holder.stem if holder.is_file() else holder.name
        if export.single_file is not None:
            stem = holder.parent.name or stem
    for prefix in CHAT_FILE_PREFIXES:
        if stem.startswith(prefix):
            stem = stem[len(prefix) :]
            break
    stem = _COPY_SUFFIX.sub("", stem).strip()
    return stem or "chat"


def _split_point(chat: ChatFile, size: int) -> tuple[int, int] | None:
    """(byte offset, line number) of a header line just past the middle of a large chat
    file where the date changes from the header line before it (and, in session mode, the
    pause exceeds the session gap), so that no minute, day or session spans both halves;
    None for small files or when no such line is near the middle."""
    if size < PARALLEL_MIN_BYTES:
        return None
    pattern = chat.pattern
    clock = Clock(chat.order, "UTC")
    gap = chat.options.session_gap_minutes * 60_000_000
    middle = size // 2
    with chat.export.open(chat.name) as fh:
        fh.seek(middle)
        window = fh.read(SPLIT_WINDOW_BYTES)
        pos = window.find(b"\n") + 1
        previous: tuple[str, int] | None = None
        while 0 < pos < len(window):
            end = window.find(b"\n", pos)
            if end < 0:
                break
            found = pattern.match(window[pos:end].decode("utf-8", "replace"))
            if found is not None:
                day, tod = clock.day(found.group(1)), clock.time(found.group(2))
                if isinstance(day, str) or isinstance(tod, str):
                    return None
                moment = (found.group(1), day[0] + tod[0])
                if (
                    previous is not None
                    and moment[0] != previous[0]
                    and (chat.options.conversation != "session" or moment[1] - previous[1] > gap)
                ):
                    offset = middle + pos
                    fh.seek(0)
                    lines = 1
                    left = offset
                    while left > 0:
                        data = fh.read(min(left, 1 << 22))
                        if not data:
                            return None
                        lines += data.count(b"\n")
                        left -= len(data)
                    return offset, lines
                previous = moment
            pos = end + 1
    return None


def _in_two(chat: ChatFile, rows: RowBuffer, offset: int, line: int, part: Path) -> Iterator[Event]:
    """Stage bytes [0, offset) here while a helper process stages the rest into `part`."""
    context = get_context("spawn")
    with main_module_hidden(), ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(
            stage_part,
            chat.export.path,
            chat.name,
            chat.family,
            chat.chat,
            chat.options,
            chat.order,
            chat.chat_voices,
            offset,
            line,
            str(part),
        )
        yield from chat.stage(rows, 0, offset, 1)
        staged, quarantined, skipped = future.result()
    yield from quarantined
    if staged is not None:
        yield staged
    for reason, count in sorted(skipped.items()):
        yield Skipped(reason, count)


def stage_part(
    path: Path,
    name: str,
    family: str,
    chat_name: str,
    options: Options,
    order: Order,
    chat_voices: frozenset[str],
    start: int,
    first_line: int,
    part: str,
) -> tuple[StagedPart | None, list[Quarantined], dict[str, int]]:
    """Helper process: stage a chat file from byte `start` (a header line numbered
    `first_line`) to its end into the Parquet part `part`."""
    writer = PartWriter(Path(part))
    quarantined: list[Quarantined] = []
    skipped: dict[str, int] = {}
    rows = RowBuffer()
    with ExportFiles(path, sibling_globs=()) as export:
        chat = ChatFile(export, name, family, chat_name, options, order, chat_voices)
        for event in chat.stage(rows, start, None, first_line):
            if isinstance(event, MessageTable):
                for batch in event.table.to_batches():
                    writer.add(batch)
            elif isinstance(event, Skipped):
                skipped[event.reason] = skipped.get(event.reason, 0) + event.count
            elif isinstance(event, Quarantined):
                quarantined.append(event)
    rest = rows.take()
    if rest is not None:
        for batch in rest.table.to_batches():
            writer.add(batch)
    return writer.close(), quarantined, skipped
