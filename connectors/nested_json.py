"""Stream the elements of arrays nested inside a JSON document, one element at a time.

`connectors.json_stream.iter_array` reads a top-level array. Telegram's `result.json`
and DiscordChatExporter's channel files put their (possibly million-element) message
arrays inside objects: `{"name": ..., "messages": [...]}`, or for a full Telegram export
`{"chats": {"list": [{"id": ..., "messages": [...]}, ...]}, ...}`. `walk` reads such a
document in chunks, descends into the containers the caller names, and yields

- `Field(path, value)` for every other value it passes (parsed whole: keep them small),
- `Array(path)` for an array the caller streams: iterate its `values()` there and then,
- `Enter(path)` / `Exit(path)` around each container it descends into or streams,

so memory holds one chunk plus the element being parsed. A path is a tuple of object
keys and array indexes from the document root. Elements are cut out and validated exactly
as `iter_array` does it (the same chunked buffer and element parser); the structure
around them (keys, separators, scalars) is tokenized here. The first malformed byte
raises `JSONStreamError` with its byte offset; everything before it has been yielded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from connectors.json_stream import CHUNK_BYTES, JSONStreamError, _Buffer, _parse_element

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Field:
    """A value at `path` that was neither descended into nor streamed."""

    path: Path
    value: Any


@dataclass(frozen=True, slots=True)
class Enter:
    """The walk enters the container at `path`."""

    path: Path


@dataclass(frozen=True, slots=True)
class Exit:
    """The walk leaves the container at `path` (every value inside it was yielded)."""

    path: Path


Select = Callable[[Path], bool]
Decode = Callable[[memoryview], Any]
DecodeRun = Callable[[bytes], "list[Any] | None"]

_WS_RUN = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {
    ord("t"): (b"true", True),
    ord("f"): (b"false", False),
    ord("n"): (b"null", None),
    ord("I"): (b"Infinity", float("inf")),
    ord("N"): (b"NaN", float("nan")),
}
"""Literals of a scalar value. `Infinity` and `NaN` are not JSON, but Python's `json.dumps`
writes them, and the element parser (the standard library's, after orjson) reads them in
the elements of a streamed array: a header field is read the same way."""
_MINUS_INFINITY = b"-Infinity"
_BOM = b"\xef\xbb\xbf"
_OPEN_OBJECT, _CLOSE_OBJECT = ord("{"), ord("}")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")
_QUOTE, _COLON, _COMMA = ord('"'), ord(":"), ord(",")


def walk(
    fh: IO[bytes], *, descend: Select, stream: Select, chunk: int = CHUNK_BYTES
) -> Iterator[WalkEvent]:
    """Walk the JSON document in `fh` (see the module docstring).

    `descend(path)` says whether to enter the object or array at `path` (the root is
    `()`); `stream(path)` whether the array at `path` is streamed element by element.
    Raises `JSONStreamError` at the first malformed byte or when data follows the document.
    """
    walker = _Walker(fh, descend, stream, chunk)
    yield from walker.document()


class _Walker:
    def __init__(self, fh: IO[bytes], descend: Select, stream: Select, chunk: int) -> None:
        self.buf = _Buffer(fh, chunk)
        self.descend = descend
        self.stream = stream
        self.items = 0
        """Elements yielded so far (for the error's element number)."""

    def error(self, message: str, pos: int) -> JSONStreamError:
        return JSONStreamError(message, index=self.items, offset=self.buf.base + pos)

    def document(self) -> Generator[WalkEvent, None, None]:
        buf = self.buf
        buf.more(0)
        if buf.data.startswith(_BOM):
            del buf.data[: len(_BOM)]
            buf.base = len(_BOM)
        pos = buf.skip_ws(0)
        if pos >= len(buf.data):
            raise self.error("the file is empty (expected a JSON document)", pos)
        pos = yield from self.value(pos, ())
        pos = buf.skip_ws(pos)
        if pos < len(buf.data):
            raise self.error("unexpected data after the end of the JSON document", pos)

    def value(self, pos: int, path: Path) -> Generator[WalkEvent, None, int]:
        """Walk the value starting at `pos` (a non-whitespace byte); return the index after it."""
        buf = self.buf
        first = buf.data[pos]
        if first == _OPEN_ARRAY and self.stream(path):
            yield Enter(path)
            pos = yield from self.streamed(pos, path)
            yield Exit(path)
            return pos
        if first in (_OPEN_OBJECT, _OPEN_ARRAY) and self.descend(path):
            yield Enter(path)
            if first == _OPEN_OBJECT:
                pos = yield from self.members(pos, path)
            else:
                pos = yield from self.elements(pos, path)
            yield Exit(path)
            return pos
        value, pos = self.whole(pos)
        yield Field(path, value)
        return pos

    def whole(self, pos: int) -> tuple[Any, int]:
        """Parse the value at `pos` whole: (value, index after it)."""
        first = self.buf.data[pos]
        if first == _QUOTE:
            return self.string(pos)
        if first in (_OPEN_OBJECT, _OPEN_ARRAY):
            value, (_, end) = _parse_element(self.buf, pos, self.items)
            return value, end
        literal = _LITERALS.get(first)
        if literal is not None:
            word, value = literal
            pos = self.ensure(pos, len(word) + 1)
            if self.buf.data[pos : pos + len(word)] != word:
                raise self.error("invalid JSON literal", pos)
            return value, pos + len(word)
        return self.number(pos)

    def ensure(self, pos: int, size: int) -> int:
        """Make `size` bytes from `pos` available when the file has them; the new `pos`."""
        buf = self.buf
        while len(buf.data) - pos < size and not buf.eof:
            pos -= buf.more(pos)
        return pos

    def string(self, pos: int) -> tuple[Any, int]:
        buf = self.buf
        while True:
            match = _STRING.match(buf.data, pos)
            if match is not None:
                try:
                    return orjson.loads(match.group()), match.end()
                except orjson.JSONDecodeError:
                    raise self.error("invalid JSON string", pos) from None
            if buf.eof:
                raise self.error("unexpected end of file (unterminated string)", pos)
            pos -= buf.more(pos)

    def number(self, pos: int) -> tuple[Any, int]:
        buf = self.buf
        pos = self.ensure(pos, 512)  # a number cut by the window's end would mis-match
        while True:
            match = _NUMBER.match(buf.data, pos)
            if match is None and buf.data.startswith(_MINUS_INFINITY, pos):
                return float("-inf"), pos + len(_MINUS_INFINITY)
            if match is None:
                found = bytes(buf.data[pos : pos + 1]).decode("latin-1")
                raise self.error(f"unexpected {found!r} where a JSON value was expected", pos)
            if match.end() < len(buf.data) or buf.eof:
                return orjson.loads(match.group()), match.end()
            pos -= buf.more(pos)

    def after(self, pos: int, close: int, what: str) -> tuple[bool, int]:
        """After a member or element: (True, index past `close`) at the end, else (False,
        index of the next value) after a comma."""
        buf = self.buf
        pos = buf.skip_ws(pos)
        if pos >= len(buf.data):
            raise self.error(f"unexpected end of file (the {what} is not closed)", pos)
        sep = buf.data[pos]
        if sep == close:
            return True, pos + 1
        if sep != _COMMA:
            found = chr(sep)
            raise self.error(f"expected ',' or {chr(close)!r} in {what}, found {found!r}", pos)
        pos = buf.skip_ws(pos + 1)
        if pos >= len(buf.data):
            raise self.error(f"unexpected end of file (the {what} is not closed)", pos)
        return False, pos

    def members(self, pos: int, path: Path) -> Generator[WalkEvent, None, int]:
        buf = self.buf
        pos = buf.skip_ws(pos + 1)
        if pos < len(buf.data) and buf.data[pos] == _CLOSE_OBJECT:
            return pos + 1
        while True:
            if pos >= len(buf.data) or buf.data[pos] != _QUOTE:
                raise self.error("expected a string key in object", pos)
            key, pos = self.string(pos)
            pos = buf.skip_ws(pos)
            if pos >= len(buf.data) or buf.data[pos] != _COLON:
                raise self.error("expected ':' after object key", pos)
            pos = buf.skip_ws(pos + 1)
            if pos >= len(buf.data):
                raise self.error("unexpected end of file (object value missing)", pos)
            pos = yield from self.value(pos, (*path, key))
            done, pos = self.after(pos, _CLOSE_OBJECT, "object")
            if done:
                return pos

    def elements(self, pos: int, path: Path) -> Generator[WalkEvent, None, int]:
        buf = self.buf
        pos = buf.skip_ws(pos + 1)
        if pos < len(buf.data) and buf.data[pos] == _CLOSE_ARRAY:
            return pos + 1
        index = 0
        while True:
            if pos >= len(buf.data):
                raise self.error("unexpected end of file (the array is not closed)", pos)
            pos = yield from self.value(pos, (*path, index))
            index += 1
            done, pos = self.after(pos, _CLOSE_ARRAY, "array")
            if done:
                return pos

    def streamed(self, pos: int, path: Path) -> Generator[WalkEvent, None, int]:
        """Hand the array's elements to the caller as one `Array` event (its `values()`
        are drained here if the caller stops early), then go on after the array."""
        array = Array(path, self, pos)
        yield array
        for _ in array.values():
            pass
        return array.end


class Array:
    """A streamed array at `path`: iterate `values()` for its elements, in order.

    Elements come straight from the parser rather than through the walk's chain of
    generators (one per nesting level), which costs about a microsecond per element at
    the depth of a full Telegram export. `values()` can be iterated once; `index` is the
    number of elements taken so far and `offset` the byte where the last one started.
    """

    def __init__(self, path: Path, walker: _Walker, pos: int) -> None:
        self.path = path
        self.index = 0
        self.offset = 0
        self.end = -1
        self._walker = walker
        self._pos = pos
        self._started = False

    def _first_element(self) -> int | None:
        """Where the first element starts; None when the array was already iterated (it
        can be once) or is empty (then `end` is set past its `]`)."""
        if self._started:
            return None
        self._started = True
        buf = self._walker.buf
        pos = buf.skip_ws(self._pos + 1)
        if pos < len(buf.data) and buf.data[pos] == _CLOSE_ARRAY:
            self.end = pos + 1
            return None
        return pos

    def values(self, decode: Decode = orjson.loads) -> Iterator[Any]:
        """The elements, in order. `decode` parses an element whose end the learned
        separator found (most elements of an indented array); it must return what
        `orjson.loads` would for every field the caller reads and raise
        `orjson.JSONDecodeError` where orjson does. Others are parsed generically."""
        first = self._first_element()
        if first is None:
            return
        walker = self._walker
        buf = walker.buf
        pos = first
        ws = _WS_RUN.match
        separator: re.Pattern[bytes] | None = None
        learn = True
        while True:
            if separator is not None:
                # The common case, inline: the learned separator ends the element within
                # the bytes at hand and `decode` takes it; the next element starts at the
                # separator's `{`. Anything else goes the general way below.
                data = buf.data
                while pos < len(data) and data[pos] == _OPEN_OBJECT:
                    match = separator.search(data, pos, pos + LEARN_WINDOW)
                    if match is None:
                        break
                    end = match.start() + 1
                    try:
                        value = decode(memoryview(data)[pos:end])
                    except orjson.JSONDecodeError:
                        break
                    self.offset = buf.base + pos
                    yield value
                    self.index += 1
                    walker.items += 1
                    pos = match.end() - 1
            if pos >= len(buf.data):
                raise walker.error("unexpected end of file (the array is not closed)", pos)
            if separator is not None:
                value, (start, pos) = _parse_separated(buf, pos, separator, walker.items, decode)
            else:
                value, (start, pos) = _parse_element(buf, pos, walker.items)
            self.offset = buf.base + start
            yield value
            self.index += 1
            walker.items += 1
            data = buf.data
            if pos < len(data) and data[pos] == _COMMA:  # the common case: `,` then space
                after = ws(data, pos + 1).end()  # type: ignore[union-attr]
                if after < len(data):
                    if learn:
                        learn = False
                        separator = _learned_separator(data[pos:after], data[after])
                    pos = after
                    continue
            done, pos = walker.after(pos, _CLOSE_ARRAY, "array")
            if done:
                self.end = pos
                return

    def runs(
        self, decode_run: DecodeRun, decode: Decode = orjson.loads
    ) -> Iterator[tuple[int, list[Any]]]:
        """The elements in runs, in order: (index of the run's first element, its values).

        Where the learned separator (see `_learned_separator`) is found about `RUN_BYTES`
        ahead, the elements up to it are handed to `decode_run` as one JSON array (`[`,
        the elements with their separators, `]`): one call instead of one per element, and
        no search for each element's end. A cut that is not between two elements of this
        array makes that text invalid JSON (it starts at an element and would end inside
        one, or after the array's `]`). `decode_run` returns the elements' values, or None
        for invalid JSON or any element it does not take: then those elements are read one
        at a time as `values(decode)` reads them (each a run of one), so errors and values
        are the same as theirs. Can be iterated once, instead of `values()`.
        """
        first = self._first_element()
        if first is None:
            return
        walker = self._walker
        buf = walker.buf
        pos = first
        ws = _WS_RUN.match
        separator: re.Pattern[bytes] | None = None
        cut_at = b""
        one_by_one_until = 0
        """File offset before which elements are read one at a time (a refused run)."""
        learn = True
        while True:
            if pos >= len(buf.data):
                raise walker.error("unexpected end of file (the array is not closed)", pos)
            values: list[Any] | None = None
            if cut_at and buf.base + pos >= one_by_one_until and buf.data[pos] == _OPEN_OBJECT:
                pos, cut = _run_end(buf, pos, cut_at)
                if cut > pos:
                    values = decode_run(b"[" + buf.data[pos:cut] + b"]")
                    if values is None:
                        one_by_one_until = buf.base + cut
                    else:
                        self.offset = buf.base + pos
                        pos = cut
            if values is None:
                if separator is not None:
                    value, (start, pos) = _parse_separated(
                        buf, pos, separator, walker.items, decode
                    )
                else:
                    value, (start, pos) = _parse_element(buf, pos, walker.items)
                self.offset = buf.base + start
                values = [value]
            yield self.index, values
            self.index += len(values)
            walker.items += len(values)
            data = buf.data
            if pos < len(data) and data[pos] == _COMMA:  # the common case: `,` then space
                after = ws(data, pos + 1).end()  # type: ignore[union-attr]
                if after < len(data):
                    if learn:
                        learn = False
                        separator = _learned_separator(data[pos:after], data[after])
                        if separator is not None:
                            cut_at = b"}" + bytes(data[pos:after]) + b"{"
                    pos = after
                    continue
            done, pos = walker.after(pos, _CLOSE_ARRAY, "array")
            if done:
                self.end = pos
                return


WalkEvent = Field | Enter | Exit | Array


LEARN_WINDOW = 1 << 20
"""How far `_parse_separated` looks for an element's learned end before giving up."""
RUN_BYTES = 64 * 1024
"""About how many bytes of elements `Array.runs` decodes in one call. Larger runs hold more
young objects at once, and the garbage collector's passes over them cost more than the
calls they save (64 KB: ~60 Discord messages)."""


def _run_end(buf: _Buffer, pos: int, cut_at: bytes) -> tuple[int, int]:
    """(`pos` after any read, index just past the `}` of the first learned separator at
    least `RUN_BYTES` after `pos`, else of the last one before that (the array's last
    elements, or elements too large for a run), else `pos`: none)."""
    while True:
        data = buf.data
        limit = pos + RUN_BYTES + LEARN_WINDOW
        found = data.find(cut_at, pos + RUN_BYTES, limit)
        if found >= 0:
            return pos, found + 1
        if buf.eof or len(data) >= limit:
            found = data.rfind(cut_at, pos, pos + RUN_BYTES + len(cut_at))
            return pos, (found + 1 if found >= 0 else pos)
        pos -= buf.more(pos)


def _learned_separator(between: bytearray, first: int) -> re.Pattern[bytes] | None:
    """The exact `}` + separator + `{` between two object elements of an indented array.

    Pretty-printers indent nested values deeper, so in indented output this byte sequence
    ends only elements of this array: the element parser's generic guess (any `}, {`) also
    stops inside nested arrays of objects (Telegram's text entities), and every wrong stop
    costs a failed parse. None for compact output (there the separators are all alike).
    """
    if first != _OPEN_OBJECT or b"\n" not in between:
        return None
    return re.compile(re.escape(b"}" + bytes(between) + b"{"))


def _parse_separated(
    buf: _Buffer, pos: int, separator: re.Pattern[bytes], index: int, decode: Decode
) -> tuple[Any, tuple[int, int]]:
    """Parse the element at `pos`, guessing its end at the learned separator (orjson
    confirms it); anything else (the array's last element, other layouts) falls back to
    the generic element parser."""
    if buf.data[pos] == _OPEN_OBJECT:
        search_from = pos
        while search_from - pos < LEARN_WINDOW:
            match = separator.search(buf.data, search_from, pos + LEARN_WINDOW)
            if match is None:
                if buf.eof or len(buf.data) >= pos + LEARN_WINDOW:
                    break
                searched = len(buf.data)
                shift = buf.more(pos)
                pos -= shift
                search_from = max(pos, searched - shift - 256)
                continue
            end = match.start() + 1
            try:
                return decode(memoryview(buf.data)[pos:end]), (pos, end)
            except orjson.JSONDecodeError:
                break
    return _parse_element(buf, pos, index)


def array_at(fh: IO[bytes], offset: int, path: Path = (), chunk: int = CHUNK_BYTES) -> Array:
    """The array whose `[` is at byte `offset` of the seekable `fh`, to stream by itself.

    For readers that found an array's start without walking the document (e.g. a worker
    handed one chat of a large file). Reading stops at the array's closing `]`; what
    follows is not looked at. Raises `JSONStreamError` when no `[` is at `offset`.
    """
    walker = _Walker(fh, _never, _never, chunk)
    fh.seek(offset)
    walker.buf.base = offset
    walker.buf.more(0)
    if not walker.buf.data.startswith(b"["):
        raise JSONStreamError("no JSON array starts here", index=0, offset=offset)
    return Array(path, walker, 0)


def _never(path: Path) -> bool:
    return False
