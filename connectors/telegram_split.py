"""Find the chats of a Telegram Desktop full export without parsing it, to split the
work by chat across worker processes (see `connectors.telegram.read`)."""

from __future__ import annotations

import io
import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    quotes are escaped. Empty when the file is not laid out that way (then it is read
    whole, walking it)."""
    with export.open(name) as fh:
        try:
            view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return []
        try:
            left = _LEFT_CHATS.search(view)
            left_at = left.start() if left is not None else len(view)
            found: list[ChatSpan] = []
            counts = {"chats": 0, "left_chats": 0}
            for match in _chat_heads(view):
                head = match.group()
                start = head.index(b"{")
                try:
                    header = orjson.loads(head[start:] + b"]}")
                except orjson.JSONDecodeError:
                    return []
                list_name = "chats" if match.start() < left_at else "left_chats"
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
                        match.end() - 1,
                    )
                )
            ends = [span.offset for span in found[1:]] + [len(view)]
        finally:
            view.close()
    if len(found) < 2:
        return []
    return [(span, end - span.offset) for span, end in zip(found, ends, strict=True)]


HEAD_WINDOW = 4096
"""How far before a `"messages"` key its chat's header (name, type, id) may start."""


def _chat_heads(view: mmap.mmap) -> Iterator[re.Match[bytes]]:
    """Matches of `_CHAT_HEAD`, found from each `"messages"` key (a fast byte search)."""
    pos = 0
    while (hit := view.find(b'"messages"', pos)) >= 0:
        pos = hit + 10
        for match in _CHAT_HEAD.finditer(view, max(0, hit - HEAD_WINDOW), hit + 64):
            if match.end() > hit:
                yield match
                break
