"""The text a reader sees in a Telegram Desktop message: flattened entities, media
placeholders (see docs/telegram.md, *How messages are normalized*)."""

from __future__ import annotations

from typing import Any

_MEDIA_KINDS = {
    "sticker": "sticker",
    "voice_message": "voice message",
    "video_message": "video message",
    "animation": "animation",
    "video_file": "video",
    "audio_file": "audio",
}


def flatten_text(text: Any) -> str:
    """The text a reader sees, from Telegram's string-or-array-of-entities `text`.

    Links keep their target (`label (url)` when they differ), `code` and `pre` keep their
    backticks (with the language of a code block), custom emoji become their fallback
    emoji; every other entity (mentions, hashtags, bold, spoiler, ...) is its text.
    """
    if type(text) is str:
        return text
    if type(text) is not list:
        return ""
    out: list[str] = []
    for part in text:
        if type(part) is str:
            out.append(part)
            continue
        if type(part) is not dict:
            continue
        value = part.get("text")
        if type(value) is not str:
            continue
        kind = part.get("type")
        if kind == "text_link":
            href = part.get("href")
            if type(href) is str and href and href != value:
                value = f"{value} ({href})" if value else href
        elif kind == "code" and value:
            value = f"`{value}`"
        elif kind == "pre":
            language = part.get("language")
            lang = language if type(language) is str else ""
            value = f"```{lang}\n{value}\n```"
        out.append(value)
    return "".join(out)


def _file_label(value: Any) -> str | None:
    """The file name of an exported media path; None when the file was not exported."""
    if type(value) is not str or not value or value.startswith("("):
        return None
    return value.rsplit("/", 1)[-1]


def media_placeholder(msg: dict[str, Any]) -> str | None:  # noqa: C901 (one case per media)
    """`[photo: name.jpg]`, `[voice message: x.ogg]`, `[poll: question] a / b`, ... or None."""
    if "photo" in msg:
        name = _file_label(msg.get("photo"))
        return f"[photo: {name}]" if name else "[photo]"
    media_type = msg.get("media_type")
    if "file" in msg or isinstance(media_type, str):
        if media_type == "sticker":
            emoji = msg.get("sticker_emoji")
            return f"[sticker {emoji}]" if isinstance(emoji, str) and emoji else "[sticker]"
        kind = _MEDIA_KINDS.get(media_type, "file") if isinstance(media_type, str) else "file"
        name = msg.get("file_name")
        if not isinstance(name, str) or not name:
            name = _file_label(msg.get("file"))
        return f"[{kind}: {name}]" if name else f"[{kind}]"
    poll = msg.get("poll")
    if isinstance(poll, dict):
        question = poll.get("question")
        answers = poll.get("answers")
        options = [
            a["text"]
            for a in (answers if isinstance(answers, list) else [])
            if isinstance(a, dict) and isinstance(a.get("text"), str)
        ]
        head = f"[poll: {question}]" if isinstance(question, str) else "[poll]"
        return f"{head} {' / '.join(options)}" if options else head
    contact = msg.get("contact_information")
    if isinstance(contact, dict):
        names = [contact.get(k) for k in ("first_name", "last_name")]
        who = " ".join(n for n in names if isinstance(n, str) and n)
        return f"[contact: {who}]" if who else "[contact]"
    if isinstance(msg.get("place_name"), str) or isinstance(msg.get("address"), str):
        parts = [msg.get(k) for k in ("place_name", "address")]
        return "[venue: " + ", ".join(p for p in parts if isinstance(p, str) and p) + "]"
    if "location_information" in msg:
        return "[location]"
    if isinstance(msg.get("game_title"), str):
        return f"[game: {msg['game_title']}]"
    invoice = msg.get("invoice_information")
    if isinstance(invoice, dict):
        title = invoice.get("title")
        return f"[invoice: {title}]" if isinstance(title, str) and title else "[invoice]"
    todo = msg.get("todo_list")
    if isinstance(todo, dict):
        title = flatten_text(todo.get("title"))
        return f"[todo list: {title}]" if title else "[todo list]"
    if "giveaway_information" in msg or "giveaway_results" in msg:
        return "[giveaway]"
    if "paid_stars_amount" in msg:
        return "[paid media]"
    return None
