"""CSV connector: one chat message per row, with a documented column contract.

Default columns (rename any with `options.columns`): `conversation_id`, `user_id`, `role`,
`content`, `timestamp`, and optionally `message_id`, `author_id`, `author_name`; every
other non-empty column is kept in `metadata`. Roles are mapped case-insensitively
(`customer`->user, `agent`->assistant, ... extend with `options.roles`). Timestamps may
be ISO 8601, epoch seconds or milliseconds, or follow `options.timestamp_format`; naive
times are read in `options.timezone`. With `options.memory_owner: group` the file is a
group chat: every row goes to the one owner `user_id` (the option), and the speaker of each
row is its `author_id` (else its `user_id` column) and `author_name`, sent to MemOS as the
participant list and per-message speaker. The file is UTF-8 with or without BOM unless
`options.encoding` says otherwise; a row with undecodable bytes is quarantined, a file
that is not UTF-8 at all is refused with a hint.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import Field, field_validator

from connectors.base import ConnectorOptions
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import ROLES, Event, Message, Quarantined, stable_id

DEFAULT_COLUMNS = {
    "conversation_id": "conversation_id",
    "user_id": "user_id",
    "role": "role",
    "content": "content",
    "timestamp": "timestamp",
    "message_id": "message_id",
    "author_id": "author_id",
    "author_name": "author_name",
}
DEFAULT_ROLES = {
    **{r: r for r in ROLES},
    "human": "user",
    "customer": "user",
    "client": "user",
    "visitor": "user",
    "agent": "assistant",
    "bot": "assistant",
    "ai": "assistant",
    "support": "assistant",
    "model": "assistant",
    "function": "tool",
}
REQUIRED = ("conversation_id", "role", "content")
_FIELD_LIMIT = 64 * 1024 * 1024
"""Largest CSV field: a row takes up to ~10x its size in memory (docs/input-limits.md)."""
_SNIFF_BYTES = 64 * 1024
_EPOCH = re.compile(r"^\d{9,16}(\.\d+)?$")


class Options(ConnectorOptions):
    """CSV options: column names, role values, time parsing, encoding and delimiter."""

    columns: dict[str, str] = Field(default_factory=dict)
    roles: dict[str, str] = Field(default_factory=dict)
    timestamp_format: str | None = None
    timezone: str = "UTC"
    encoding: str = "utf-8"
    delimiter: str = ","
    memory_owner: Literal["row", "group"] = "row"
    """row: each row's `user_id` (else the option) owns it; group: the `user_id` option owns
    every row, and rows' authors are the group chat's participants (see the module doc)."""

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(DEFAULT_COLUMNS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {sorted(DEFAULT_COLUMNS)}")
        return value

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted({v for v in value.values() if v not in ROLES})
        if bad:
            raise ValueError(f"roles must map to one of {list(ROLES)}, not {bad}")
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError("delimiter must be a single character")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


def read(path: Path, options: Options) -> Iterator[Event]:
    """Yield one event per data row of the CSV file at `path`."""
    if path.is_dir():
        raise InputError(f"{path}: the csv source takes a file, not a folder")
    if options.memory_owner == "group" and not options.user_id:
        raise ConfigError(
            "csv source: memory_owner 'group' needs a user_id for the group's owner (set "
            "`user_id:` on the source or in the config, or pass --user-id)"
        )
    tz = _zone(options.timezone)
    columns = {**DEFAULT_COLUMNS, **options.columns}
    roles = {**DEFAULT_ROLES, **{k.lower(): v for k, v in options.roles.items()}}
    encoding = _encoding(path, options.encoding)
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    name = str(path)
    occurrences: Counter[tuple[str, str, str, str, str]] = Counter()
    seqs: Counter[tuple[str, str]] = Counter()
    with path.open("r", encoding=encoding, errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=options.delimiter)
        header = _header(reader, name, columns)
        index = {field: header.index(col) for field, col in columns.items() if col in header}
        extras = [(i, col) for i, col in enumerate(header) if col not in columns.values()]
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Quarantined(name, f"line {line}", f"malformed CSV: {exc}")
                line = reader.line_num + 1
                continue
            position = f"line {line}"
            line = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                yield Quarantined(name, position, "empty row")
                continue
            yield _row_event(
                row, header, index, extras, roles, tz, options, name, position, occurrences, seqs
            )


def _row_event(
    row: list[str],
    header: list[str],
    index: dict[str, int],
    extras: list[tuple[int, str]],
    roles: dict[str, str],
    tz: ZoneInfo,
    options: Options,
    name: str,
    position: str,
    occurrences: Counter[tuple[str, str, str, str, str]],
    seqs: Counter[tuple[str, str]],
) -> Event:
    raw = ",".join(row)
    if any(_has_surrogates(cell) for cell in row):
        return Quarantined(name, position, undecodable(options.encoding), _printable(raw))
    if len(row) != len(header):
        return Quarantined(name, position, f"expected {len(header)} fields, found {len(row)}", raw)

    def get(field: str) -> str:
        i = index.get(field)
        return row[i].strip() if i is not None else ""

    for field in REQUIRED:
        if field != "content" and not get(field):
            return Quarantined(name, position, f"missing {field}", raw)
    content = row[index["content"]] if "content" in index else ""
    if not content.strip():
        return Quarantined(name, position, "missing content", raw)
    role = roles.get(get("role").lower())
    if role is None:
        return Quarantined(name, position, f"unknown role {get('role')!r}", raw)
    row_user = get("user_id")
    user_id = row_user or options.user_id
    if not user_id:
        return Quarantined(name, position, "missing user_id (no column value, no --user-id)", raw)
    stamp = get("timestamp")
    created_at: datetime | None = None
    if stamp:
        try:
            created_at = parse_timestamp(stamp, options.timestamp_format, tz)
        except ValueError as exc:
            return Quarantined(name, position, f"bad timestamp {stamp!r}: {exc}", raw)
    conversation_id = get("conversation_id")
    message_id = get("message_id")
    if message_id:
        message_id = f"csv:{message_id}"
    else:
        key = (conversation_id, user_id, role, stamp, content)
        occurrences[key] += 1
        message_id = "csv:" + stable_id(*key, str(occurrences[key]))
    author_id = get("author_id") or None
    if options.memory_owner == "group":
        author_id = author_id or row_user or None
        user_id = options.user_id or user_id
    conv_key = (user_id, conversation_id)
    seq = seqs[conv_key]
    seqs[conv_key] += 1
    extra = {col: row[i] for i, col in extras if row[i] != ""}
    return Message(
        source="csv",
        source_file=name,
        source_position=position,
        message_id=message_id,
        conversation_id=conversation_id,
        user_id=user_id,
        role=role,
        content=content,
        seq=seq,
        created_at=created_at,
        author_id=author_id,
        author_name=get("author_name") or None,
        metadata=orjson.dumps(extra).decode() if extra else None,
    )


def parse_timestamp(value: str, fmt: str | None, tz: ZoneInfo) -> datetime:
    """Parse ISO 8601, epoch seconds/milliseconds/microseconds, or `fmt`, into aware UTC.

    Raises `ValueError` for anything unusable, including valid times that fall outside
    years 1-9999 once moved to UTC (`9999-12-31T23:59:59-01:00`).
    """
    try:
        return _parse_timestamp(value, fmt, tz)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"out of range ({exc})") from None


def _parse_timestamp(value: str, fmt: str | None, tz: ZoneInfo) -> datetime:
    if fmt:
        parsed = datetime.strptime(value, fmt)
    elif _EPOCH.match(value):
        number = float(value)
        digits = len(value.split(".")[0])
        scale = 1e6 if digits >= 15 else 1e3 if digits >= 12 else 1.0
        return datetime.fromtimestamp(number / scale, tz=timezone.utc)
    else:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(timezone.utc)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"csv option 'timezone': unknown time zone {name!r}") from None


def _encoding(path: Path, configured: str) -> str:
    """Refuse files that are clearly not in the configured encoding; strip a UTF-8 BOM."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if codecs.lookup(configured).name != "utf-8":
        return configured
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(
            f"{path}: the file is UTF-16, not UTF-8; re-save it as UTF-8 "
            "or set options.encoding: utf-16"
        )
    lines = head.splitlines()[:-1] or head.splitlines()
    bad = sum(1 for ln in lines if not _decodes(ln))
    if lines and bad >= 3 and bad > len(lines) // 5:
        raise InputError(
            f"{path}: {bad} of the first {len(lines)} lines are not valid UTF-8; "
            "set --encoding or options.encoding (e.g. --encoding cp1252, or gb18030)"
        )
    return "utf-8-sig"


def undecodable(encoding: str) -> str:
    """The quarantine reason of a row that is not in the file's encoding, with the fix: a
    CSV saved by Excel on Windows is usually cp1252, hence the example."""
    return f"bytes that are not valid {encoding} (another encoding? e.g. --encoding cp1252)"


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _header(reader: Iterator[list[str]], name: str, columns: dict[str, str]) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InputError(f"{name}: the file is empty (no header row)") from None
    except csv.Error as exc:
        raise InputError(f"{name} line 1: malformed CSV header: {exc}") from None
    if any(_has_surrogates(h) for h in header):
        raise InputError(
            f"{name} line 1: the header is not valid UTF-8; set --encoding (e.g. --encoding cp1252)"
        )
    missing = [
        columns[f] for f in ("conversation_id", "role", "content") if columns[f] not in header
    ]
    if missing:
        raise InputError(
            f"{name} line 1: missing column(s) {missing}; found {header}. "
            "Map your headers with options.columns (see README, CSV column contract)"
        )
    return header


def _has_surrogates(text: str) -> bool:
    return not text.isascii() and any("\udc80" <= ch <= "\udcff" for ch in text)


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def looks_like(path: Path) -> bool:
    """`--source auto`: a single `.csv`/`.tsv` file (cheap; never raises)."""
    try:
        return path.is_file() and path.suffix.lower() in (".csv", ".tsv")
    except OSError:
        return False
