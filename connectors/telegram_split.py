"""Find the chats of a Telegram Desktop full export without parsing it, to split the
work by chat across worker processes (see `connectors.telegram.read`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import orjson

from connectors.export_files import ExportFiles


@dataclass(frozen=True)
class ChatSpan:
    """Where one chat of a full export's `result.json` has its messages."""

    file: str
    list_name: str
    index: int
    name: Any
    type: Any
    id: Any
    offset: int
    """Byte offset of the `[` of the chat's `messages`."""


_CHAT_HEAD = re.compile(
    rb'[\[,]\s*\{\s*(?:"name":\s*(?:"(?:[^"\\]|\\.)*"|null),\s*)?"type":\s*"[a-z_]*",'
    rb'\s*"id":\s*-?[0-9]+,\s*"messages":\s*\['
)
_LEFT_CHATS = re.compile(rb'"left_chats":\s*\{')


def chat_spans(
    export: ExportFiles, name: str, include_left: bool = True
) -> list[tuple[ChatSpan, int]]:
    """The chats of a full export's `result.json`, each with its size in bytes, found by
    a byte scan for the chat header Telegram Desktop writes (`{"name": ..., "type": ...,
    "id": ..., "messages": [`) — the exact bytes cannot occur inside a JSON string, whose
    quotes are escaped. The file is read in chunks (a memory map would count the whole
    file as resident memory). Empty when the file is not laid out that way, or has fewer
    than two chats: then it is read whole, walking it."""
    scan = SpanScan(name, include_left)
    with export.open(name) as fh:
        for _ in scan.provisional(fh):
            pass
    return scan.final()


class SpanScan:
    """One scan of a `result.json` for its chats, usable while it runs.

    `provisional(fh)` yields each chat with its size as soon as the next chat's header
    (or the end of the file) is found, so work on the first chats can start while the
    scan goes on. `final()`, after the scan, is the answer `chat_spans` gives; a caller
    that acted on provisional chats compares the two and redoes its work if they differ
    (a header that does not parse, fewer than two chats, `left_chats` found late).
    """

    def __init__(self, name: str, include_left: bool) -> None:
        self.name = name
        self.include_left = include_left
        self.heads: list[tuple[int, int, bytes]] = []
        self.left_at: int | None = None
        self.size = 0

    def provisional(self, fh: IO[bytes]) -> Iterator[tuple[ChatSpan, int]]:
        counts = {"chats": 0, "left_chats": 0}
        held: ChatSpan | None = None
        broken = False
        for start, end, head in _scan(fh, self):
            self.heads.append((start, end, head))
            span = None if broken else self._span(start, end, head, counts)
            if span is False:
                broken = True
            if span is None or span is False:
                continue
            if held is not None:
                yield held, span.offset - held.offset
            held = span
        if held is not None and not broken:
            yield held, self.size - held.offset

    def _span(
        self, start: int, end: int, head: bytes, counts: dict[str, int]
    ) -> ChatSpan | None | Literal[False]:
        """The chat of one header; None for a left chat not read; False if unreadable."""
        try:
            header = orjson.loads(head[head.index(b"{") :] + b"]}")
        except orjson.JSONDecodeError:
            return False
        list_name = "chats" if self.left_at is None or start < self.left_at else "left_chats"
        index = counts[list_name]
        counts[list_name] += 1
        if list_name == "left_chats" and not self.include_left:
            return None
        return ChatSpan(
            self.name,
            list_name,
            index,
            header.get("name"),
            header.get("type"),
            header.get("id"),
            end - 1,
        )

    def final(self) -> list[tuple[ChatSpan, int]]:
        found: list[ChatSpan] = []
        counts = {"chats": 0, "left_chats": 0}
        for start, end, head in self.heads:
            span = self._span(start, end, head, counts)
            if span is False:
                return []
            if span is not None:
                found.append(span)
        if len(found) < 2:
            return []
        ends = [span.offset for span in found[1:]] + [self.size]
        return [(span, end - span.offset) for span, end in zip(found, ends, strict=True)]


HEAD_WINDOW = 4096
"""How far before a `"messages"` key its chat's header (name, type, id) may start."""
SCAN_CHUNK = 8 << 20
_KEY = b'"messages"'


def _scan(fh: IO[bytes], scan: SpanScan) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, bytes) of each chat header, as found; sets `scan.left_at` (the offset
    of `"left_chats"`) when found and `scan.size` (the file's size) at the end.

    Each `"messages"` key (a fast byte search) is checked against `_CHAT_HEAD` in the
    `HEAD_WINDOW` bytes before it; a chunk keeps that much of the previous one.
    """
    data, base, searched = b"", 0, 0
    while True:
        block = fh.read(SCAN_CHUNK)
        data += block
        if scan.left_at is None and (left := _LEFT_CHATS.search(data)) is not None:
            scan.left_at = base + left.start()
        pos = searched - base
        while (hit := data.find(_KEY, pos)) >= 0:
            if block and hit + 64 > len(data):
                break  # the header's end may be in the next chunk
            pos = hit + len(_KEY)
            for match in _CHAT_HEAD.finditer(data, max(0, hit - HEAD_WINDOW), hit + 64):
                if match.end() > hit:
                    yield base + match.start(), base + match.end(), match.group()
                    break
        else:
            pos = max(pos, len(data) - len(_KEY))
        if not block:
            scan.size = base + len(data)
            return
        searched = base + min(pos, len(data))
        cut = max(0, min(len(data) - HEAD_WINDOW - 64, searched - base - HEAD_WINDOW))
        data, base = data[cut:], base + cut
