"""The streaming array reader behind the ChatGPT and Claude connectors (property tests)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.json_stream import (
    JSONStreamError,
    StreamedElement,
    count_elements,
    find_element_start,
    iter_array,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
layouts = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"indent": 2, "sort_keys": True},
        {"separators": (",", ":")},
        {"ensure_ascii": False},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def read_all(data: bytes, chunk: int) -> list[StreamedElement]:
    return list(iter_array(io.BytesIO(data), chunk=chunk))


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(json_values, max_size=8),
    layout=layouts,
    chunk=st.integers(min_value=1, max_value=64),
)
def test_any_array_round_trips_in_any_layout_and_chunking(
    items: list[Any], layout: dict[str, Any], chunk: int
) -> None:
    data = json.dumps(items, **layout).encode("utf-8")
    got = read_all(data, chunk)
    assert [e.value for e in got] == items
    assert [e.index for e in got] == list(range(len(items)))
    for element in got:  # offsets point at the element's first byte
        text = data[element.offset :].decode("utf-8")
        assert json.JSONDecoder().raw_decode(text)[0] == element.value


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(json_values, min_size=1, max_size=6),
    layout=layouts,
    chunk=st.integers(min_value=1, max_value=64),
    data=st.data(),
)
def test_a_cut_file_yields_a_prefix_then_one_error(
    items: list[Any], layout: dict[str, Any], chunk: int, data: st.DataObject
) -> None:
    full = json.dumps(items, **layout).encode("utf-8")
    cut = data.draw(st.integers(min_value=0, max_value=full.rindex(b"]") - 1))
    got: list[Any] = []
    with pytest.raises(JSONStreamError) as err:
        for element in iter_array(io.BytesIO(full[:cut]), chunk=chunk):
            got.append(element.value)
    assert got[:-1] == items[: max(len(got) - 1, 0)]
    if got and got[-1] != items[len(got) - 1]:  # only a number cut short at the very end
        assert isinstance(got[-1], (int, float)) and isinstance(items[len(got) - 1], (int, float))
    assert err.value.index == len(got)
    assert 0 <= err.value.offset <= cut


def test_nested_object_lists_need_the_exact_parser_and_still_split_right() -> None:
    items = [{"parts": [{"a": 1}, {"b": "}, {"}]}, {"c": [{"d": [{"e": 1}, {"f": 2}]}]}, 3]
    for chunk in (1, 7, 1 << 20):
        assert [e.value for e in read_all(json.dumps(items).encode(), chunk)] == items


def test_byte_order_mark_is_skipped() -> None:
    data = b"\xef\xbb\xbf" + json.dumps([{"n": 2**63}, {"m": -1.5}]).encode()
    got = read_all(data, 5)
    assert [e.value for e in got] == [{"n": 2**63}, {"m": -1.5}]
    assert got[0].offset == 4


def test_wrapper_object_and_errors() -> None:
    wrapped = json.dumps({"conversations": [{"id": 1}, {"id": 2}]}).encode()
    assert [e.value for e in read_all(wrapped, 4)] == [{"id": 1}, {"id": 2}]
    cases = {
        b"": "empty",
        b'"text"': "expected a JSON array",
        b'{"other": []}': "expected a JSON array",
        b"[1, 2] 3": "after the closing",
        b"[1 2]": "expected ','",
        b'[{"a": 1}, {"b": tru}]': "Expecting value",
    }
    for data, message in cases.items():
        with pytest.raises(JSONStreamError, match=message):
            read_all(data, 3)


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters() -> None:
    data = b'[{"a": "ok"}, {"b": "bad \xff byte"}, {"c": "half \\ud83d emoji"}, {"\\udc00": 1}]'
    assert [e.value for e in read_all(data, 4)] == [
        {"a": "ok"},
        {"b": "bad \ufffd byte"},
        {"c": "half \ufffd emoji"},
        {"\ufffd": 1},
    ]


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(json_values, min_size=1, max_size=8),
    layout=layouts,
    chunk=st.integers(min_value=1, max_value=64),
    data=st.data(),
)
def test_reading_from_an_element_start_yields_the_rest_with_file_offsets(
    items: list[Any], layout: dict[str, Any], chunk: int, data: st.DataObject
) -> None:
    raw = json.dumps(items, **layout).encode("utf-8")
    whole = read_all(raw, chunk)
    at = data.draw(st.integers(0, len(whole) - 1))
    rest = list(iter_array(io.BytesIO(raw), chunk=chunk, start=whole[at].offset))
    assert [(e.offset, e.value) for e in rest] == [(e.offset, e.value) for e in whole[at:]]
    assert [e.index for e in rest] == list(range(len(whole) - at))


def test_a_cut_file_read_from_an_element_start_reports_the_file_offset() -> None:
    raw = b'[{"a": 1}, {"b": 2}, {"c": '
    start = raw.index(b'{"b"')
    elements = iter_array(io.BytesIO(raw), start=start)
    assert next(elements).value == {"b": 2}
    with pytest.raises(JSONStreamError) as err:
        next(elements)
    assert (err.value.index, err.value.offset) == (1, len(raw))


def test_element_start_is_found_past_nested_lookalikes() -> None:
    inner = {"parts": [{"p": 1}, {"p": 2}], "filler": "x" * 50}
    items = [{"mapping": {}, "n": i, "inner": inner} for i in range(4)]
    raw = json.dumps(items).encode("utf-8")
    starts = [e.offset for e in read_all(raw, 7)]
    nested = raw.index(b'{"p": 2}')
    assert nested not in starts
    looks_top = lambda v: isinstance(v, dict) and "mapping" in v  # noqa: E731
    assert find_element_start(io.BytesIO(raw), nested - 3, looks_top) == starts[1]
    assert find_element_start(io.BytesIO(raw), nested - 3, lambda v: True) == nested
    assert find_element_start(io.BytesIO(raw), starts[3], looks_top) is None


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(json_values | st.dictionaries(st.text(max_size=3), json_values), max_size=8),
    layout=layouts,
    chunk=st.integers(min_value=1, max_value=64),
)
def test_counted_elements_before_an_object_start_are_its_index_or_none(
    items: list[Any], layout: dict[str, Any], chunk: int
) -> None:
    raw = json.dumps(items, **layout).encode("utf-8")
    for element in read_all(raw, chunk):
        if isinstance(element.value, dict):
            found = count_elements(io.BytesIO(raw), element.offset, chunk=chunk)
            assert found in (element.index, None)


def test_elements_are_counted_past_nested_lookalikes_and_never_miscounted() -> None:
    inner = {"parts": [{"p": 1}, {"p": 2}], "filler": "x" * 50}
    items = [{"mapping": {}, "n": i, "inner": inner} for i in range(40)]
    raw = b"\xef\xbb\xbf" + json.dumps(items, indent=1).encode("utf-8")
    starts = [e.offset for e in read_all(raw, 7)]
    for chunk in (64, 1000, 1 << 20):
        assert [count_elements(io.BytesIO(raw), s, chunk=chunk) for s in starts] == list(range(40))
    nested = raw.rindex(b"{", 0, raw.index(b'"p": 2', starts[30]))
    assert count_elements(io.BytesIO(raw), nested) is None
    assert count_elements(io.BytesIO(raw), starts[30] + 1) is None
    assert count_elements(io.BytesIO(b'{"conversations": [{}, {}]}'), 20) is None
