"""Read a big export on two CPU cores: a helper process streams the file, stages half of
the conversations itself and hands the raw bytes of the other half to this process.

Parsing and shaping conversations is pure-Python work bound to one core; Parquet writing
runs in this process. Splitting the conversations between the two processes roughly
doubles throughput on a 2-core machine, while the helper keeps the single reading pass
(so streaming, byte offsets and "earlier conversations are kept" all still hold).

The helper is `python -m connectors.parallel`, started with `subprocess` (not
`multiprocessing`, which would re-import the caller's main module). It reads one pickled
job from stdin and writes length-prefixed frames to stdout, one tag byte each:
`T` + Arrow IPC stream (staged rows), `E` + pickled tuples (skip/quarantine events),
`R` + header + raw JSON of one conversation for the parent to process, `X` + error text,
`D` (done).
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from pipeline.errors import MemosError
from pipeline.models import Event, Message, MessageTable, Quarantined, Skipped

Handoff = Callable[[str, int, bytes], None]
"""Give one conversation away: (source_file label, index in that file, its raw JSON)."""
Producer = Callable[[Any, Handoff], Iterator[Event]]
"""Runs in the helper: yields events, and hands some conversations to the parent."""
RawHandler = Callable[[str, int, bytes], Iterator[Event]]
"""Runs in the parent: turns one handed-over conversation into events."""

_QUEUE_BYTES = 64 * 1024 * 1024
"""Frames buffered on each side of the pipe, so neither process waits for the other."""
_HEADER = struct.Struct("<QI")
_FRAME = struct.Struct("<Q")
_EVENTS_PER_MESSAGE = 512
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class _FrameQueue:
    """A FIFO of frames bounded by total bytes; `None` marks the end."""

    def __init__(self, max_bytes: int = _QUEUE_BYTES) -> None:
        self._items: collections.deque[bytes | None] = collections.deque()
        self._bytes = 0
        self._max = max_bytes
        self._cond = threading.Condition()

    def put(self, item: bytes | None) -> None:
        size = len(item) if item is not None else 0
        with self._cond:
            while self._bytes and self._bytes + size > self._max:
                self._cond.wait()
            self._items.append(item)
            self._bytes += size
            self._cond.notify_all()

    def get(self) -> bytes | None:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            self._bytes -= len(item) if item is not None else 0
            self._cond.notify_all()
            return item


def _pump_frames(stream: IO[bytes], frames: _FrameQueue) -> None:
    """Reader thread: move frames from the helper's pipe into the queue until it ends."""
    try:
        while (frame := _read_frame(stream)) is not None:
            frames.put(frame)
    except (OSError, ValueError):
        pass  # the pipe was closed under us: treated as the end
    finally:
        frames.put(None)


def _write_frames(out: IO[bytes], frames: _FrameQueue) -> None:
    """Writer thread: move frames from the queue into the pipe until the end marker."""
    try:
        while (frame := frames.get()) is not None:
            out.write(_FRAME.pack(len(frame)))
            out.write(frame)
        out.flush()
    except (BrokenPipeError, ValueError):
        pass  # the parent stopped reading


def read_in_two_processes(
    producer: Producer, producer_args: Any, handle_raw: RawHandler
) -> Iterator[Event]:
    """Events of `producer(producer_args, handoff)` run in a helper process, plus the events
    of `handle_raw` for every conversation it hands over. The helper is stopped when the
    caller stops early."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    helper = subprocess.Popen(
        [sys.executable, "-m", "connectors.parallel"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert helper.stdin is not None and helper.stdout is not None
    frames = _FrameQueue()
    pump = threading.Thread(target=_pump_frames, args=(helper.stdout, frames), daemon=True)
    ended = False
    try:
        helper.stdin.write(pickle.dumps((producer, producer_args)))
        helper.stdin.close()
        pump.start()
        while True:
            message = frames.get()
            if message is None:
                ended = True
                code = helper.wait(10)
                raise MemosError(
                    f"the helper process reading the export ended unexpectedly "
                    f"(exit code {code}); rerun with the source option `parallel: off`"
                )
            tag = message[:1]
            if tag == b"R":
                index, label_len = _HEADER.unpack_from(message, 1)
                start = 1 + _HEADER.size
                label = message[start : start + label_len].decode("utf-8")
                yield from handle_raw(label, index, message[start + label_len :])
            elif tag == b"T":
                yield MessageTable(pa.ipc.open_stream(message[1:]).read_all())
            elif tag == b"E":
                for item in pickle.loads(message[1:]):
                    yield Skipped(*item[1:]) if item[0] == "S" else Quarantined(*item[1:])
            elif tag == b"X":
                raise MemosError(f"reading the export failed: {message[1:].decode()}")
            else:  # b"D"
                break
        helper.wait(10)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(5)
        if pump.is_alive() and not ended:
            while frames.get() is not None:  # unblock the reader so it can see the end
                pass
        helper.stdout.close()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def _helper_main(out: IO[bytes], producer: Producer, producer_args: Any) -> int:
    """The helper's work: run the producer, stream its results back as frames."""
    pending: list[tuple[Any, ...]] = []
    frames = _FrameQueue()
    writer_thread = threading.Thread(target=_write_frames, args=(out, frames), daemon=True)
    writer_thread.start()

    def send(*parts: bytes) -> None:
        frames.put(b"".join(parts))

    def flush_events() -> None:
        if pending:
            send(b"E", pickle.dumps(pending, protocol=pickle.HIGHEST_PROTOCOL))
            pending.clear()

    def handoff(label: str, index: int, raw: bytes) -> None:
        encoded = label.encode("utf-8")
        send(b"R", _HEADER.pack(index, len(encoded)), encoded, raw)

    try:
        for event in producer(producer_args, handoff):
            if isinstance(event, MessageTable):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, event.table.schema) as writer:
                    writer.write_table(event.table)
                send(b"T", sink.getvalue().to_pybytes())
            elif isinstance(event, Skipped):
                pending.append(("S", event.reason, event.count))
            elif isinstance(event, Quarantined):
                pending.append(
                    ("Q", event.source_file, event.position, event.reason, event.excerpt)
                )
            elif isinstance(event, Message):
                raise TypeError("a two-process producer must yield MessageTable, not Message")
            if len(pending) >= _EVENTS_PER_MESSAGE:
                flush_events()
        flush_events()
        send(b"D")
        return 0
    except BaseException as exc:  # noqa: BLE001 - a process entry point reports everything
        send(b"X", f"{type(exc).__name__}: {exc}".encode())
        return 1
    finally:
        frames.put(None)
        writer_thread.join()


if __name__ == "__main__":
    job_producer, job_args = pickle.loads(sys.stdin.buffer.read())
    sys.exit(_helper_main(sys.stdout.buffer, job_producer, job_args))
