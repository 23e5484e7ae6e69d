"""Find the chats of a Telegram Desktop full export without parsing it, to split the
work by chat across worker processes (see `connectors.telegram.read`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO, Any

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
    with export.open(name) as fh:
        heads, left_at, size = _scan(fh)
    found: list[ChatSpan] = []
    counts = {"chats": 0, "left_chats": 0}
    for start, end, head in heads:
        try:
            header = orjson.loads(head[head.index(b"{") :] + b"]}")
        except orjson.JSONDecodeError:
            return []
        list_name = "chats" if left_at is None or start < left_at else "left_chats"
        index = counts[list_name]
        counts[list_name] += 1
        if list_name == "left_chats" and not include_left:
            continue
        found.append(
            ChatSpan(
                name,
                list_name,
                index,
                header.get("name"),
                header.get("type"),
                header.get("id"),
                end - 1,
            )
        )
    if len(found) < 2:
        return []
    ends = [span.offset for span in found[1:]] + [size]
    return [(span, end - span.offset) for span, end in zip(found, ends, strict=True)]


HEAD_WINDOW = 4096
"""How far before a `"messages"` key its chat's header (name, type, id) may start."""
SCAN_CHUNK = 8 << 20
_KEY = b'"messages"'


def _scan(fh: IO[bytes]) -> tuple[list[tuple[int, int, bytes]], int | None, int]:
    """(start, end, bytes) of each chat header, the offset of `"left_chats"`, file size.

    Each `"messages"` key (a fast byte search) is checked against `_CHAT_HEAD` in the
    `HEAD_WINDOW` bytes before it; a chunk keeps that much of the previous one.
    """
    heads: list[tuple[int, int, bytes]] = []
    left_at: int | None = None
    data, base, searched = b"", 0, 0
    while True:
        block = fh.read(SCAN_CHUNK)
        data += block
        if left_at is None and (left := _LEFT_CHATS.search(data)) is not None:
            left_at = base + left.start()
        pos = searched - base
        while (hit := data.find(_KEY, pos)) >= 0:
            if block and hit + 64 > len(data):
                break  # the header's end may be in the next chunk
            pos = hit + len(_KEY)
            for match in _CHAT_HEAD.finditer(data, max(0, hit - HEAD_WINDOW), hit + 64):
                if match.end() > hit:
                    heads.append((base + match.start(), base + match.end(), match.group()))
                    break
        else:
            pos = max(pos, len(data) - len(_KEY))
        if not block:
            return heads, left_at, base + len(data)
        searched = base + min(pos, len(data))
        cut = max(0, min(len(data) - HEAD_WINDOW - 64, searched - base - HEAD_WINDOW))
        data, base = data[cut:], base + cut
