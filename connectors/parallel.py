"""Read a big export on two CPU cores: a helper process streams the file, stages some
conversations itself and hands the raw bytes of the others to this process.

Parsing and shaping conversations is pure-Python work bound to one core; Parquet writing
runs in this process. The helper hands over a fixed share of the conversations
(`HANDOFF_SHARE`, deterministic). It keeps the single reading pass, so streaming, byte
offsets and "earlier conversations are kept" all still hold; which process stages a
conversation never changes what is staged. Neither side uses threads (a reader thread
would fight the busy main thread for the GIL); a 1 MB pipe lets the helper run ahead.

The helper is `python -m connectors.parallel`, started with `subprocess` (not
`multiprocessing`, which would re-import the caller's main module). It reads one pickled
job from stdin and writes length-prefixed frames to stdout, one tag byte each:
`T` + Arrow IPC stream (staged rows), `E` + pickled tuples (skip/quarantine events),
`R` + header + raw JSON of one conversation for the parent to process, `X` + error text,
`D` (done).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from pipeline.errors import MemosError
from pipeline.models import Event, Message, MessageTable, Quarantined, Skipped

Handoff = Callable[[str, int, bytes], bool]
"""Offer one conversation (source_file label, index in that file, its raw JSON) to the
parent; False means the parent is busy and the helper should process it itself."""
Producer = Callable[[Any, Handoff], Iterator[Event]]
"""Runs in the helper: yields events, and hands some conversations to the parent."""
RawHandler = Callable[[str, int, bytes], Iterator[Event]]
"""Runs in the parent: turns one handed-over conversation into events."""

_PIPE_BYTES = 1024 * 1024
HANDOFF_SHARE = 0.6
"""Share of the conversations the helper hands to the parent: the parent also writes the
Parquet table, the helper also parses every conversation once to find its end."""
_HEADER = struct.Struct("<QI")
_FRAME = struct.Struct("<Q")
_EVENTS_PER_MESSAGE = 512
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _widen_pipe(stream: IO[bytes]) -> None:
    """Ask Linux for a 1 MB pipe buffer (default 64 KB), so the helper can run ahead."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)


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
    _widen_pipe(helper.stdout)
    try:
        helper.stdin.write(pickle.dumps((producer, producer_args)))
        helper.stdin.close()
        while True:
            message = _read_frame(helper.stdout)
            if message is None:
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

    def send(*parts: bytes) -> None:
        out.write(_FRAME.pack(sum(map(len, parts))))
        for part in parts:
            out.write(part)

    def flush_events() -> None:
        if pending:
            send(b"E", pickle.dumps(pending, protocol=pickle.HIGHEST_PROTOCOL))
            pending.clear()

    offered = [0, 0]  # conversations offered, conversations handed over

    def handoff(label: str, index: int, raw: bytes) -> bool:
        offered[0] += 1
        if offered[1] >= offered[0] * HANDOFF_SHARE:
            return False
        offered[1] += 1
        encoded = label.encode("utf-8")
        send(b"R", _HEADER.pack(index, len(encoded)), encoded, raw)
        return True

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
        with contextlib.suppress(OSError):
            out.flush()


if __name__ == "__main__":
    job_producer, job_args = pickle.loads(sys.stdin.buffer.read())
    sys.exit(_helper_main(sys.stdout.buffer, job_producer, job_args))
