"""The fields of a DiscordChatExporter message that the Discord connector reads, as msgspec
Structs: decoding only these (an author's avatar, color and discriminator, a message's
inline emojis and call time are skipped unparsed) into Structs read by attribute costs
about a third of orjson's whole dicts, and a message array is decoded many messages per
call (`decode_messages`), which spares the per-message cost of finding each one's end.

Every message reaches the connector as a `Message`, whichever way it was read. A record
the schema does not describe exactly (a value of another shape, a `type` that is not a
string, a reaction count that is not a 64-bit integer, an `id` that is not a snowflake
string) is read by orjson and brought to the same shape by `from_dict`, which keeps what
the connector's rules need of it; a record that is not an object or has no snowflake id
stays orjson's value (quarantined with its whole text). So both ways give the connector
the same values for every field it reads (orjson reads integers beyond 64 bits as floats,
msgspec as integers: where that matters, the schema refuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import orjson

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Role(msgspec.Struct, gc=False):
    """Only a role's id and name are read (its color and position, repeated in every
    message, are skipped)."""

    id: Any = None
    name: Any = None


class Author(msgspec.Struct, gc=False):
    id: Any = None
    name: Any = None
    nickname: Any = None
    isBot: Any = None
    roles: list[Role] | None = None
    """None unless a list; only its objects are kept."""


class Reaction(msgspec.Struct, gc=False):
    emoji: Any = None
    count: Any = None
    """The schema takes only null or a 64-bit integer here."""


class _StrictReaction(Reaction, gc=False):
    count: Int64 | None = None


class Message(msgspec.Struct, gc=False):
    """One message: a missing field reads as None (`type` as `Default`), like `dict.get`."""

    id: Any
    """A snowflake string as decoded (`from_dict` also passes on an integer)."""
    type: str = "Default"
    """Always a string (`from_dict` turns other JSON values into their `str`)."""
    timestamp: Any = None
    timestampEdited: Any = None
    isPinned: Any = None
    content: Any = None
    author: Author | None = None
    """None unless the record's `author` is an object."""
    attachments: Any = None
    embeds: Any = None
    stickers: Any = None
    reactions: Sequence[Reaction] | None = None
    """None unless a list; only its objects are kept."""
    mentions: Any = None
    reference: Any = None
    forwardedMessage: Any = None
    interaction: Any = None


class _StrictMessage(Message, gc=False):
    id: str
    reactions: list[_StrictReaction] | None = None


_ONE = msgspec.json.Decoder(_StrictMessage)
_MANY = msgspec.json.Decoder(list[_StrictMessage])


def is_snowflake_text(value: Any) -> bool:
    return type(value) is str and value.isdigit() and value.isascii() and len(value) < 20


def decode_messages(data: bytes | bytearray | memoryview) -> list[Message] | None:
    """A JSON array of messages, all decoded by the schema, else None (read them one by one
    with `decode_message`: one of them is not described exactly, or it is not JSON)."""
    try:
        messages: list[Any] = _MANY.decode(data)
    except msgspec.DecodeError:  # ValidationError too: valid JSON of another shape
        return None
    for msg in messages:
        if not is_snowflake_text(msg.id):
            return None
    return messages


def decode_message(data: bytes | bytearray | memoryview) -> Any:
    """One element of a channel file's `messages` array: a `Message`, or orjson's value for
    a record that is not an object or has no snowflake id (orjson raises
    `orjson.JSONDecodeError` for what is not JSON, as the walk expects)."""
    try:
        msg: Message = _ONE.decode(data)
    except msgspec.DecodeError:
        pass
    else:
        if is_snowflake_text(msg.id):
            return msg
    return as_message(orjson.loads(data))


def as_message(value: Any) -> Any:
    """The `Message` of an element orjson read, or the value itself when it is not an
    object with a snowflake `id`."""
    if type(value) is dict and _snowflake_or_none(value.get("id")) is not None:
        return from_dict(value)
    return value


def _snowflake_or_none(value: Any) -> int | None:
    """The connector's rule for a message id: a decimal string under 20 digits or a
    positive 63-bit integer."""
    if is_snowflake_text(value):
        return int(value)
    if type(value) is int and 0 < value < 1 << 63:
        return value
    return None


def from_dict(record: dict[str, Any]) -> Message:
    """The `Message` of a record orjson read (one with a snowflake `id`)."""
    get = record.get
    kind = get("type", "Default")
    author = get("author")
    reactions = get("reactions")
    return Message(
        id=get("id"),
        type=kind if type(kind) is str else str(kind),
        timestamp=get("timestamp"),
        timestampEdited=get("timestampEdited"),
        isPinned=get("isPinned"),
        content=get("content"),
        author=_author(author) if type(author) is dict else None,
        attachments=get("attachments"),
        embeds=get("embeds"),
        stickers=get("stickers"),
        reactions=[Reaction(r.get("emoji"), r.get("count")) for r in reactions if type(r) is dict]
        if type(reactions) is list
        else None,
        mentions=get("mentions"),
        reference=get("reference"),
        forwardedMessage=get("forwardedMessage"),
        interaction=get("interaction"),
    )


def _author(author: dict[str, Any]) -> Author:
    roles = author.get("roles")
    return Author(
        id=author.get("id"),
        name=author.get("name"),
        nickname=author.get("nickname"),
        isBot=author.get("isBot"),
        roles=[Role(r.get("id"), r.get("name")) for r in roles if type(r) is dict]
        if type(roles) is list
        else None,
    )
