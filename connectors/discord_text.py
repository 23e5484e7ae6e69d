"""The text a reader sees in a DiscordChatExporter message: raw markup rendered as
names, attachments, stickers and embeds as text (see docs/discord.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from connectors.discord_model import Role
from connectors.group_chat import iso_from_micros

_MARKUP = re.compile(r"<(@[!&]?|#)(\d+)>|<(a?):(\w+):\d+>|<t:(-?\d{1,12})(?::[tTdDfFR])?>")


@dataclass
class Names:
    """Names known so far in one job: users (id -> display name), roles, channels."""

    users: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def learn_roles(roles: Any, known: dict[str, str]) -> None:
    """Learn role names from a JSON `roles` value (of a mentioned user)."""
    if type(roles) is list:
        for role in roles:
            if type(role) is dict:
                rid, rname = role.get("id"), role.get("name")
                if type(rid) is str and type(rname) is str and rname:
                    known[rid] = rname


def learn_author_roles(roles: list[Role], known: dict[str, str]) -> None:
    """Learn role names from a message author's roles (the same rule as `learn_roles`)."""
    for role in roles:
        rid, rname = role.id, role.name
        if type(rid) is str and type(rname) is str and rname:
            known[rid] = rname


def attachment_lines(
    attachments: Any, stickers: Any, embeds: Any, extra: dict[str, Any]
) -> list[str]:
    """Text for a message's attachments, stickers and embeds (metadata lists their names)."""
    lines: list[str] = []
    if type(attachments) is list and attachments:
        names = [_text(a.get("fileName")) or "file" for a in attachments if type(a) is dict]
        lines.extend(f"[attachment: {n}]" for n in names)
        if names:
            extra["attachments"] = names
    if type(stickers) is list and stickers:
        names = [_text(s.get("name")) or "sticker" for s in stickers if type(s) is dict]
        lines.extend(f"[sticker: {n}]" for n in names)
        if names:
            extra["stickers"] = names
    if type(embeds) is list and embeds:
        count = 0
        for embed in embeds:
            if type(embed) is dict:
                text = embed_text(embed)
                if text:
                    lines.append(text)
                    count += 1
        if count:
            extra["embeds"] = count
    return lines


def embed_text(embed: dict[str, Any]) -> str:
    """`[embed: title] (url)`, then author, description, `field: value` lines and footer."""
    title = _text(embed.get("title")).strip()
    url = _text(embed.get("url"))
    lines: list[str] = []
    if title or url:
        head = f"[embed: {title}]" if title else "[embed]"
        lines.append(f"{head} ({url})" if url else head)
    author = embed.get("author")
    if type(author) is dict and _text(author.get("name")):
        lines.append(f"by {author['name']}")
    description = _text(embed.get("description")).strip()
    if description:
        lines.append(description)
    fields = embed.get("fields")
    if type(fields) is list:
        for f in fields:
            if type(f) is dict and (_text(f.get("name")) or _text(f.get("value"))):
                lines.append(f"{_text(f.get('name'))}: {_text(f.get('value'))}")
    footer = embed.get("footer")
    if type(footer) is dict and _text(footer.get("text")):
        lines.append(footer["text"])
    if lines and not lines[0].startswith("[embed"):
        lines.insert(0, "[embed]")
    return "\n".join(lines)


def render_markup(text: str, mentions: Any, known: Names) -> str:
    """Replace raw Discord markup with what a reader sees: `<@id>` -> `@Name`, `<#id>` ->
    `#channel`, `<@&id>` -> `@role`, `<:name:id>` -> `:name:`, `<t:unix>` -> UTC time.

    DiscordChatExporter already does this unless run with `--markdown false`; unknown ids
    stay as they are.
    """
    names: dict[str, str] = {}
    if type(mentions) is list:
        for user in mentions:
            if type(user) is dict and type(user.get("id")) is str:
                name = _text(user.get("nickname")) or _text(user.get("name"))
                if name:
                    names[user["id"]] = name
                learn_roles(user.get("roles"), known.roles)

    def replace(match: re.Match[str]) -> str:
        sigil, ident, _, emoji, stamp = match.groups()
        if emoji is not None:
            return f":{emoji}:"
        if stamp is not None:
            try:
                return iso_from_micros(int(stamp) * 1_000_000)
            except (OverflowError, OSError, ValueError):
                return match.group()
        if sigil == "#":
            channel = known.channels.get(ident)
            return f"#{channel}" if channel else match.group()
        if sigil == "@&":
            role = known.roles.get(ident)
            return f"@{role}" if role else match.group()
        user = names.get(ident) or known.users.get(ident)
        return f"@{user}" if user else match.group()

    return _MARKUP.sub(replace, text)
