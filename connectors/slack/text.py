"""Slack message text -> readable plain text (pure functions).

`render_mrkdwn` tokenises `<…>` and decodes exactly the three entities Slack escapes
(`&amp; &lt; &gt;`) between tokens, so a decoded `&lt;` is never mistaken for a token.
Mentions become display names, channel links `#name`, special mentions `@here`, links
`label (url)`. `fallback_content` rebuilds the content of a message whose `text` is empty
from rich-text blocks, attachments and files. Export tokens (`xox…-`) never survive:
token query parameters are cut from URLs and any remaining token is redacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TOKEN_PARAM = re.compile(r"([?&])(?:t|token)=xox[a-z]*-[^&#\s]*")
_TOKEN = re.compile(r"xox[a-z]*-[A-Za-z0-9-]+")
SPECIAL_MENTIONS = frozenset({"here", "channel", "everyone"})
SLACKBOT = "USLACKBOT"


def decode_entities(text: str) -> str:
    """Decode exactly `&amp; &lt; &gt;` (the only entities Slack writes), each once.

    `&amp;` goes last, so the `&` it yields never starts another entity.
    """
    if "&" not in text:
        return text
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def strip_url_token(url: str) -> str:
    """`url` without `t=`/`token=` export-token query parameters."""
    if "xox" not in url:
        return url
    url = _TOKEN_PARAM.sub(lambda m: m.group(1), url)
    url = re.sub(r"[?&]+(?=#|$)", "", url).replace("?&", "?").replace("&&", "&")
    return redact_tokens(url)


def redact_tokens(text: str) -> str:
    """Replace any Slack token left in `text` by `[redacted]`."""
    if "xox" not in text:
        return text
    return _TOKEN.sub("[redacted]", text)


class Names:
    """Id -> readable name lookups for users and channels, shared by text and blocks."""

    __slots__ = ("users", "channels")

    def __init__(self, users: Mapping[str, str], channels: Mapping[str, str]):
        self.users = users
        self.channels = channels

    def user(self, user_id: str, label: str = "") -> str:
        """A user's display name; unknown users keep their label or their id."""
        name = self.users.get(user_id)
        if name:
            return name
        if user_id == SLACKBOT:
            return "Slackbot"
        return label.lstrip("@") if label else user_id


def render_mrkdwn(text: str, names: Names) -> str:
    """Readable text from Slack mrkdwn: tokens resolved, the three entities decoded.

    A token is `<` up to the next `>` with no `<` between; any other `<` or `>` is text.
    Entities are decoded in the text between tokens (tokens decode their own parts), so
    a decoded `&lt;` never starts a token.
    """
    if "<" not in text:
        return redact_tokens(decode_entities(text))
    first, *pieces = text.split("<")
    out = [decode_entities(first)]
    for piece in pieces:
        inner, closed, rest = piece.partition(">")
        if closed:
            out.append(_token(inner, names))
            out.append(decode_entities(rest))
        else:
            out.append("<")
            out.append(decode_entities(piece))
    return redact_tokens("".join(out))


def _token(inner: str, names: Names) -> str:
    target, _, label = inner.partition("|")
    label = decode_entities(label)
    head = target[:1]
    if head == "@":
        return "@" + names.user(target[1:], label)
    if head == "#":
        channel_id = target[1:]
        return "#" + (label or names.channels.get(channel_id) or channel_id)
    if head == "!":
        command = target[1:]
        if command in SPECIAL_MENTIONS:
            return "@" + command
        if command.startswith("subteam^"):
            if label:
                return label if label.startswith("@") else "@" + label
            return "@" + command.split("^", 1)[1]
        return label or command
    url = strip_url_token(decode_entities(target))
    if not label or label == url:
        return url
    if url.startswith("mailto:") and label == url[len("mailto:") :]:
        return label
    return f"{label} ({url})"


def _emoji(element: Mapping[str, Any]) -> str:
    code = element.get("unicode")
    if isinstance(code, str) and code:
        try:
            return "".join(chr(int(part, 16)) for part in code.split("-"))
        except ValueError:
            pass
    return f":{element.get('name', '')}:"


def _inline(element: Any, names: Names) -> str:
    if not isinstance(element, dict):
        return ""
    kind = element.get("type")
    if kind == "text":
        return str(element.get("text") or "")
    if kind == "user":
        return "@" + names.user(str(element.get("user_id") or ""))
    if kind == "channel":
        channel_id = str(element.get("channel_id") or "")
        return "#" + (names.channels.get(channel_id) or channel_id)
    if kind == "usergroup":
        return "@" + str(element.get("usergroup_id") or "group")
    if kind == "broadcast":
        return "@" + str(element.get("range") or "here")
    if kind == "link":
        url = strip_url_token(str(element.get("url") or ""))
        text = element.get("text")
        return f"{text} ({url})" if text and text != url else url
    if kind == "emoji":
        return _emoji(element)
    if kind == "date":
        return str(element.get("fallback") or element.get("timestamp") or "")
    if kind == "canvas":
        return f"[canvas: {element.get('file_id', '')}]"
    return str(element.get("text") or "")


def _rich(element: Any, names: Names) -> str:
    if not isinstance(element, dict):
        return ""
    kind = element.get("type")
    children = element.get("elements")
    items = children if isinstance(children, list) else []
    if kind == "rich_text_list":
        ordered = element.get("style") == "ordered"
        indent = "  " * int(element.get("indent") or 0)
        lines = [
            f"{indent}{f'{n}.' if ordered else '-'} {_rich(item, names)}"
            for n, item in enumerate(items, start=1)
        ]
        return "\n".join(lines)
    text = "".join(_inline(item, names) for item in items)
    if kind == "rich_text_preformatted":
        return f"```\n{text}\n```"
    if kind == "rich_text_quote":
        return "\n".join("> " + line for line in text.split("\n"))
    return text


def _text_object(obj: Any, names: Names) -> str:
    if isinstance(obj, dict):
        text = obj.get("text")
        if isinstance(text, str):
            return render_mrkdwn(text, names) if obj.get("type") == "mrkdwn" else text
    return ""


def render_blocks(blocks: Any, names: Names) -> str:
    """Plain text of Block Kit blocks: rich_text in full, section/header/context text."""
    if not isinstance(blocks, list):
        return ""
    parts: list[str] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "rich_text":
            elements = block.get("elements")
            if isinstance(elements, list):
                parts.extend(p for p in (_rich(e, names) for e in elements) if p)
        elif kind in ("section", "header"):
            parts.append(_text_object(block.get("text"), names))
            fields = block.get("fields")
            if isinstance(fields, list):
                parts.extend(_text_object(f, names) for f in fields)
        elif kind == "context":
            elements = block.get("elements")
            if isinstance(elements, list):
                parts.extend(_text_object(e, names) for e in elements)
    return "\n".join(p for p in parts if p)


def render_attachments(attachments: Any, names: Names) -> str:
    """Plain text of legacy attachments: pretext, title, text (else fallback), fields."""
    if not isinstance(attachments, list):
        return ""
    parts: list[str] = []
    for att in attachments:
        if not isinstance(att, dict):
            continue
        for key in ("pretext", "title"):
            value = att.get(key)
            if isinstance(value, str) and value:
                parts.append(render_mrkdwn(value, names))
        body = att.get("text") or att.get("fallback")
        if isinstance(body, str) and body:
            parts.append(render_mrkdwn(body, names))
        fields = att.get("fields")
        if isinstance(fields, list):
            for f in fields:
                if isinstance(f, dict) and (f.get("title") or f.get("value")):
                    value = render_mrkdwn(str(f.get("value") or ""), names)
                    parts.append(f"{f.get('title') or ''}: {value}".strip(": "))
    return "\n".join(parts)


def file_names(message: Mapping[str, Any]) -> list[str]:
    """Names of the message's files (`files[]` or legacy `file`), skipping deleted stubs."""
    files = message.get("files")
    candidates = files if isinstance(files, list) else []
    legacy = message.get("file")
    if isinstance(legacy, dict):
        candidates = [*candidates, legacy]
    out: list[str] = []
    for f in candidates:
        if not isinstance(f, dict) or f.get("mode") in ("tombstone", "hidden_by_limit"):
            continue
        if f.get("file_access") in ("access_denied", "file_not_found"):
            continue
        name = f.get("name") or f.get("title") or f.get("id")
        if isinstance(name, str) and name:
            out.append(redact_tokens(name))
    return out


def fallback_content(message: Mapping[str, Any], names: Names, files: list[str]) -> str:
    """Content of a message whose `text` is empty: blocks, attachments, then `[file: …]`."""
    parts = [
        render_blocks(message.get("blocks"), names),
        render_attachments(message.get("attachments"), names),
        *(f"[file: {name}]" for name in files),
    ]
    return redact_tokens("\n".join(p for p in parts if p))
