"""The nested-array JSON walker: any document, any chunk size, any indentation."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.json_stream import JSONStreamError
from connectors.nested_json import Array, Enter, Exit, Field, Path, array_at, walk

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
DOCS = st.dictionaries(
    st.sampled_from(["a", "messages", "chats", "x"]),
    JSON | st.lists(st.dictionaries(st.text(max_size=3), JSON, max_size=3), max_size=5),
    max_size=4,
)


def rebuild(data: bytes, chunk: int) -> Any:
    """The document, put back together from the walk's events."""
    stack: list[Any] = []
    root: list[Any] = []

    def put(path: Path, value: Any) -> None:
        parent = stack[-1] if stack else root
        if isinstance(parent, dict):
            parent[path[-1]] = value
        else:
            parent.append(value)

    for event in walk(
        io.BytesIO(data),
        descend=lambda p: len(p) < 3,
        stream=lambda p: bool(p) and p[-1] == "messages",
        chunk=chunk,
    ):
        if isinstance(event, Field):
            put(event.path, event.value)
        elif isinstance(event, Array):
            stack[-1].extend(event.values())
        elif isinstance(event, Enter):
            first = data.lstrip()[:1] if not event.path else None
            container: Any = {} if first == b"{" else None
            if container is None:
                container = [] if _is_array(data, event) else {}
            put(event.path, container) if stack or event.path else root.append(container)
            stack.append(container)
        elif isinstance(event, Exit):
            stack.pop()
    return root[0]


def _is_array(data: bytes, event: Enter) -> bool:
    value: Any = orjson.loads(data)
    for key in event.path:
        value = value[key]
    return isinstance(value, list)


@settings(max_examples=150, deadline=None)
@given(doc=DOCS, chunk=st.sampled_from([1, 3, 7, 64, 1 << 20]), indent=st.booleans())
def test_any_document_is_walked_back_to_itself(
    doc: dict[str, Any], chunk: int, indent: bool
) -> None:
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    assert rebuild(data, chunk) == orjson.loads(data)


@settings(max_examples=100, deadline=None)
@given(doc=DOCS, cut=st.integers(min_value=1))
def test_a_cut_off_document_raises_after_what_came_before(doc: dict[str, Any], cut: int) -> None:
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    cut = cut % len(data)
    with pytest.raises(JSONStreamError):
        for event in walk(
            io.BytesIO(data[:cut]), descend=lambda p: len(p) < 3, stream=lambda p: True, chunk=5
        ):
            if isinstance(event, Array):
                list(event.values())


def test_array_at_streams_one_nested_array() -> None:
    data = b'{"x": 1, "messages": [ {"id": 1}, {"id": [2, {"y": 3}]} ], "after": {}}'
    at = data.index(b"[")
    assert list(array_at(io.BytesIO(data), at).values()) == [{"id": 1}, {"id": [2, {"y": 3}]}]
    with pytest.raises(JSONStreamError):
        array_at(io.BytesIO(data), 0)


@pytest.mark.parametrize("chunk", [3, 64, 1 << 16])
def test_non_finite_numbers_read_as_in_streamed_elements(chunk: int) -> None:
    """`Infinity`, `-Infinity` and `NaN` (Python's `json.dumps` writes them) are read as
    floats in a field, as the element parser reads them in a streamed array."""
    data = b'{"a": Infinity, "b": [-Infinity, NaN], "c": -Infinity, "messages": [Infinity]}'
    fields = {
        e.path: e.value
        for e in walk(
            io.BytesIO(data), descend=lambda p: p == (), stream=lambda p: False, chunk=chunk
        )
        if isinstance(e, Field)
    }
    assert fields[("a",)] == float("inf") and fields[("c",)] == float("-inf")
    assert fields[("b",)][0] == float("-inf") and fields[("b",)][1] != fields[("b",)][1]
    streamed = [
        list(e.values())
        for e in walk(
            io.BytesIO(data),
            descend=lambda p: p == (),
            stream=lambda p: p == ("messages",),
            chunk=chunk,
        )
        if isinstance(e, Array)
    ]
    assert streamed == [[float("inf")]]
