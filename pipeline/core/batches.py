"""The batch file: the chunker's output and the loader's input.

`<workdir>/batches/batches.jsonl` holds one batch per line, in delivery order (a
conversation's batches in sequence); `manifest.json` beside it records the limits and
counts that produced it. Both are replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.workdir import batches_dir, batches_path


@dataclass(frozen=True, slots=True)
class Batch:
    """One addMessage request and its lineage.

    `body` is the exact request body except for load-time fields (`async_mode`,
    `agent_id`, `app_id`). `message_ids` and `content_hashes` name the staged messages it
    carries, in order; `part` is `(k, n)` when the batch carries part k of n of one
    message too large for a single request. `redacted` counts the matches masked in the
    body, per kind (a split message counts in its first part only).
    """

    batch_id: str
    user_id: str
    conversation_id: str
    index: int
    message_ids: tuple[str, ...]
    content_hashes: tuple[str, ...]
    tokens: int
    body: dict[str, Any]
    part: tuple[int, int] | None = None
    redacted: dict[str, int] = field(default_factory=dict)

    @property
    def message_count(self) -> int:
        """Number of messages in the request body."""
        return len(self.body["messages"])

    def to_json(self) -> dict[str, Any]:
        """The batch as one JSON object (a line of `batches.jsonl`)."""
        return {
            "batch_id": self.batch_id,
            "user_id": self.user_id,
            "conversation_id": self.conversation_id,
            "index": self.index,
            "message_ids": list(self.message_ids),
            "content_hashes": list(self.content_hashes),
            "tokens": self.tokens,
            "part": list(self.part) if self.part else None,
            "redacted": self.redacted,
            "body": self.body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        """Inverse of `to_json`."""
        part = data.get("part")
        return cls(
            batch_id=data["batch_id"],
            user_id=data["user_id"],
            conversation_id=data["conversation_id"],
            index=data["index"],
            message_ids=tuple(data["message_ids"]),
            content_hashes=tuple(data["content_hashes"]),
            tokens=data["tokens"],
            body=data["body"],
            part=(part[0], part[1]) if part else None,
            redacted=dict(data.get("redacted") or {}),
        )


def encode_batch(batch: Batch) -> bytes:
    """One line of the batch file (with its newline)."""
    return orjson.dumps(batch.to_json(), option=orjson.OPT_APPEND_NEWLINE)


def write_batches(workdir: Path, batches: Iterable[Batch]) -> int:
    """Write all batches atomically (temp file, then rename); returns the batch count."""
    folder = batches_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = batches_path(workdir).with_suffix(".jsonl.tmp")
    count = 0
    with tmp.open("wb") as out:
        for batch in batches:
            out.write(encode_batch(batch))
            count += 1
    os.replace(tmp, batches_path(workdir))
    return count


def read_batches(workdir: Path) -> Iterator[Batch]:
    """Stream batches from the batch file, in delivery order."""
    with batches_path(workdir).open("rb") as fh:
        for line in fh:
            if line.strip():
                yield Batch.from_json(orjson.loads(line))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp name, then `os.replace` it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)
