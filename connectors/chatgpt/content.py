"""ChatGPT message nodes -> visible text: which nodes are shown, and how their parts render.

Pure functions of one node (plus the export's asset names), so the connector, its helper
process and the tests share them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

_OLD_CITE = re.compile("\\d+(?::\\d+)?†[^】\n]{0,200}")  # inside 【12†source】 (2023 browsing)
_PUNCT_AFTER = frozenset(".,;:!?)]")
_PUA_MARKS = tuple(chr(c) for c in range(0xE200, 0xE210))
_CONTEXT_TYPES = frozenset({"user_editable_context", "model_editable_context"})
_TOOL_INTERNAL_TYPES = frozenset(
    {
        "tether_browsing_display",
        "tether_browsing_code",
        "sonic_webpage",
        "system_error",
        "computer_output",
    }
)
_INTERNAL_CHANNELS = frozenset({"commentary", "analysis"})


Shaped = tuple[str, str, dict[str, Any], str | None, str | None]
"""role, text, extra metadata, model slug, author name."""


def shape(
    msg: dict[str, Any], include_tool_messages: bool, asset_names: dict[str, str]
) -> Shaped | str:
    """(role, text, metadata, model, author name) of a visible message, or the reason it
    is skipped."""
    author = msg.get("author")
    role = author.get("role") if isinstance(author, dict) else None
    content = msg.get("content")
    if not isinstance(content, dict):
        content = {}
    ctype = content.get("content_type")
    if not isinstance(ctype, str):
        ctype = None
    meta = msg.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    if ctype in _CONTEXT_TYPES or meta.get("is_user_system_message"):
        return "chatgpt:user_context"
    if role == "system":
        return "chatgpt:hidden_system"
    if meta.get("is_visually_hidden_from_conversation"):
        return "chatgpt:visually_hidden"
    if ctype == "thoughts":
        return "chatgpt:thoughts"
    if ctype == "reasoning_recap":
        return "chatgpt:reasoning_recap"
    channel = msg.get("channel")
    if isinstance(channel, str) and channel in _INTERNAL_CHANNELS:
        return "chatgpt:internal_channel"
    recipient = msg.get("recipient")
    tool_output = role in ("tool", "function")
    tool_call = role == "assistant" and recipient not in (None, "all")
    if tool_output or tool_call or ctype in _TOOL_INTERNAL_TYPES:
        if not include_tool_messages:
            return "chatgpt:tool_call" if role == "assistant" else "chatgpt:tool_output"
    elif role not in ("user", "assistant"):
        return "chatgpt:unknown_role"
    text, extra = _content(content, meta, asset_names)
    if not text:
        return "chatgpt:empty"
    if isinstance(ctype, str) and ctype != "text":
        extra["content_type"] = ctype
    if tool_call:
        extra["recipient"] = recipient
    model = meta.get("model_slug")
    name = author.get("name") if isinstance(author, dict) else None
    return (
        "tool" if tool_output or role not in ("user", "assistant") else str(role),
        text,
        extra,
        model if model.__class__ is str else None,
        name if name.__class__ is str and name else None,
    )


def _content(
    content: dict[str, Any], meta: dict[str, Any], asset_names: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """Visible text (citation markers stripped) and asset metadata of one message.

    Text is taken from string parts and from parts with a `text` (voice transcripts),
    else from `text`, `result` or string `content` (code, execution output, tool results).
    A message with assets but no text gets a short placeholder such as `[image: a.png]`.
    """
    extra: dict[str, Any] = {}
    parts = content.get("parts")
    if (
        parts.__class__ is list
        and len(parts) == 1
        and parts[0].__class__ is str
        and not meta.get("attachments")
    ):
        text = parts[0]  # the common case: one plain text part, no attachments
        if not text.isascii():
            text = strip_citations(text)
        return ("" if not text or text.isspace() else text), extra
    texts: list[str] = []
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                _part(part, texts, extra, asset_names)
    else:
        for key in ("text", "result", "content"):
            value = content.get(key)
            if isinstance(value, str):
                texts.append(value)
                break
    if isinstance(content.get("language"), str) and content.get("language") != "unknown":
        extra["language"] = content["language"]
    attachments = meta.get("attachments")
    if isinstance(attachments, list) and attachments:
        extra["attachments"] = [
            _attachment(a, asset_names) for a in attachments if isinstance(a, dict)
        ]
    text = "\n".join(t for t in texts if t)
    if text:
        text = strip_citations(text)
    if not text or text.isspace():
        text = _placeholder(extra)
    return text, extra


def strip_citations(text: str) -> str:
    """Remove ChatGPT citation markers: private-use spans like `\ue200cite…\ue201`, stray
    private-use marks (`\ue203`, `\ue204`, `\ue206`...) and old `【12†source】` markers.

    The space before a removed marker goes too when punctuation or a space follows it.
    """
    if text.isascii():
        return text
    start = text.find("\ue200")
    if start >= 0:
        text = _cut_spans(text, "\ue200", "\ue201", None, start)
        if text.isascii():  # cutting usually removed the only non-ASCII characters
            return text
    start = text.find("【")
    if start >= 0:
        text = _cut_spans(text, "【", "】", _OLD_CITE, start)
        if text.isascii():
            return text
    for mark in _PUA_MARKS:
        if mark in text:
            text = text.replace(mark, "")
    return text


def _cut_spans(
    text: str, opening: str, closing: str, inner: re.Pattern[str] | None, start: int
) -> str:
    """`text` without the `opening`…`closing` spans (whose inside matches `inner`), the
    first of which opens at `start`."""
    out: list[str] = []
    done = 0
    while start >= 0:
        end = text.find(closing, start + 1)
        if end < 0:
            break
        if inner is not None and not inner.fullmatch(text, start + 1, end):
            start = text.find(opening, start + 1)
            continue
        left = text[done:start]
        after = text[end + 1 : end + 2]
        if not after or after.isspace() or after in _PUNCT_AFTER:
            left = left.rstrip(" \t")
        out.append(left)
        done = end + 1
        start = text.find(opening, done)
    out.append(text[done:])
    return "".join(out)


def _part(
    part: dict[str, Any], texts: list[str], extra: dict[str, Any], asset_names: dict[str, str]
) -> None:
    ptype = part.get("content_type")
    if isinstance(part.get("text"), str):
        texts.append(part["text"])
        if ptype == "audio_transcription":
            extra["voice_transcript"] = True
        return
    if ptype == "real_time_user_audio_video_asset_pointer":
        audio = part.get("audio_asset_pointer")
        if isinstance(audio, dict):
            extra.setdefault("audio", []).append(_asset(audio, asset_names))
        frames = part.get("frames_asset_pointers")
        if isinstance(frames, list) and frames:
            extra["video_frames"] = len(frames)
        return
    if isinstance(part.get("asset_pointer"), str):
        kind = (
            "images"
            if ptype == "image_asset_pointer"
            else "audio"
            if ptype == "audio_asset_pointer"
            else "files"
        )
        extra.setdefault(kind, []).append(_asset(part, asset_names))


def _file_id(pointer: str) -> str:
    return pointer.split("://", 1)[-1]


def _asset(part: dict[str, Any], asset_names: dict[str, str]) -> dict[str, Any]:
    pointer = str(part["asset_pointer"])
    out: dict[str, Any] = {"asset_pointer": pointer}
    name = asset_names.get(_file_id(pointer))
    if name is not None:
        out["name"] = name
    for key in ("size_bytes", "width", "height", "format"):
        if isinstance(part.get(key), (int, str)):
            out[key] = part[key]
    dalle = (
        (part.get("metadata") or {}).get("dalle")
        if isinstance(part.get("metadata"), dict)
        else None
    )
    if isinstance(dalle, dict) and isinstance(dalle.get("prompt"), str):
        out["dalle_prompt"] = dalle["prompt"]
    return out


def _attachment(att: dict[str, Any], asset_names: dict[str, str]) -> dict[str, Any]:
    out = {
        k: att[k] for k in ("id", "name", "mime_type", "size") if isinstance(att.get(k), (str, int))
    }
    if "name" not in out and isinstance(att.get("id"), str) and att["id"] in asset_names:
        out["name"] = asset_names[att["id"]]
    return out


def _placeholder(extra: dict[str, Any]) -> str:
    """`[image: a.png]`-style text for a message that only carries assets."""
    labels: list[str] = []
    for kind, label in (
        ("images", "image"),
        ("audio", "audio"),
        ("files", "file"),
        ("attachments", "file"),
    ):
        for item in extra.get(kind, []):
            name = item.get("name")
            labels.append(f"[{label}: {name}]" if name else f"[{label}]")
    return " ".join(labels)
