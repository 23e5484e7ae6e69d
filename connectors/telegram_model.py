"""The common Telegram Desktop message, as a msgspec schema: decoding a message with it
takes about half orjson's time (`text_entities`, which repeats `text`, is skipped
unparsed) and its fields are read by attribute instead of through `dict.get` chains.

The schema lists every key of a plain text message plus the reply, edit, forward, via-bot
and signature keys, each with the one type the connector reads (`UNSET` when absent), and
refuses any other key or type: such a record (media, reactions, a service record with
details, a `text` entity holding a non-string, a value of another shape, an `id` beyond
64 bits, which orjson reads as a float) is decoded whole by orjson instead and staged by
the general code. A message without `text` is too (its `text_entities` are read then).
So every value the connector reads from a `Message` is the one orjson would give.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
from msgspec import UNSET, UnsetType

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Text = str | list[str | dict[str, str]]
"""A string, or a list of strings and entities whose values are all strings."""


class Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One `messages` element of the common shape (see the module docstring)."""

    id: Int64
    type: str = "message"
    action: str | UnsetType = UNSET
    date: str | UnsetType = UNSET
    date_unixtime: str | UnsetType = UNSET
    edited: str | UnsetType = UNSET
    edited_unixtime: str | UnsetType = UNSET
    from_: str | None | UnsetType = msgspec.field(default=UNSET, name="from")
    from_id: str | None | UnsetType = UNSET
    author: str | UnsetType = UNSET
    forwarded_from: str | None | UnsetType = UNSET
    saved_from: str | UnsetType = UNSET
    via_bot: str | UnsetType = UNSET
    reply_to_message_id: Int64 | UnsetType = UNSET
    reply_to_peer_id: str | UnsetType = UNSET
    text: Text | UnsetType = UNSET
    text_entities: msgspec.Raw | UnsetType = UNSET
    """Skipped unparsed, and dropped after decoding: a `Raw` is a view of the reader's
    buffer, which could not grow while one is alive."""


EXTRA_FIELDS = (
    "reply_to_message_id",
    "reply_to_peer_id",
    "edited",
    "edited_unixtime",
    "forwarded_from",
    "saved_from",
    "via_bot",
    "author",
)
"""The fields read into a message's metadata (attribute and JSON key alike)."""

_DECODER = msgspec.json.Decoder(Message)


def decode_message(data: bytes | bytearray | memoryview) -> Any:
    """One element of a chat's `messages` array: a `Message`, else orjson's value (which
    raises `orjson.JSONDecodeError` for what is not JSON, as the walk expects)."""
    try:
        msg = _DECODER.decode(data)
    except msgspec.DecodeError:  # ValidationError too: valid JSON of another shape
        return orjson.loads(data)
    if msg.text is UNSET:
        return orjson.loads(data)
    msg.text_entities = UNSET
    return msg


def extra_fields(msg: Message) -> dict[str, Any]:
    """The metadata fields `msg` has, keyed as in the JSON (what orjson's dict holds)."""
    return {key: value for key in EXTRA_FIELDS if (value := getattr(msg, key)) is not UNSET}
