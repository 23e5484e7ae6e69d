"""The nested-array JSON walker: any document, any chunk size, any indentation."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import nested_json
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


def _streamed(data: bytes, chunk: int, runs: bool, refuse: str = "") -> list[Any]:
    """Every streamed array's (index, element) pairs, through `runs()` or `values()`; a
    run holding an object with the key `refuse` is refused by its decoder."""

    def decode_run(text: bytes) -> list[Any] | None:
        try:
            values: list[Any] = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return None if any(type(v) is dict and refuse in v for v in values) else values

    out: list[Any] = []
    for event in walk(io.BytesIO(data), descend=lambda p: len(p) < 2, stream=bool, chunk=chunk):
        if isinstance(event, Array):
            if runs:
                for first, values in event.runs(decode_run):
                    out.extend(enumerate(values, first))
            else:
                out.extend(enumerate(event.values()))
            out.append(("end", event.index))
    return out


ELEMENTS = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "x"]), JSON, max_size=3)
    | st.lists(st.dictionaries(st.text(max_size=2), JSON, max_size=2), max_size=2),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    arrays=st.lists(ELEMENTS, min_size=1, max_size=3),
    chunk=st.sampled_from([1, 5, 64, 1 << 20]),
    run_bytes=st.sampled_from([1, 20, 200]),
    refuse=st.sampled_from(["", "x", "none"]),
)
def test_runs_give_what_values_give(
    arrays: list[list[Any]], chunk: int, run_bytes: int, refuse: str
) -> None:
    """Any arrays (objects with nested arrays of objects indented like them, other
    values), any chunk and run size, refused runs or not: the same elements at the same
    indexes, and the same error at the same place for a cut-off document."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nested_json, "RUN_BYTES", run_bytes)
        _same_from_runs_and_values(arrays, chunk, refuse)


def _same_from_runs_and_values(arrays: list[list[Any]], chunk: int, refuse: str) -> None:
    doc = {"head": 1, **{f"messages{i}": a for i, a in enumerate(arrays)}, "tail": [{"t": 1}]}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    assert _streamed(data, chunk, True, refuse) == _streamed(data, chunk, False)
    cut = data[: len(data) * 2 // 3]
    errors = []
    for runs in (True, False):
        with pytest.raises(JSONStreamError) as caught:
            _streamed(cut, chunk, runs, refuse)
        errors.append((caught.value.index, caught.value.offset, str(caught.value)))
    assert errors[0] == errors[1]


def test_runs_decode_many_elements_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nested_json, "RUN_BYTES", 400)
    elements = [{"id": i, "text": "x" * 20, "list": [{"a": 1}, {"b": 2}]} for i in range(100)]
    data = orjson.dumps({"messages": elements}, option=orjson.OPT_INDENT_2)
    sizes = []
    for event in walk(io.BytesIO(data), descend=lambda p: p == (), stream=bool, chunk=1000):
        if not isinstance(event, Array):
            continue
        for first, values in event.runs(orjson.loads):
            assert values == elements[first : first + len(values)]
            sizes.append(len(values))
    assert sum(sizes) == 100
    assert max(sizes) >= 2 and len(sizes) < 60
