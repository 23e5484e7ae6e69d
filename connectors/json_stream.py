"""Stream the elements of a top-level JSON array without loading the whole file.

Chat exports are one huge array (`[conv, conv, ...]`, 700 MB and more). `iter_array`
reads it in chunks and yields one parsed element at a time, so memory holds one chunk
plus the element being parsed.

How elements are cut out: the fast path guesses an element's end at the next
`}` `,` `{` sequence and lets orjson confirm it (one C call per element). When the guess
is wrong (that sequence also occurs inside nested arrays of objects), the element is
parsed with the standard library's incremental `raw_decode`, which finds the real end.
Either way every element is fully validated JSON. The first malformed or truncated
element raises `JSONStreamError` naming its index and byte offset; every element before
it has already been yielded.

Numbers follow orjson: integers beyond 64 bits come back as floats (chat exports hold none).

A top-level object is also accepted when it wraps the array under a known key
(`{"conversations": [...]}`); that rare form is read whole, so it must fit in the element
limit.

Memory is bounded by the element limit (`max_element`, default `MAX_ELEMENT_BYTES`): an
element larger than that is an error, found while its bytes are read and never buffered
further. An element nested deeper than the parsers allow (about 1,000 levels) is skipped
with a byte scanner that keeps no structure and comes back as a `BadElement`, so one such
record does not end the file.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import msgspec
import orjson

CHUNK_BYTES = 8 * 1024 * 1024
MAX_ELEMENT_BYTES = 128 * 1024 * 1024
"""A single array element larger than this is reported as an error, not buffered on.
Parsing an element takes about 6-18 times its size in memory, so this bounds the peak."""
MAX_GUESSES = 16
"""Wrong end guesses tolerated per element before the exact (slower) parser takes over."""
SLOW_WINDOW_BYTES = 256 * 1024
_NEAR_END = 16

_CANDIDATE_END = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
_WS = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_DECODER = json.JSONDecoder(strict=False)
"""Raw control characters inside strings (a stray NUL) are kept, not fatal."""
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class StreamedElement:
    """One array element: its 0-based `index`, the byte `offset` it starts at, its value."""

    index: int
    offset: int
    value: Any


@dataclass(frozen=True)
class BadElement:
    """Stands for an element that was skipped whole (`reason` says why): the value of its
    `StreamedElement`, so callers can quarantine just that element."""

    reason: str


class JSONStreamError(ValueError):
    """The stream stopped being valid JSON at element `index`, byte `offset`."""

    def __init__(self, message: str, *, index: int, offset: int) -> None:
        super().__init__(message)
        self.index = index
        self.offset = offset


class _Buffer:
    """A sliding window over a binary stream; `base` is the file offset of `data[0]`.

    Both the window and the block it reads into are reused: a fresh 8 MB `bytes` per read
    costs more in page faults than the read itself.
    """

    def __init__(self, fh: IO[bytes], chunk: int, max_element: int = MAX_ELEMENT_BYTES) -> None:
        self.fh = fh
        self.chunk = chunk
        self.max_element = max_element
        self.data = bytearray()
        self.base = 0
        self.eof = False
        self._block = bytearray(chunk)

    def more(self, keep_from: int) -> int:
        """Drop bytes before `keep_from`, append a chunk; return the shift applied to indexes."""
        if self.eof:
            return 0
        got = _read_into(self.fh, self._block)
        if not got:
            self.eof = True
        del self.data[:keep_from]
        with memoryview(self._block) as block:
            self.data += block[:got]
        self.base += keep_from
        return keep_from

    def skip_ws(self, pos: int) -> int:
        """Index of the next non-whitespace byte at or after `pos` (reads on as needed)."""
        while True:
            data = self.data
            n = len(data)
            while pos < n and data[pos] in _WS:
                pos += 1
            if pos < n or self.eof:
                return pos
            pos -= self.more(pos)


def _read_into(fh: IO[bytes], target: bytearray | memoryview) -> int:
    """`fh.readinto(target)` (every binary file object has it; `IO` does not say so)."""
    return cast(io.BufferedIOBase, fh).readinto(target) or 0


def iter_array(
    fh: IO[bytes],
    *,
    wrapper_keys: tuple[str, ...] = ("conversations",),
    chunk: int = CHUNK_BYTES,
    start: int = 0,
    index: int = 0,
    max_element: int = MAX_ELEMENT_BYTES,
) -> Iterator[StreamedElement]:
    """Yield the elements of the JSON array in `fh` one by one (see module docstring).

    With `start`, reading begins at that byte offset, which must be where an element of the
    array begins (see `find_element_start`): offsets stay file offsets, indexes count from
    `index` there (see `count_elements`). Raises `JSONStreamError` at the first element
    that is malformed or cut off (after yielding all earlier ones), or when the top level
    is neither an array nor an object wrapping one under `wrapper_keys`, or when an element
    (or a wrapping object) is larger than `max_element` bytes. An element nested too deeply
    to parse is yielded with a `BadElement` value.
    """
    buf = _Buffer(fh, chunk, max_element)
    if start:
        fh.seek(start)
        buf.base = start
        buf.more(0)
        yield from _elements(buf, buf.skip_ws(0), index)
        return
    buf.more(0)
    if buf.data.startswith(_BOM):
        buf.data = buf.data[len(_BOM) :]
        buf.base = len(_BOM)
    pos = buf.skip_ws(0)
    if pos >= len(buf.data):
        raise JSONStreamError(
            "the file is empty (expected a JSON array)", index=0, offset=buf.base + pos
        )
    first = buf.data[pos : pos + 1]
    if first == b"{":
        yield from _wrapped(buf, pos, wrapper_keys)
        return
    if first != b"[":
        raise JSONStreamError(
            f"expected a JSON array, found {first.decode('latin-1')!r}",
            index=0,
            offset=buf.base + pos,
        )
    pos = buf.skip_ws(pos + 1)
    if pos < len(buf.data) and buf.data[pos : pos + 1] == b"]":
        _expect_end(buf, pos + 1, 0)
        return
    yield from _elements(buf, pos)


def _elements(buf: _Buffer, pos: int, index: int = 0) -> Iterator[StreamedElement]:
    """The elements from `pos` (an element's first byte, numbered `index`) to the array's
    closing `]`."""
    while True:
        if pos >= len(buf.data):
            raise JSONStreamError(
                "unexpected end of file (the array is not closed)",
                index=index,
                offset=buf.base + pos,
            )
        value, (start, pos) = _parse_element(buf, pos, index)
        yield StreamedElement(index, buf.base + start, value)
        index += 1
        pos = buf.skip_ws(pos)
        sep = buf.data[pos : pos + 1]
        if sep == b",":
            pos = buf.skip_ws(pos + 1)
            continue
        if sep == b"]":
            _expect_end(buf, pos + 1, index)
            return
        if not sep:
            raise JSONStreamError(
                "unexpected end of file (the array is not closed)",
                index=index,
                offset=buf.base + pos,
            )
        raise JSONStreamError(
            f"expected ',' or ']' after element, found {sep.decode('latin-1')!r}",
            index=index,
            offset=buf.base + pos,
        )


def find_element_start(
    fh: IO[bytes],
    near: int,
    accept: Callable[[Any], bool],
    *,
    max_candidates: int = 64,
    window: int = 4 * 1024 * 1024,
) -> int | None:
    """A byte offset at or after `near` where an array element that `accept`s begins.

    Candidates are the `{` of each `}, {` sequence; each is parsed as an element and kept
    only if `accept` says it looks like a top-level element. This is a good guess, not a
    proof: the same bytes can occur inside a nested array, so whoever reads the array
    from its start must confirm that an element really begins there.
    """
    fh.seek(near)
    data = fh.read(window)
    tried = 0
    for match in _CANDIDATE_END.finditer(data):
        if tried >= max_candidates:
            break
        tried += 1
        offset = near + match.end() - 1
        try:
            first = next(iter_array(fh, start=offset, chunk=1024 * 1024), None)
        except JSONStreamError:
            continue
        if first is not None and accept(first.value):
            return offset
    return None


_SKIM = msgspec.json.Decoder(list[msgspec.Raw])
SKIM_TAIL_BYTES = 1024 * 1024
"""Where `count_elements` looks for a place to cut a run: the last MB of its window."""
SKIM_TRIES = 8


def count_elements(fh: IO[bytes], stop: int, *, chunk: int = CHUNK_BYTES) -> int | None:
    """How many elements of the top-level JSON array in `fh` begin before byte `stop`.

    `stop` must be where an object element begins (as `find_element_start` finds). The
    bytes before it are skimmed, not parsed: runs of elements are cut at a `}, {` and
    checked as one array by msgspec (no Python objects), in one reused buffer. None when
    that fails (a top level that is not a plain array, a `stop` inside an element, damage,
    or no usable cut); whoever reads the array must still confirm the count.
    """
    first = _first_element(fh)
    if first is None or first >= stop:
        return 0 if first == stop else None
    window = bytearray(max(chunk, 16) + 1)
    window[0] = ord("[")  # window[i] holds byte `at + i` of the file for i >= 1
    filled, at, count = 1, first - 1, 0
    fh.seek(first)
    while True:
        room = min(len(window) - filled, stop + 1 - at - filled)
        if room > 0:
            with memoryview(window) as view:
                got = _read_into(fh, view[filled : filled + room])
            if not got:
                return None
            filled += got
        run = _skim_run(window, filled, stop - at)
        if run is None:
            if at + filled > stop or len(window) > MAX_ELEMENT_BYTES:
                return None  # every byte up to `stop` is in, yet no usable cut
            if filled == len(window):  # one element fills the window: grow it
                window.extend(bytes(len(window)))
            continue
        found, cut = run
        count += found
        if at + cut == stop:
            return count
        window[1 : 1 + filled - cut] = window[cut:filled]  # the rest moves to the front
        at, filled = at + cut - 1, filled - cut + 1


def _first_element(fh: IO[bytes]) -> int | None:
    """The offset of the first byte after the opening `[` and any whitespace (None when
    the file does not start with an array)."""
    fh.seek(0)
    head = fh.read(4096)
    pos, base, opened = (len(_BOM) if head.startswith(_BOM) else 0), 0, False
    while True:
        while pos < len(head) and head[pos] in _WS:
            pos += 1
        if pos == len(head):
            base += len(head)
            head, pos = fh.read(4096), 0
            if not head:
                return None
        elif opened:
            return base + pos
        elif head[pos : pos + 1] == b"[":
            opened, pos = True, pos + 1
        else:
            return None


def _skim_run(window: bytearray, filled: int, stop: int) -> tuple[int, int] | None:
    """(elements, index of the `{` after the cut) for the longest run of whole elements
    in `window[:filled]` (which starts with `[`) ending at a `}, {` whose `{` is at most
    at index `stop`."""
    limit = min(filled, stop + 1)
    cuts = list(_CANDIDATE_END.finditer(window, max(1, limit - SKIM_TAIL_BYTES), limit))
    if not cuts and limit - SKIM_TAIL_BYTES > 1:
        cuts = list(_CANDIDATE_END.finditer(window, 1, limit))
    for cut in reversed(cuts[-SKIM_TRIES:]):
        end = cut.start() + 1
        saved = window[end]
        window[end] = ord("]")  # a separator byte (`,` or space): the run is an array
        try:
            with memoryview(window) as view:
                found = len(_SKIM.decode(view[: end + 1]))
        except (msgspec.DecodeError, RecursionError):
            continue  # a `}, {` inside an element (or damage): try an earlier one
        finally:
            window[end] = saved
        return found, cut.end() - 1
    return None


def _parse_element(buf: _Buffer, pos: int, index: int) -> tuple[Any, tuple[int, int]]:
    """Parse the element at `pos`: (value, (start, end) in current indexes)."""
    search_from = pos
    misses = 0
    if buf.data[pos : pos + 1] == b"{":
        while misses < MAX_GUESSES:
            match = _CANDIDATE_END.search(buf.data, search_from)
            if match is None:
                if buf.eof:
                    break
                _check_size(buf, pos, index)
                searched = len(buf.data)
                shift = buf.more(pos)
                pos -= shift
                search_from = max(pos, searched - shift - 1024)
                continue
            end = match.start() + 1
            try:
                value = orjson.loads(memoryview(buf.data)[pos:end])
            except orjson.JSONDecodeError:
                misses += 1  # a nested `}, {` (or bad JSON): try the next one, then be exact
                search_from = match.end()
                continue
            return value, (pos, end)
    return _slow_parse(buf, pos, index)


def _slow_parse(buf: _Buffer, pos: int, index: int) -> tuple[Any, tuple[int, int]]:
    """Parse one element exactly with the stdlib scanner, reading on while it is cut off.

    A value or an error that reaches the end of the text at hand may just be cut off by the
    window or the buffer (a number or `true` split in two, an open string): then the window
    grows, or more of the file is read, before the result counts.
    """
    window = SLOW_WINDOW_BYTES
    while True:
        stop = pos + window
        text = buf.data[pos:stop].decode("utf-8", "surrogateescape")
        more_exists = stop < len(buf.data) or not buf.eof
        try:
            value, end_char = _DECODER.raw_decode(text)
        except RecursionError:
            return _skip_deep(buf, pos, index)
        except json.JSONDecodeError as exc:
            unterminated = exc.msg.startswith("Unterminated")
            maybe_cut = exc.pos >= len(text) - _NEAR_END or unterminated
            if not (maybe_cut and more_exists):
                at = buf.base + pos + len(text[: exc.pos].encode("utf-8", "surrogateescape"))
                at_end = exc.pos >= len(text.rstrip()) or unterminated
                what = "unexpected end of file" if at_end else exc.msg
                raise JSONStreamError(what, index=index, offset=at) from None
        else:
            if end_char < len(text) - _NEAR_END or not more_exists:
                end = pos + len(text[:end_char].encode("utf-8", "surrogateescape"))
                try:
                    return _restore_surrogates(value), (pos, end)
                except RecursionError:
                    return BadElement(_TOO_DEEP), (pos, end)
        if stop < len(buf.data):
            window *= 4
            continue
        _check_size(buf, pos, index)
        pos -= buf.more(pos)
        window = max(window, len(buf.data) - pos)


def _check_size(buf: _Buffer, pos: int, index: int) -> None:
    """Refuse to buffer more of an element that already exceeds the element limit."""
    if len(buf.data) - pos > buf.max_element:
        raise _too_large(buf, index, buf.base + pos)


def _too_large(buf: _Buffer, index: int, offset: int) -> JSONStreamError:
    n = buf.max_element
    size = f"{n // 2**20} MB" if n >= 2**20 else f"{n} bytes"
    return JSONStreamError(
        f"element larger than {size} or not closed (option max_record_bytes)",
        index=index,
        offset=offset,
    )


_TOO_DEEP = "nested deeper than the JSON parser allows (about 1,000 levels)"
_IN_STRING = re.compile(rb'["\\]')
_STRUCTURE = re.compile(rb'"|[\[{]+|[\]}]+')


def _skip_deep(buf: _Buffer, pos: int, index: int) -> tuple[BadElement, tuple[int, int]]:
    """Find the end of the container element at `pos` without building it (it is too deep
    for the parsers): a scanner that tracks only strings and bracket depth, keeps no
    structure and checks nothing else. Returns a `BadElement` and the element's span."""
    depth = 0
    i = pos
    in_string = False
    start = buf.base + pos
    while True:
        data = buf.data
        if in_string:
            m = _IN_STRING.search(data, i)
            if m is None:
                i = len(data)
            elif data[m.start()] == 0x5C:  # a backslash: skip the character it escapes
                if m.start() + 1 < len(data):
                    i = m.start() + 2
                    continue
                i = m.start()  # what it escapes is in the next chunk
            else:
                in_string, i = False, m.end()
                continue
        else:
            m = _STRUCTURE.search(data, i)
            if m is not None:
                token = m.group()
                i = m.end()
                if token == b'"':
                    in_string = True
                elif token[0] in b"[{":
                    depth += len(token)
                elif depth <= len(token):
                    end = i - (len(token) - depth)
                    return BadElement(_TOO_DEEP), (pos, end)
                else:
                    depth -= len(token)
                continue
            i = len(data)
        if buf.eof:
            raise JSONStreamError("unexpected end of file", index=index, offset=buf.base + i)
        if buf.base + i - start > buf.max_element:
            raise _too_large(buf, index, start)
        # Only the scan position is needed from here on: drop what lies before it.
        shift = buf.more(i)
        i -= shift
        pos -= shift


def _restore_surrogates(value: Any) -> Any:
    """Surrogates cannot be stored as UTF-8: invalid input bytes (decoded with
    surrogateescape) and lone `\\ud83d`-style escapes both become U+FFFD."""
    if isinstance(value, str):
        if value.isascii() or _SURROGATE.search(value) is None:
            return value
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_restore_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_restore_surrogates(k): _restore_surrogates(v) for k, v in value.items()}
    return value


def _expect_end(buf: _Buffer, pos: int, index: int) -> None:
    pos = buf.skip_ws(pos)
    if pos < len(buf.data):
        raise JSONStreamError(
            "unexpected data after the closing ']'", index=index, offset=buf.base + pos
        )


def _wrapped(buf: _Buffer, pos: int, keys: tuple[str, ...]) -> Iterator[StreamedElement]:
    """The rare `{"conversations": [...]}` form: read whole (within the element limit),
    then yield its array."""
    while not buf.eof:
        _check_size(buf, pos, 0)
        buf.more(0)
    _check_size(buf, pos, 0)
    try:
        doc = orjson.loads(buf.data[pos:])
    except orjson.JSONDecodeError as exc:
        raise JSONStreamError(f"malformed JSON: {exc}", index=0, offset=buf.base + pos) from None
    for key in keys:
        items = doc.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                yield StreamedElement(i, buf.base + pos, item)
            return
    raise JSONStreamError(
        f"expected a JSON array (or an object with {', '.join(map(repr, keys))})",
        index=0,
        offset=buf.base + pos,
    )
