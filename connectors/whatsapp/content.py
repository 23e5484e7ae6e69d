"""What a WhatsApp message body is: text, an attachment, or a line that is not a message.

WhatsApp writes placeholders and system notices in the phone's language. The lists below
hold the English wording and that of the most common locales (de, es, fr, pt, it, nl);
an unknown wording is staged as ordinary text, never lost. Android writes system lines
without a sender (recognized by structure, any language); iOS attributes them to the chat
or to a person and marks most of them with U+200E, which is what is used here.
"""

from __future__ import annotations

import re

SKIP_EXACT: dict[str, str] = {
    **dict.fromkeys(
        (
            "<Media omitted>",
            "<Medien ausgeschlossen>",
            "<Multimedia omitido>",
            "<Multimedia omitidos>",
            "<Médias omis>",
            "<Fichier omis>",
            "<Mídia oculta>",
            "<Arquivo de mídia oculto>",
            "<Media omessi>",
            "<Media weggelaten>",
            "image omitted",
            "video omitted",
            "audio omitted",
            "sticker omitted",
            "GIF omitted",
            "document omitted",
            "Contact card omitted",
            "Bild weggelassen",
            "Video weggelassen",
            "Audio weggelassen",
            "Sticker weggelassen",
            "GIF weggelassen",
            "imagen omitida",
            "video omitido",
            "audio omitido",
            "sticker omitido",
            "image absente",
            "vidéo absente",
            "audio omis",
            "imagem ocultada",
            "vídeo ocultado",
            "áudio ocultado",
            "immagine omessa",
            "video omesso",
            "audio omesso",
            "afbeelding weggelaten",
        ),
        "whatsapp:media_omitted",
    ),
    **dict.fromkeys(
        (
            "This message was deleted",
            "This message was deleted.",
            "You deleted this message",
            "You deleted this message.",
            "Diese Nachricht wurde gelöscht",
            "Diese Nachricht wurde gelöscht.",
            "Du hast diese Nachricht gelöscht",
            "Du hast diese Nachricht gelöscht.",
            "Se eliminó este mensaje",
            "Se eliminó este mensaje.",
            "Eliminaste este mensaje",
            "Eliminaste este mensaje.",
            "Ce message a été supprimé",
            "Ce message a été supprimé.",
            "Vous avez supprimé ce message",
            "Vous avez supprimé ce message.",
            "Mensagem apagada",
            "Essa mensagem foi apagada",
            "Você apagou esta mensagem",
            "Questo messaggio è stato eliminato",
            "Hai eliminato questo messaggio",
            "Dit bericht is verwijderd",
            "Je hebt dit bericht verwijderd",
        ),
        "whatsapp:deleted",
    ),
    "null": "whatsapp:view_once",
    "Waiting for this message. This may take a while.": "whatsapp:unavailable",
}
"""Whole bodies (U+200E removed, surrounding space trimmed) that are not messages."""

SKIP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Messages and calls are end-to-end encrypted", "whatsapp:encryption_notice"),
    ("Messages to this group are now secured with end-to-end", "whatsapp:encryption_notice"),
    ("Messages to this chat and calls are now secured", "whatsapp:encryption_notice"),
    ("Messages you send to this chat and calls are now secured", "whatsapp:encryption_notice"),
    ("Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt", "whatsapp:encryption_notice"),
    (
        "Los mensajes y las llamadas están cifrados de extremo a extremo",
        "whatsapp:encryption_notice",
    ),
    ("Les messages et les appels sont chiffrés de bout en bout", "whatsapp:encryption_notice"),
    ("As mensagens e as chamadas são protegidas com a criptografia", "whatsapp:encryption_notice"),
    ("I messaggi e le chiamate sono crittografati end-to-end", "whatsapp:encryption_notice"),
    ("Berichten en oproepen zijn end-to-end versleuteld", "whatsapp:encryption_notice"),
    ("Missed voice call", "whatsapp:call"),
    ("Missed video call", "whatsapp:call"),
    ("Missed group voice call", "whatsapp:call"),
    ("Missed group video call", "whatsapp:call"),
    ("Your security code with ", "whatsapp:system"),
    ("This chat is with a business account", "whatsapp:system"),
)
"""Body beginnings that mark notices (they carry a sender on iOS)."""
_PREFIXES = tuple(p for p, _ in SKIP_PREFIXES)
_PREFIX_REASON = dict(SKIP_PREFIXES)

EDITED_SUFFIXES = (
    "<This message was edited>",
    "<Diese Nachricht wurde bearbeitet>",
    "<Se editó este mensaje.>",
    "<Ce message a été modifié>",
    "<Mensagem editada>",
    "<Questo messaggio è stato modificato>",
    "<Dit bericht is bewerkt>",
)
"""Markers WhatsApp appends to an edited message; removed, and `edited: true` noted."""

ATTACHED_WORDS = (
    "file attached",
    "Datei angehängt",
    "archivo adjunto",
    "fichier joint",
    "arquivo anexado",
    "file allegato",
    "bestand bijgevoegd",
)
"""What Android writes after an attached file's name, in the locales above."""
ANDROID_ATTACHED = re.compile(
    r"([^\n/\\<>]{1,200}?\.[A-Za-z0-9]{1,6}) \((?:"
    + "|".join(map(re.escape, ATTACHED_WORDS))
    + r")\)(?=\n|\Z)"
)
"""`IMG-20201231-WA0001.jpg (file attached)`, first line of the body."""
IOS_ATTACHED = re.compile(r"<[^<>:\n]{2,30}: ?([^<>\n]{1,200})>")
"""`<attached: 00000012-PHOTO-2020-12-31-22-15-30.jpg>` (after U+200E), any language."""
_LRM = "\u200e"
_MARKS = str.maketrans("", "", "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_PHONE = re.compile(r"\+?[\d ()\-\u00a0]{6,}")


class Body:
    """A message body that is not plain text: a skip reason, or the content to stage."""

    __slots__ = ("reason", "text", "attachment", "edited")

    def __init__(
        self,
        reason: str | None,
        text: str = "",
        attachment: str | None = None,
        edited: bool = False,
    ) -> None:
        self.reason = reason
        self.text = text
        self.attachment = attachment
        self.edited = edited


def classify(body: str) -> Body | None:
    """None when `body` is plain text to stage as it is (after `strip()`); else its skip
    reason or its rewritten content. `body` is what follows `Sender: `, without the
    trailing line break; it may span lines."""
    lrm = _LRM in body
    plain = body.replace(_LRM, "").strip() if lrm else body.strip()
    if not plain:
        return Body("whatsapp:empty")
    reason = SKIP_EXACT.get(plain)
    if reason is not None:
        return Body(reason)
    if plain.startswith(_PREFIXES):
        for prefix in _PREFIXES:
            if plain.startswith(prefix):
                return Body(_PREFIX_REASON[prefix])
    edited = False
    if plain[-1] == ">" and plain.endswith(EDITED_SUFFIXES):
        edited = True
        for suffix in EDITED_SUFFIXES:
            if plain.endswith(suffix):
                plain = plain[: -len(suffix)].rstrip()
                break
        if not plain:
            return Body("whatsapp:empty")
    if plain[0] == "<":
        found = IOS_ATTACHED.match(plain)
        if found is not None:
            return _attachment(found.group(1).strip(), plain[found.end() :].strip(), edited)
    newline = plain.find("\n")
    if plain[newline - 1 if newline > 0 else -1] == ")":
        found = ANDROID_ATTACHED.match(plain)
        if found is not None:
            return _attachment(found.group(1).strip(), plain[found.end() :].strip(), edited)
    if body.startswith(_LRM) and not edited:
        return Body("whatsapp:system")
    if edited or lrm:
        return Body(None, plain, None, edited)
    return None


def _attachment(name: str, caption: str, edited: bool) -> Body:
    text = f"[attachment: {name}]" + (f"\n{caption}" if caption else "")
    return Body(None, text, name, edited)


def clean_sender(raw: str) -> tuple[str, str]:
    """(author_id, author_name) of a header's sender.

    Bidirectional marks around phone numbers and the `~` iOS puts before names that are
    not in the address book are dropped; a phone number's id is `+` and its digits, so
    `‎+49 151 2345678` and `+49 (151) 234-5678` are one author.
    """
    name = raw.translate(_MARKS).strip()
    if name.startswith("~"):
        name = name[1:].strip(" \u00a0\u202f")
    if _PHONE.fullmatch(name):
        digits = "".join(ch for ch in name if ch.isdigit())
        return ("+" if name.startswith("+") else "") + digits, name
    return name, name


_SELF_EVENT = re.compile(
    r"(?:created group .+|added .+|removed .+|left|joined using this group's invite link"
    r"|changed this group's icon|deleted this group's icon|changed the subject (?:from .+ )?to .+"
    r"|changed the group description|deleted the group description|changed their phone number.*"
    r"|changed the group name to .+|turned (?:on|off) disappearing messages.*"
    r"|changed this group's settings.*|pinned a message)"
)
"""English group events iOS attributes to the person who caused them (`Boris: Boris added
Ann`); matched only after the sender's own name."""
_CHAT_EVENT = re.compile(
    r"(?:.+ )?(?:added you|removed you|created group .+|changed this group's icon"
    r"|changed the subject (?:from .+ )?to .+|changed the group description"
    r"|joined using this group's invite link)"
    r"|You're now an admin|You're no longer an admin|You joined using this group's invite link"
    r"|You created group .+|You added .+|You removed .+"
)
"""English group events iOS attributes to the group itself (`Family: Boris added you`)."""


def is_attributed_event(sender: str, chat_voice: bool, text: str) -> bool:
    """True when an iOS line with a sender is really a group event (see the patterns);
    `chat_voice`: the sender is the chat itself (its name, or the sender of the chat's
    encryption notice)."""
    if text.startswith(sender) and text[len(sender) : len(sender) + 1] == " ":
        return _SELF_EVENT.fullmatch(text, len(sender) + 1) is not None
    if chat_voice:
        return _CHAT_EVENT.fullmatch(text) is not None
    return False
