"""The fields of a DiscordChatExporter message that the Discord connector reads, as a
msgspec schema: decoding only these (an author's avatar, color and discriminator, a
message's inline emojis and call time are skipped unparsed) takes about half orjson's time
for a whole message, the largest single cost of a Discord extract.

The schema yields plain dicts (TypedDicts) holding the same values orjson would give for
those fields, so the per-message code is the same for both. Anything the schema does not
describe exactly falls back to orjson's whole dict: a value of another shape, a message
without a snowflake `id` (quarantined with its full text), a `type` that is not a string,
a reaction count that is not an integer orjson reads as one (orjson reads integers beyond
64 bits as floats, msgspec as integers; nothing else the connector reads depends on
number types).
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
import orjson


class Role(TypedDict, total=False):
    id: Any
    name: Any


class Author(TypedDict, total=False):
    id: Any
    name: Any
    nickname: Any
    isBot: Any
    roles: list[Role] | None
    """Only a role's id and name are read (its color and position, repeated in every
    message, are skipped); a list holding anything but objects falls back to orjson."""


class Reaction(TypedDict, total=False):
    emoji: Any
    count: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Message(TypedDict, total=False):
    id: str
    type: str
    timestamp: Any
    timestampEdited: Any
    isPinned: Any
    content: Any
    author: Author | None
    attachments: Any
    embeds: Any
    stickers: Any
    reactions: list[Reaction]
    mentions: Any
    reference: Any
    forwardedMessage: Any
    interaction: Any


_DECODER = msgspec.json.Decoder(Message)


def decode_message(data: bytes | bytearray | memoryview) -> Any:
    """One element of a channel file's `messages` array: the schema's dict, else orjson's
    (which raises `orjson.JSONDecodeError` for what is not JSON, as the walk expects)."""
    try:
        msg = _DECODER.decode(data)
    except msgspec.DecodeError:  # ValidationError too: valid JSON of another shape
        return orjson.loads(data)
    mid = msg.get("id")
    if mid is None or not (mid.isdigit() and mid.isascii() and len(mid) < 20):
        return orjson.loads(data)
    return msg
