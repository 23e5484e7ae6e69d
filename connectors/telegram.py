"""Telegram Desktop JSON exports (`result.json`) -> staging events.

Input: the export folder, its ZIP, or `result.json` itself: one chat (`{name, type, id,
messages: [...]}`) or a full account export (`{chats: {list: [chat, ...]}, left_chats:
{list: [...]}, ...}`); personal chats, bot chats, groups, supergroups (forums too) and
channels. The file is streamed chat by chat, message by message (`connectors.nested_json`),
so a multi-gigabyte full export never sits in memory.

Contract (every rule, option and reason: docs/telegram.md):
- One staged row per `"type": "message"` record with something readable; service records
  (joins, pins, calls, ...) are skipped as `telegram:service:<action>`, records without
  text or media as `telegram:empty`; a record that is not an object or has no integer
  `id` is quarantined alone. read == staged + skipped + quarantined.
- `message_id` is `telegram:<chat id>:<message id>`; `seq` is the message id (increasing
  in a chat); `created_at` comes from `date_unixtime` (UTC), else the exporter-local
  `date` read in `timezone`.
- Text that Telegram writes as an array of entities is flattened into the text a reader
  sees (links keep their target, code keeps its backticks); media becomes a placeholder
  with its file name; forwarded and via-bot messages say so; edits keep the final text.
- Owners and conversations follow `connectors.group_chat`.

Longer than most modules because the Telegram export contract (chats, messages, service
actions, conversation and owner policies) reads best in one place; text rendering and the
split of a full export by chat live in telegram_text.py and telegram_split.py.
"""

from __future__ import annotations

import fnmatch
import gc
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeGuard
from zoneinfo import ZoneInfo

import orjson
from msgspec import UNSET
from pydantic import Field, field_validator

from connectors import group_chat_jobs
from connectors.base import known_time_zone
from connectors.export_files import ExportFiles
from connectors.group_chat import (
    Conversations,
    GroupChatOptions,
    Owners,
    iso_from_micros,
)
from connectors.group_chat_jobs import Job, JobPool, worker_count
from connectors.json_stream import JSONStreamError
from connectors.nested_json import Array, Enter, Exit, array_at, walk
from connectors.nested_json import Field as JsonField
from connectors.nested_json import Path as JsonPath
from connectors.row_buffer import Appenders, RowBuffer
from connectors.telegram_model import (
    EXTRA_FIELDS,
    Message,
    decode_message,
    decode_messages,
    extra_fields,
)
from connectors.telegram_split import ChatSpan, SpanScan
from connectors.telegram_text import flatten_text, media_placeholder
from pipeline.core.errors import InputError
from pipeline.core.models import Event, Quarantined, Skipped, excerpt
from pipeline.core.staging import part_path

SOURCE = "telegram"
MAIN_FILE = "result.json"
HEAD_BYTES = 64 * 1024

SERVICE_ACTIONS = frozenset(
    [
        "allow_sending_messages",
        "attach_menu_bot_allowed",
        "boost_apply",
        "clear_history",
        "conference_call",
        "create_channel",
        "create_group",
        "delete_group_photo",
        "edit_chat_theme",
        "edit_group_photo",
        "edit_group_title",
        "gift_code_prize",
        "giveaway_launch",
        "giveaway_results",
        "group_call",
        "group_call_scheduled",
        "invite_members",
        "invite_to_group_call",
        "join_group_by_link",
        "join_group_by_request",
        "joined_telegram",
        "migrate_from_group",
        "migrate_to_supergroup",
        "paid_messages_price_change",
        "paid_messages_refund",
        "phone_call",
        "pin_message",
        "process_suggested_post",
        "proximity_reached",
        "refunded_payment",
        "remove_members",
        "requested_peer",
        "requested_phone_number",
        "score_in_game",
        "send_passport_values",
        "send_payment",
        "send_premium_gift",
        "send_star_gift",
        "send_stars_gift",
        "send_ton_gift",
        "send_webview_data",
        "set_chat_wallpaper",
        "set_messages_ttl",
        "set_same_chat_wallpaper",
        "stars_prize",
        "suggest_profile_photo",
        "suggested_post_refund",
        "suggested_post_success",
        "take_screenshot",
        "todo_append_tasks",
        "todo_completions",
        "topic_created",
        "topic_edit",
        "web_app_bot_allowed",
    ]
)
"""`action` values Telegram Desktop writes for service records (each its own skip reason)."""

CHAT_TYPES = frozenset(
    [
        "personal_chat",
        "bot_chat",
        "private_group",
        "private_supergroup",
        "public_supergroup",
        "private_channel",
        "public_channel",
        "saved_messages",
        "replies",
        "verification_codes",
    ]
)
BASE_KEYS = frozenset(
    ["id", "type", "date", "date_unixtime", "from", "from_id", "text", "text_entities"]
)
"""Fields of a plain text message: one without them needs no media or metadata lookups."""
MEDIA_KEYS = frozenset(
    [
        "photo",
        "file",
        "media_type",
        "poll",
        "contact_information",
        "place_name",
        "address",
        "location_information",
        "game_title",
        "invoice_information",
        "todo_list",
        "giveaway_information",
        "giveaway_results",
        "paid_stars_amount",
    ]
)
_NO_KEYS: frozenset[str] = frozenset()
EXTRA_KEYS = (frozenset(EXTRA_FIELDS) - {"reply_to_peer_id"}) | {"reactions"}
"""Keys that give a message metadata of its own (`reply_to_peer_id` only with a reply)."""


class Options(GroupChatOptions):
    """Keys allowed under a `telegram` source's `options:` (see docs/telegram.md)."""

    conversation: Literal["chat", "thread", "session"] = "session"
    """chat: one conversation per chat; thread: each reply chain, other messages per day;
    session: split a chat where it was quiet longer than `session_gap_minutes`."""
    timezone: str = "UTC"
    """Zone of the local `date` field, used only for records without `date_unixtime`."""
    chats: list[str] = Field(default_factory=list)
    """Only these chats (names, ids or glob patterns); empty means all."""
    exclude_chats: list[str] = Field(default_factory=list)
    include_left_chats: bool = True
    """Also read `left_chats` (chats and channels the account has left)."""
    workers: int | None = Field(default=None, ge=1, le=64)
    """Worker processes for a large `result.json`; default: one per CPU core."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_time_zone(value)


def looks_like(path: Path) -> bool:
    """True when `path` looks like a Telegram Desktop JSON export (reads at most ~64 KB)."""
    try:
        with ExportFiles(path) as export:
            name = _main_files(export)
            if not name:
                return False
            with export.open(name[0]) as fh:
                head = fh.read(HEAD_BYTES)
    except (InputError, OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return False
    return is_telegram_head(head)


_HEAD_MARKS = re.compile(
    rb'"(?:date_unixtime|personal_information)"\s*:|"type"\s*:\s*"(?:'
    + b"|".join(t.encode() for t in sorted(CHAT_TYPES))
    + rb')"'
)


def is_telegram_head(head: bytes) -> bool:
    """Whether the first bytes of a JSON file look like Telegram Desktop's `result.json`."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text.startswith(b"{") or b'"guild"' in text:
        return False
    return _HEAD_MARKS.search(text) is not None


def _main_files(export: ExportFiles) -> list[str]:
    """`result.json` files of the export (any folder of a ZIP), else the one given file."""
    found = [n for n in export.names if PurePosixPath(n).name == MAIN_FILE]
    if export.single_file and export.single_file not in found:
        return [export.single_file]
    return sorted(found, key=lambda n: (n.count("/"), n))


WRITES_PARTS = True
"""`read` takes `parts_dir=` (see connectors/base.py): chats of a large file are staged in
worker processes."""
SPLIT_MIN_BYTES = 16 << 20
"""A `result.json` this large (and not inside a ZIP) is split by chat across workers."""


def read(path: Path, options: Options, parts_dir: Path | None = None) -> Iterator[Event]:
    """Yield the events of every message of every chat in the export at `path`.

    With `parts_dir` and more than one worker, a large plain `result.json` of a full
    export is cut at its chats (found by a byte scan, `telegram_split.SpanScan`) and
    worker processes stage groups of chats into Parquet parts, each group as soon as the
    scan has found it; everything else is read here, streamed. The workers' events come
    after this process's own, in group order.
    """
    owners = Owners.from_options(options, SOURCE)
    with ExportFiles(path) as export:
        names = _main_files(export)
        if not names:
            raise InputError(
                f"{path}: not a Telegram Desktop export (no result.json found); export "
                "with format 'Machine-readable JSON'"
            )
        total = sum(export.size(n) for n in names)
        workers = worker_count(options.workers, total) if parts_dir is not None else 1
        state = _State(options, owners, ZoneInfo(options.timezone))
        with _SplitJobs(_Context(path, options, owners), parts_dir, workers) as split:
            for name in names:
                if workers > 1 and not export.zipped and export.size(name) >= SPLIT_MIN_BYTES:
                    assert parts_dir is not None
                    if split.add_file(export, name):
                        continue
                yield from _read_file(export, name, state)
            table = state.rows.take()
            if table is not None:
                yield table
            yield from _flush_skipped(state)
            yield from split.results()


class _SplitJobs:
    """The chats of large files, grouped into jobs (`group_units`' grouping) and handed to
    worker processes while the files are still being scanned.

    A file's chats found while scanning are provisional: when the finished scan disagrees
    (see `SpanScan`), every job so far is thrown away and the groups are made again from
    the final chats, as if nothing had started early.
    """

    def __init__(self, context: _Context, parts_dir: Path | None, workers: int) -> None:
        self.context = context
        self.parts_dir = parts_dir
        self.workers = workers
        self.pool = JobPool(_span_job, workers)
        self.spans: list[tuple[ChatSpan, int]] = []
        """Chats of the files read so far, final."""
        self.group: list[ChatSpan] = []
        self.group_bytes = 0
        self.jobs = 0

    def __enter__(self) -> _SplitJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.__exit__(*exc)

    def add_file(self, export: ExportFiles, name: str) -> bool:
        """Scan `name` for its chats, submitting jobs on the way; False (and no jobs of
        it) when it must be walked whole instead."""
        scan = SpanScan(name, self.context.options.include_left_chats)
        seen: list[tuple[ChatSpan, int]] = []
        with export.open(name) as fh:
            for found in scan.provisional(fh):
                seen.append(found)
                self._add(*found)
        final = scan.final()
        if final != seen:
            self.pool.discard()
            self.group, self.group_bytes, self.jobs = [], 0, 0
            for found in [*self.spans, *final]:
                self._add(*found)
        self.spans.extend(final)
        return bool(final)

    def _add(self, span: ChatSpan, size: int) -> None:
        if self.group and self.group_bytes >= group_chat_jobs.JOB_BYTES:
            self._submit()
        self.group.append(span)
        self.group_bytes += size

    def _submit(self) -> None:
        assert self.parts_dir is not None
        part = str(part_path(self.parts_dir, self.jobs))
        self.pool.submit(Job(tuple(self.group), self.context, part))
        self.group, self.group_bytes = [], 0
        self.jobs += 1

    def results(self) -> Iterator[Event]:
        """The jobs' events in order; a lone job (nothing handed out yet) runs in this
        process, as `run_jobs` runs it, without starting a worker."""
        if self.group and self.jobs == 0:
            yield from _span_job(Job(tuple(self.group), self.context))
            return
        if self.group:
            self._submit()
        yield from self.pool.results()


@dataclass(frozen=True)
class _Context:
    """What every job of one export shares (sent once per job to a worker)."""

    path: Path
    options: Options
    owners: Owners


def _span_job(job: Job) -> Iterator[Event]:
    """Stage the chats of one job (in a worker process): each chat's messages array is
    streamed from its offset; a damaged chat loses only its own remaining messages.

    The objects that exist when the job starts (mostly imported modules) are left out of
    the cyclic garbage collector's passes meanwhile (`gc.freeze`): its full passes over
    them cost about a tenth of the job's time, and none of them becomes garbage here.
    """
    gc.freeze()
    try:
        yield from _staged_spans(job)
    finally:
        gc.unfreeze()


def _staged_spans(job: Job) -> Iterator[Event]:
    context: _Context = job.context
    state = _State(context.options, context.owners, ZoneInfo(context.options.timezone))
    with ExportFiles(context.path) as export:
        for span in job.units:
            label = export.label(span.file)
            chat = _Chat(
                (span.list_name, "list", span.index), f"{span.list_name}.list[{span.index}]."
            )
            for key in ("name", "type", "id"):
                _chat_field(chat, key, getattr(span, key))
            _start_messages(chat, state)
            if chat.problem is not None:
                yield Quarantined(label, f"{chat.where}messages", f"telegram:{chat.problem}")
                continue
            array: Array | None = None
            try:
                with export.open(span.file) as fh:
                    array = array_at(fh, span.offset)
                    yield from _staged(array, chat, state, label)
            except JSONStreamError as exc:
                yield Quarantined(
                    label,
                    f"byte {exc.offset} ({chat.where}messages[{array.index if array else 0}])",
                    f"telegram:malformed_json: {exc}; the rest of this chat was not read",
                )
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                yield Quarantined(
                    label,
                    f"{chat.where}messages[{array.index if array else 0}]",
                    f"telegram:unreadable_file: {exc}; the rest of this chat was not read",
                )
    table = state.rows.take()
    if table is not None:
        yield table
    yield from _flush_skipped(state)


@dataclass
class _Chat:
    """One chat object of the file, filled as its fields stream by."""

    path: JsonPath
    where: str
    name: str | None = None
    type: str | None = None
    id: int | None = None
    wanted: bool = True
    conversations: Conversations | None = None
    seen: set[int] = field(default_factory=set)
    meta_head: str = ""
    conv_prefix: str = ""
    id_prefix: str = ""
    bot_author: str = ""
    channel: bool = False
    problem: str | None = None
    problem_count: int = 0


@dataclass
class _State:
    options: Options
    owners: Owners
    zone: ZoneInfo
    rows: RowBuffer = field(default_factory=RowBuffer)
    add: Appenders = ()
    skipped: Counter[str] = field(default_factory=Counter)
    conversations: dict[int, Conversations] = field(default_factory=dict)
    seen: dict[int, set[int]] = field(default_factory=dict)
    """Per chat id, across files: a chat exported twice is staged once."""

    def __post_init__(self) -> None:
        self.add = self.rows.appenders()


def _is_chat(path: JsonPath) -> bool:
    return len(path) == 3 and path[1] == "list" and path[0] in ("chats", "left_chats")


def _read_file(export: ExportFiles, name: str, state: _State) -> Iterator[Event]:
    label = export.label(name)
    lists = ("chats", "left_chats") if state.options.include_left_chats else ("chats",)

    def descend(path: JsonPath) -> bool:
        n = len(path)
        return (
            n == 0
            or (n == 1 and path[0] in lists)
            or (n == 2 and path[1] == "list" and path[0] in lists)
            or (n == 3 and _is_chat(path))
        )

    def stream(path: JsonPath) -> bool:
        n = len(path)
        return (n == 1 or (n == 4 and _is_chat(path[:3]))) and path[-1] == "messages"

    chat: _Chat | None = None
    array: Array | None = None
    try:
        with export.open(name) as fh:
            for event in walk(fh, descend=descend, stream=stream):
                if type(event) is Array:
                    array = event
                    assert chat is not None
                    if chat.problem is not None:
                        for _ in event.values():
                            chat.problem_count += 1
                        continue
                    yield from _staged(event, chat, state, label)
                elif type(event) is JsonField:
                    if chat is not None and len(event.path) == len(chat.path) + 1:
                        _chat_field(chat, event.path[-1], event.value)
                elif type(event) is Enter:
                    path = event.path
                    if path == () or _is_chat(path):
                        chat = _Chat(path, "" if path == () else f"{path[0]}.list[{path[2]}].")
                    elif chat is not None and path == (*chat.path, "messages"):
                        _start_messages(chat, state)
                elif type(event) is Exit and chat is not None and event.path == chat.path:
                    if chat.problem is not None and chat.problem_count:
                        yield Quarantined(
                            label,
                            f"{chat.where}messages",
                            f"telegram:{chat.problem}",
                            f"{chat.problem_count} messages",
                        )
                        if chat.problem_count > 1:
                            state.skipped["telegram:quarantined_chat"] += chat.problem_count - 1
                    chat = None
    except JSONStreamError as exc:
        yield Quarantined(
            label,
            f"byte {exc.offset} (message #{exc.index})",
            f"telegram:malformed_json: {exc}; messages from here to the end of this file "
            "were not read",
        )
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        yield Quarantined(
            label,
            f"after message #{array.index if array else 0}",
            f"telegram:unreadable_file: {exc}; the rest of this file was not read",
        )
    yield from _flush_skipped(state)


def _staged(array: Array, chat: _Chat, state: _State, label: str) -> Iterator[Event]:
    """Stage every element of a chat's `messages` array, read in runs (one decoder call
    for ~64 KB of messages): its quarantined records, and a table each time the row
    buffer is full."""
    rows = state.rows
    full, take, limit = rows.__len__, rows.take, rows.rows_per_table
    typed, general = _typed_message, _message
    for first, values in array.runs(decode_messages, decode_message):
        for index, value in enumerate(values, first):
            if type(value) is Message:
                typed(value, index, chat, state, label)
            elif (problem := general(value, index, chat, state, label)) is not None:
                yield problem
        if full() >= limit and (table := take()) is not None:
            yield table


def _flush_skipped(state: _State) -> Iterator[Event]:
    for reason, count in sorted(state.skipped.items()):
        yield Skipped(reason, count)
    state.skipped.clear()


def _chat_field(chat: _Chat, key: str | int, value: Any) -> None:
    if key == "name" and isinstance(value, str):
        chat.name = value
    elif key == "type" and isinstance(value, str):
        chat.type = value
    elif key == "id" and type(value) is int:
        chat.id = value


def _start_messages(chat: _Chat, state: _State) -> None:
    """The chat's header is complete: decide whether it is read, and under which ids."""
    options = state.options
    if chat.id is None:
        chat.problem = "chat_without_id: the chat has no integer `id` before its messages"
        return
    keys = (str(chat.id), chat.name)
    if (options.chats and not _matches(options.chats, *keys)) or _matches(
        options.exclude_chats, *keys
    ):
        chat.wanted = False
    gap = options.session_gap_minutes * 60_000_000
    chat.conversations = state.conversations.setdefault(
        chat.id, Conversations(options.conversation, gap)
    )
    chat.seen = state.seen.setdefault(chat.id, set())
    chat.conv_prefix = f"{SOURCE}:{chat.id}"
    chat.id_prefix = f"{SOURCE}:{chat.id}:"
    name = chat.name if chat.name is not None else _default_name(chat.type)
    chat.name = name
    head = {"chat": name, "chat_id": chat.id, "chat_type": chat.type}
    chat.meta_head = orjson.dumps(head).decode()[:-1] + ',"id":'
    if chat.type == "bot_chat":
        chat.bot_author = f"user{chat.id}"
    chat.channel = chat.type in ("public_channel", "private_channel")


def _default_name(chat_type: str | None) -> str:
    if chat_type == "saved_messages":
        return "Saved Messages"
    if chat_type == "replies":
        return "Replies"
    return "Telegram chat"


def _matches(patterns: list[str], *keys: str | None) -> bool:
    return any(k is not None and fnmatch.fnmatchcase(k, p) for p in patterns for k in keys)


def _message(  # noqa: C901 (one pass over the record's fields, in order)
    msg: Any, index: int, chat: _Chat, state: _State, label: str
) -> Quarantined | None:
    """Stage one record (append a row) or count it as skipped; a quarantine entry if broken."""
    skipped = state.skipped
    if type(msg) is not dict:
        kind = "null" if msg is None else type(msg).__name__
        return Quarantined(
            label,
            f"{chat.where}messages[{index}]",
            f"telegram:not_a_message: message is a JSON {kind}, not an object",
            excerpt(repr(msg)),
        )
    mid = msg.get("id")
    if not _is_int64(mid):
        return Quarantined(
            label,
            f"{chat.where}messages[{index}]",
            "telegram:no_id: message has no integer `id` (64-bit)",
            excerpt(repr(msg)),
        )
    if not chat.wanted:
        skipped["telegram:excluded_chat"] += 1
        return None
    kind = msg.get("type", "message")
    if kind != "message":
        _skip_kind(kind, msg.get("action"), skipped)
        return None
    if mid in chat.seen:
        skipped["telegram:duplicate"] += 1
        return None

    # author
    owners = state.owners
    from_id = msg.get("from_id")
    author = msg.get("from")
    if type(from_id) is not str or not from_id:
        from_id = None
        if chat.channel:
            from_id = f"channel{chat.id}"
            if "from" not in msg:
                author = chat.name
    if type(author) is not str:
        author = "Deleted Account" if "from" in msg and author is None else (from_id or "Unknown")
    is_bot = from_id is not None and from_id == chat.bot_author
    if owners.per_author:
        owner = _author_owner(owners, is_bot, from_id, author, skipped)
        if owner is None:
            return None
    else:
        owner = owners.user_id

    # content
    text = msg.get("text")
    if type(text) is str:
        content = text
    else:
        content = flatten_text(text if text is not None else msg.get("text_entities"))
    plain = msg.keys() <= BASE_KEYS
    others: AbstractSet[Any] = _NO_KEYS if plain else msg.keys() - BASE_KEYS
    placeholder = None if plain or others.isdisjoint(MEDIA_KEYS) else media_placeholder(msg)
    if placeholder:
        content = f"{placeholder}\n{content}" if content.strip() else placeholder
    if not content or content.isspace():
        skipped["telegram:empty"] += 1
        return None
    chat.seen.add(mid)

    # time
    micros: int | None
    stamp = msg.get("date_unixtime")
    if type(stamp) is str and stamp.isdigit() and stamp.isascii() and len(stamp) < 12:
        micros = int(stamp) * 1_000_000
    elif type(stamp) is int and 0 <= stamp < 10**11:
        micros = stamp * 1_000_000
    else:
        micros = _local_micros(msg.get("date"), state.zone)

    reply_to = None if plain else msg.get("reply_to_message_id")
    if not _is_int64(reply_to):
        reply_to = None
    if plain or others.isdisjoint(EXTRA_KEYS):
        extra: dict[str, Any] = {}
    else:
        extra = _extras(msg, chat, reply_to)
        content = _decorated(content, extra)
    if placeholder:
        extra["media"] = placeholder
    if is_bot:
        extra["bot"] = True

    _stage(state, chat, label, index, mid, micros, reply_to, extra, owner, from_id, author, content)
    return None


def _typed_message(msg: Message, index: int, chat: _Chat, state: _State, label: str) -> None:
    """`_message` for a record decoded as a `telegram_model.Message` (the common shape:
    no media, so no placeholder), read by attribute; the same row or skip reason."""
    if not chat.wanted:
        state.skipped["telegram:excluded_chat"] += 1
        return
    mid = msg.id
    kind = msg.type
    if kind != "message":
        _skip_kind(kind, msg.action, state.skipped)
        return
    seen = chat.seen
    if mid in seen:
        state.skipped["telegram:duplicate"] += 1
        return

    # author
    owners = state.owners
    from_id = msg.from_id
    author = msg.from_
    if type(from_id) is not str or not from_id:
        from_id = None
        if chat.channel:
            from_id = f"channel{chat.id}"
            if author is UNSET:
                author = chat.name
    if type(author) is not str:
        author = "Deleted Account" if author is None else (from_id or "Unknown")
    is_bot = from_id is not None and from_id == chat.bot_author
    if owners.per_author:
        owner = _author_owner(owners, is_bot, from_id, author, state.skipped)
        if owner is None:
            return
    else:
        owner = owners.user_id

    text = msg.text
    content = text if type(text) is str else flatten_text(text)
    if not content or content.isspace():
        state.skipped["telegram:empty"] += 1
        return
    seen.add(mid)

    stamp = msg.date_unixtime
    if type(stamp) is str and stamp.isdigit() and stamp.isascii() and len(stamp) < 12:
        micros: int | None = int(stamp) * 1_000_000
    else:
        micros = _local_micros(msg.date, state.zone)

    replied = msg.reply_to_message_id
    reply_to = None if replied is UNSET else replied
    if (
        reply_to is None
        and msg.edited is UNSET
        and msg.edited_unixtime is UNSET
        and msg.forwarded_from is UNSET
        and msg.saved_from is UNSET
        and msg.via_bot is UNSET
        and msg.author is UNSET
    ):
        extra: dict[str, Any] = {}
    else:
        extra = _extras(extra_fields(msg), chat, reply_to)
        content = _decorated(content, extra)
    if is_bot:
        extra["bot"] = True
    _stage(state, chat, label, index, mid, micros, reply_to, extra, owner, from_id, author, content)


def _skip_kind(kind: Any, action: Any, skipped: Counter[str]) -> None:
    """Count a record that is not a `message` (service, unsupported, unknown)."""
    if kind == "service":
        if type(action) is str and action in SERVICE_ACTIONS:
            skipped["telegram:service:" + action] += 1
        else:
            skipped["telegram:service:other"] += 1
    elif kind == "unsupported":
        skipped["telegram:unsupported"] += 1
    else:
        skipped["telegram:unknown_type"] += 1


def _author_owner(
    owners: Owners, is_bot: bool, from_id: str | None, author: str, skipped: Counter[str]
) -> str | None:
    """The owner of a message under a per-author policy, or None (counted as skipped)."""
    if is_bot:
        skipped["telegram:bot_author"] += 1
        return None
    if from_id is None:
        skipped["telegram:no_author"] += 1
        return None
    owner = owners.author_owner(from_id, author)
    if owner is None:
        skipped["telegram:author_unmapped"] += 1
    return owner


def _decorated(content: str, extra: dict[str, Any]) -> str:
    """The text with the forward and via-bot notes a reader sees."""
    forwarded = extra.get("forwarded_from")
    if forwarded is not None:
        content = f"[forwarded from {forwarded}]\n{content}"
    via = extra.get("via_bot")
    if via is not None:
        content = f"[via {via}] {content}"
    return content


def _stage(
    state: _State,
    chat: _Chat,
    label: str,
    index: int,
    mid: int,
    micros: int | None,
    reply_to: int | None,
    extra: dict[str, Any],
    owner: str,
    from_id: str | None,
    author: str,
    content: str,
) -> None:
    """Append the row of one staged message (its conversation, metadata and columns)."""
    assert chat.conversations is not None
    key = chat.conversations.key(mid, micros, reply_to)
    conversation = chat.conv_prefix if key is None else f"{chat.conv_prefix}:{key}"
    if extra:  # its keys are never the head's: the head's text, then the extra members
        meta = f"{chat.meta_head}{mid},{orjson.dumps(extra, default=str).decode()[1:]}"
    else:
        meta = f"{chat.meta_head}{mid}}}"
    if state.owners.prefix:
        content = f"{author}: {content}"
    add = state.add
    add[0](SOURCE)
    add[1](label)
    add[2](f"{chat.where}messages[{index}]")
    add[3](f"{chat.id_prefix}{mid}")
    add[4](conversation)
    add[5](owner)
    add[6]("assistant" if extra.get("bot") else "user")
    add[7](from_id)
    add[8](author)
    add[9](content)
    add[10](micros)
    add[11](mid)
    add[12](meta)


def _is_int64(value: Any) -> TypeGuard[int]:
    """An integer that fits the staging table and the metadata JSON (64 bits): the JSON
    parser that reads an element orjson refuses keeps larger ones as integers."""
    return type(value) is int and -(2**63) <= value < 2**63


def _local_micros(value: Any, zone: ZoneInfo) -> int | None:
    """Epoch microseconds of Telegram's exporter-local `date` (`2024-01-02T10:00:00`)."""
    if type(value) is not str or len(value) < 19:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    try:
        return round(parsed.timestamp() * 1_000_000)
    except (OverflowError, OSError, ValueError):
        return None


def _extras(msg: dict[str, Any], chat: _Chat, reply_to: int | None) -> dict[str, Any]:
    """Metadata beyond the chat and id: reply, edit, forward, via bot, signature, reactions."""
    extra: dict[str, Any] = {}
    if reply_to is not None:
        extra["reply_to_message_id"] = reply_to
        peer = msg.get("reply_to_peer_id")
        if isinstance(peer, str) and peer:
            extra["reply_to_peer_id"] = peer
        else:
            extra["reply_to"] = f"{chat.id_prefix}{reply_to}"
    edited = msg.get("edited_unixtime")
    if type(edited) is str and edited.isdigit() and edited.isascii() and len(edited) < 12:
        extra["edited"] = iso_from_micros(int(edited) * 1_000_000)
    elif isinstance(msg.get("edited"), str):
        extra["edited"] = msg["edited"]
    for key in ("forwarded_from", "saved_from", "via_bot", "author"):
        value = msg.get(key)
        if isinstance(value, str) and value:
            extra["signature" if key == "author" else key] = value
        elif key == "forwarded_from" and key in msg and value is None:
            extra[key] = "Deleted Account"
    reactions = msg.get("reactions")
    if isinstance(reactions, list):
        kept = []
        for r in reactions:
            if isinstance(r, dict) and _is_int64(r.get("count")):
                emoji = r.get("emoji") if isinstance(r.get("emoji"), str) else r.get("type")
                if isinstance(emoji, str):
                    kept.append({"emoji": emoji, "count": r["count"]})
        if kept:
            extra["reactions"] = kept
    return extra
