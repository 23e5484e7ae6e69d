"""A tiny JSONL test connector, registered as source kind "jsonl" for one test.

Each input line is one record: a JSON object becomes a `Message` (fields: message_id,
conversation_id, user_id, role, content, created_at ISO 8601 or null, seq defaults to
the line number), `{"skip": "reason"}` a `Skipped`, and a line that is not JSON a
`Quarantined` record at "line N". Counts in tests can so be made by hand.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors import base
from connectors.base import ConnectorOptions
from pipeline.core.models import Event, Message, Quarantined, Skipped

MODULE = "memos_etl_test_jsonl"


class Options(ConnectorOptions):
    """No options beyond user_id."""


def read(path: Path, options: Options) -> Iterator[Event]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj: dict[str, Any] = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield Quarantined(str(path), f"line {n}", "invalid JSON", line)
                continue
            if "skip" in obj:
                yield Skipped(obj["skip"])
                continue
            created = obj.get("created_at")
            yield Message(
                source="jsonl",
                source_file=path.name,
                source_position=f"line {n}",
                message_id=obj.get("message_id", f"{path.name}:{n}"),
                conversation_id=obj.get("conversation_id", "c1"),
                user_id=obj.get("user_id") or options.user_id or "u1",
                role=obj.get("role", "user"),
                content=obj["content"],
                seq=obj.get("seq", n),
                created_at=datetime.fromisoformat(created) if created else None,
            )


def register(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register this connector as source kind "jsonl" until the test ends."""
    module = types.ModuleType(MODULE)
    module.Options = Options  # type: ignore[attr-defined]
    module.read = read  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, MODULE, module)
    monkeypatch.setitem(base._REGISTRY, "jsonl", MODULE)
    return "jsonl"


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write records (dicts, or raw str lines) as a JSONL file."""
    lines = [r if isinstance(r, str) else orjson.dumps(r).decode() for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
