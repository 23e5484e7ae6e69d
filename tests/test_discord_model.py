"""The msgspec schema of a Discord message gives what orjson gives, for every field the
connector reads, on any JSON (or raises where orjson raises)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.discord_model import (
    Author,
    Message,
    Reaction,
    as_message,
    decode_message,
    decode_messages,
)

NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
SNOWFLAKE = st.integers(0, 10**19).map(str)
ROLES = st.lists(
    st.fixed_dictionaries({}, optional={"id": JSON, "name": JSON, "color": JSON}) | JSON,
    max_size=2,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(Message.__struct_fields__, JSON),
        "id": SNOWFLAKE | JSON,
        "author": st.fixed_dictionaries(
            {}, optional={**dict.fromkeys(Author.__struct_fields__, JSON), "roles": ROLES | JSON}
        )
        | JSON,
        "reactions": st.lists(
            st.fixed_dictionaries({}, optional=dict.fromkeys(Reaction.__struct_fields__, JSON))
            | JSON,
            max_size=2,
        ),
        "other": JSON,
    },
)


def as_orjson(value: Any) -> Any:
    """`value` with integers beyond 64 bits as floats, as orjson reads them."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if type(value) is list:
        return [as_orjson(v) for v in value]
    if type(value) is dict:
        return {k: as_orjson(v) for k, v in value.items()}
    return value


def read_fields(msg: Any) -> Any:
    """What the connector can see of a message: every field of a `Message` (plain values
    otherwise). Where the connector reads only strings, integers beyond 64 bits may be
    read as msgspec reads them; `id`, `type` and reaction counts must match exactly."""
    if not isinstance(msg, Message):
        return msg
    seen = {
        k: getattr(msg, k) if k in ("id", "type") else as_orjson(getattr(msg, k))
        for k in Message.__struct_fields__
    }
    if msg.author is not None:
        author = {k: as_orjson(getattr(msg.author, k)) for k in Author.__struct_fields__}
        if msg.author.roles is not None:
            author["roles"] = [(as_orjson(r.id), as_orjson(r.name)) for r in msg.author.roles]
        seen["author"] = author
    if msg.reactions is not None:
        seen["reactions"] = [(as_orjson(r.emoji), r.count) for r in msg.reactions]
    return seen


def from_orjson(data: bytes) -> Any:
    """What the connector makes of a record read by orjson alone."""
    return as_message(orjson.loads(data))


@settings(max_examples=300, deadline=None)
@given(msg=MESSAGE | JSON)
@example(msg={"id": "1", "type": 2**64})
@example(msg={"id": "1", "type": None})
@example(msg={"id": 5, "author": "x", "reactions": [1, {"count": 2}]})
@example(msg={"id": "1", "reactions": [{"emoji": {"name": "x"}, "count": 2**64}]})
@example(msg={"id": "1", "reactions": [{"emoji": {"name": "x"}, "count": -(2**63) - 1}]})
@example(msg={"id": "1", "author": {"roles": [{"id": "2", "name": "x", "color": 3}, 4]}})
@example(msg={"id": "x", "author": {"avatarUrl": "u"}})
def test_schema_reads_what_orjson_reads(msg: Any) -> None:
    data = json.dumps(msg, indent=2).encode()
    try:
        want = from_orjson(data)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            decode_message(data)
        return
    got = decode_message(data)
    assert repr(read_fields(got)) == repr(read_fields(want))  # repr: 2**64 == float(2**64)
    if not isinstance(want, Message):
        assert repr(got) == repr(want)  # quarantined with its whole text


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(MESSAGE | JSON, max_size=4))
@example(msgs=[{"id": "1"}, {"id": "2", "type": 0}])
@example(msgs=[{"id": "1"}, {"id": "x"}])
@example(msgs=[{"id": "1", "content": "a"}, {"id": "2", "author": {"id": "3"}}])
def test_runs_read_what_single_messages_read(msgs: list[Any]) -> None:
    """A run decoded at once gives what each of its messages gives alone, or is refused."""
    data = json.dumps(msgs, indent=2).encode()
    got = decode_messages(data)
    if got is None:
        return
    assert len(got) == len(msgs)
    for value, one in zip(got, msgs, strict=True):
        single = decode_message(json.dumps(one, indent=2).encode())
        assert isinstance(single, Message)
        assert repr(read_fields(value)) == repr(read_fields(single))


def test_runs_of_plain_messages_are_taken_and_odd_ones_refused() -> None:
    plain = [{"id": "1", "type": "Default", "author": {"id": "2", "roles": []}}, {"id": "3"}]
    taken = decode_messages(json.dumps(plain).encode())
    assert taken is not None
    assert [m.id for m in taken] == ["1", "3"]
    assert decode_messages(json.dumps([*plain, {"id": "x"}]).encode()) is None
    assert decode_messages(json.dumps([*plain, {"id": "4", "type": 0}]).encode()) is None
    assert decode_messages(json.dumps([*plain, None]).encode()) is None
    assert decode_messages(b'[{"id": "1"},') is None
