"""The msgspec schema of a Discord message gives what orjson gives, for every field the
connector reads, on any JSON (or raises where orjson raises)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.discord_model import Author, Message, Reaction, decode_message

NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
SNOWFLAKE = st.integers(0, 10**19).map(str)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(Message.__annotations__, JSON),
        "id": SNOWFLAKE | JSON,
        "author": st.fixed_dictionaries({}, optional=dict.fromkeys(Author.__annotations__, JSON))
        | JSON,
        "reactions": st.lists(
            st.fixed_dictionaries({}, optional=dict.fromkeys(Reaction.__annotations__, JSON))
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
    """What the connector can see of a message: the schema's fields, and theirs. Where
    the connector reads only strings, integers beyond 64 bits may be read as msgspec
    reads them; `type` and reaction counts must match orjson exactly."""
    if type(msg) is not dict:
        return msg
    seen = {
        k: msg.get(k) if k in ("type", "reactions") else as_orjson(msg.get(k))
        for k in Message.__annotations__
    }
    if type(seen["reactions"]) is list:
        seen["reactions"] = [
            {k: r.get(k) for k in Reaction.__annotations__} if type(r) is dict else r
            for r in seen["reactions"]
        ]
    if type(seen["author"]) is dict:
        seen["author"] = {k: seen["author"].get(k) for k in Author.__annotations__}
    return seen


@settings(max_examples=300, deadline=None)
@given(msg=MESSAGE | JSON)
@example(msg={"id": "1", "type": 2**64})
@example(msg={"id": "1", "reactions": [{"emoji": {"name": "x"}, "count": 2**64}]})
@example(msg={"id": "1", "reactions": [{"emoji": {"name": "x"}, "count": -(2**63) - 1}]})
@example(msg={"id": "x", "author": {"avatarUrl": "u"}})
def test_schema_reads_what_orjson_reads(msg: Any) -> None:
    data = json.dumps(msg, indent=2).encode()
    try:
        want = orjson.loads(data)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            decode_message(data)
        return
    got = decode_message(data)
    assert repr(read_fields(got)) == repr(read_fields(want))  # repr: 2**64 == float(2**64)
    mid = want.get("id") if type(want) is dict else None
    if not (type(mid) is str and mid.isdigit() and mid.isascii() and len(mid) < 20):
        assert repr(got) == repr(want)  # quarantined with its whole text
