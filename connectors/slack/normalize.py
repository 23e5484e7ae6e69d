"""Per-conversation work: one conversation's day files -> Arrow batches in STAGING_SCHEMA.

A work unit is everything of one conversation (all its folders and day files, or a run
of consecutive days of it), so threads are rebuilt across day files and (conversation,
ts) duplicates are dropped without any shared state. A job is a run of consecutive units
that becomes one staged Parquet part, written by the worker process itself, so only
counts cross the process boundary (or, without a parts folder, one Arrow table).

Per message: revision and deletion records, tombstones and hidden records are skipped
(the message's final version is its own record); system subtypes are skipped unless
configured; unknown subtypes are ordinary messages. `seq` is the message's `ts` in
microseconds: unique in its conversation and ordered like time.

This module and `connectors.slack.text` are compiled with mypyc when the package is
built (setup.py). Compiled code checks declared types at run time, so values from a day
file stay `Any` until checked; classes that are pickled live in `connectors.slack.model`.

Longer than most modules because it is the per-message code that mypyc may compile as
one unit; splitting it would add calls across compiled modules on the hot path.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from string import Formatter
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from connectors.json_stream import BadElement, JSONStreamError, iter_array
from connectors.slack.export import FileReader
from connectors.slack.model import (
    DAY_DECODER,
    MESSAGE_DECODER,
    Context,
    Job,
    JobResult,
    Msg,
    Settings,
    Unit,
    UserInfo,
)
from connectors.slack.text import Names, fallback_content, file_names, render_mrkdwn
from pipeline.core.models import STAGING_SCHEMA, Quarantined, StagedPart
from pipeline.core.process_start import refused_imports
from pipeline.core.staging import PartWriter, large_string_array, replace_surrogates

SOURCE = "slack"
NOT_MESSAGES = frozenset({"message_changed", "message_deleted", "tombstone", "message_replied"})
"""Edit-log and placeholder records: never new messages."""
SYSTEM_SUBTYPES = frozenset(
    {
        "channel_join",
        "channel_leave",
        "channel_topic",
        "channel_purpose",
        "channel_name",
        "channel_archive",
        "channel_unarchive",
        "channel_convert_to_private",
        "channel_convert_to_public",
        "channel_posting_permissions",
        "channel_canvas_updated",
        "group_join",
        "group_leave",
        "group_topic",
        "group_purpose",
        "group_name",
        "group_archive",
        "group_unarchive",
        "bot_add",
        "bot_remove",
        "bot_enable",
        "bot_disable",
        "app_conversation_join",
        "app_conversation_leave",
        "pinned_item",
        "unpinned_item",
        "reminder_add",
        "joiner_notification",
        "emoji_changed",
        "sh_room_created",
        "huddle_thread",
    }
)
"""Membership, settings and other system events: skipped by default, each under its name."""
NO_THREAD = "0000000000.000000"
SESSION_PREFIX = "session-"
TEMPLATE_FIELDS = frozenset({"id", "name", "email", "team"})
_TS = re.compile(r"\d{1,12}(\.\d{1,6})?")
MAX_TS_SECONDS = 253_402_128_000
"""9999-12-30T00:00:00Z: a later `ts` has no calendar day in every time zone (quarantined)."""


class BatchSink(Protocol):
    """Where finished batches go."""

    def add(self, batch: pa.RecordBatch) -> None: ...


class _TableSink:
    """Keeps the batches, for callers that want one table instead of a part file."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def add(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def table(self) -> pa.Table | None:
        if not self.batches:
            return None
        return pa.Table.from_batches(self.batches, schema=STAGING_SCHEMA)


def owner_id(user_id: str, info: UserInfo | None, fallback_name: str, s: Settings) -> str | None:
    """The memory owner of `user_id`'s messages in author mode (None: cannot be mapped)."""
    mapped = s.user_map.get(user_id)
    if mapped is None and info is not None:
        mapped = s.user_map.get(info.email) or s.user_map.get(info.handle)
    if mapped is not None:
        return mapped
    values = {
        "id": user_id,
        "name": info.handle if info else fallback_name,
        "email": info.email if info else "",
        "team": info.team if info else "",
    }
    used = {f for _, f, _, _ in Formatter().parse(s.user_id_template) if f}
    if any(not values.get(f) for f in used):
        return None
    return s.user_id_template.format(**values)


def _slow_ts(ts: Any) -> tuple[str, int] | tuple[None, int]:
    """(ts, microseconds) for the less common valid shapes of `ts`; (None, 0) if invalid."""
    if type(ts) is int and ts >= 0:
        ts = f"{ts}.000000"
    if type(ts) is not str or not _TS.fullmatch(ts):
        return None, 0
    seconds, _, frac = ts.partition(".")
    if int(seconds) >= MAX_TS_SECONDS:
        return None, 0
    return ts, int(seconds) * 1_000_000 + int((frac + "000000")[:6])


class _DayKeys:
    """Calendar day (YYYY-MM-DD) of a ts in one time zone.

    Cached per UTC day for UTC, else per 15-minute bucket (every real UTC offset and
    transition falls on a quarter hour).
    """

    def __init__(self, tz_name: str):
        self.tz = None if tz_name == "UTC" else ZoneInfo(tz_name)
        self.step = 86_400_000_000 if self.tz is None else 900_000_000
        self.cache: dict[int, str] = {}

    def __call__(self, micros: int) -> str:
        bucket = micros // self.step
        day = self.cache.get(bucket)
        if day is None:
            if len(self.cache) >= _DAY_CACHE_MAX:
                self.cache.clear()
            moment = _EPOCH + timedelta(microseconds=bucket * self.step)
            if self.tz is not None:
                moment = moment.astimezone(self.tz)
            day = moment.date().isoformat()
            self.cache[bucket] = day
        return day


_DAY_CACHE_MAX = 100_000


@functools.cache
def day_keys(tz_name: str) -> _DayKeys:
    """The process-wide `_DayKeys` of a time zone (units of one export share the days)."""
    return _DayKeys(tz_name)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _raw(value: msgspec.Raw) -> Any:
    """Decode a raw field (None when absent)."""
    if not value:
        return None
    return orjson.loads(memoryview(value))


def _json_safe_ts(value: str) -> bool:
    """True when `value` is digits with at most one dot (safe inside a JSON string)."""
    return value.replace(".", "", 1).isdigit() and value.isascii()


_TOO_DEEP = "message is nested deeper than the JSON parsers allow"


def _tolerant_array(data: bytes) -> list[Any] | None:
    """The elements of a day file that strict parsing refused, or None when it is not a
    JSON array at all (then the whole file is quarantined as before).

    Damage confined to one message is kept there: invalid UTF-8 bytes and lone surrogate
    escapes become U+FFFD, raw control characters in strings are kept, and a message
    nested too deeply comes back as a `BadElement` (quarantined alone).
    """
    try:
        return [e.value for e in iter_array(io.BytesIO(data), wrapper_keys=())]
    except JSONStreamError:
        return None


def _unusable(item: Any) -> str | None:
    """Why a day-file element cannot be a message (None when it is an object)."""
    if isinstance(item, dict):
        return None
    if isinstance(item, BadElement):
        return _TOO_DEEP
    kind = "null" if item is None else type(item).__name__
    return f"message is a JSON {kind}, not an object"


def _excerpt(item: Any) -> str:
    """A short JSON excerpt of a quarantined element (its type when it cannot be written)."""
    if isinstance(item, BadElement):
        return ""
    try:
        return orjson.dumps(item).decode()[:400]
    except (orjson.JSONEncodeError, RecursionError):
        return f"(a JSON {type(item).__name__} nested too deeply to show)"


def _short(m: Msg) -> str:
    return f"ts={m.ts!r} user={m.user!r} subtype={m.subtype!r} text={str(m.text)[:120]!r}"


def run_job(job: Job, ctx: Context, reader: FileReader) -> JobResult:
    """Normalize the messages of a job's units (never raises on bad data)."""
    names = Names(ctx.user_names, ctx.channel_names)
    sink = PartWriter(Path(job.part_path)) if job.part_path is not None else _TableSink()
    rows = _Rows(sink, ctx.settings.user_id, ctx.settings.speaker_prefix)
    skipped: Counter[str] = Counter()
    quarantined: list[Quarantined] = []
    reader.expect(unit.locations[name][0] for unit in job.units for name in unit.day_files)
    for unit in job.units:
        processor = _Processor(unit, ctx, names, reader, rows)
        processor.run(ctx.settings)
        skipped.update(processor.skipped)
        quarantined += processor.quarantined
        if rows.count() >= BATCH_ROWS:
            rows.flush()
    rows.flush()
    if isinstance(sink, PartWriter):
        part = sink.close()
        if part is not None:  # the extract counts conversations from the staged buckets,
            part = StagedPart(part.path, part.rows)  # so the distinct ids stay here
        return JobResult(part, None, dict(skipped), quarantined)
    return JobResult(None, sink.table(), dict(skipped), quarantined)


BATCH_ROWS = 16_384
"""Rows buffered as Python lists before they are converted into an Arrow batch."""
_COLUMNS = (
    "source_position",
    "ts",
    "conversation_key",
    "user_id",
    "is_bot",
    "author_id",
    "author_name",
    "content",
    "created_at",
    "metadata",
)
"""Buffered columns. Strings that repeat a prefix are joined in Arrow when the batch is
built: `message_id` is the channel id and `ts`; `conversation_id` is `slack:<label>` and
`conversation_key` (thread ts, day or session; None: the channel); `content` gets the
"Name: " prefix. `user_id` is filled only in author mode (in workspace mode every row
has the one configured owner); `is_bot` becomes `role`."""


class _Rows:
    """A job's buffered rows, one Python list per column, shared by its units.

    Units append; the job flushes between files or units once `BATCH_ROWS` are buffered,
    so small units share batches (Arrow conversion has a cost per batch).
    """

    def __init__(self, sink: BatchSink, workspace_owner: str, speaker_prefix: bool):
        self.sink = sink
        self.workspace_owner = workspace_owner
        self.speaker_prefix = speaker_prefix
        self.cols: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        self.thread_of: list[str | None] = []
        """Thread ts of each row (session mode only)."""
        self.file_ends: list[tuple[str, str, str, int]] = []
        """Per day file: (name, channel id, `slack:<label>`, buffered rows once its messages
        were added), for the columns of its rows that come from the file or its unit."""

    def count(self) -> int:
        return len(self.cols["ts"])

    def flush(self) -> None:
        """Hand the buffered rows to the sink as one Arrow batch (bounds Python memory)."""
        if not self.cols["ts"]:
            return
        self.sink.add(self._batch())
        self.cols = {name: [] for name in _COLUMNS}
        self.thread_of = []
        self.file_ends = []

    def _batch(self) -> pa.RecordBatch:
        c = self.cols
        n = len(c["ts"])
        times = pa.array(c["created_at"], type=pa.int64())
        files, channel_ids, channels, ends = zip(*self.file_ends, strict=True)
        run_ends = pa.array(ends, pa.int32())

        def per_file(values: tuple[str, ...]) -> pa.Array:
            return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(run_ends, pa.array(values)))

        author_names = pa.array(c["author_name"], pa.string())
        content = _large_strings(c["content"])
        if self.speaker_prefix:
            content = pc.binary_join_element_wise(
                author_names.cast(pa.large_string()), content, pa.scalar(": ", pa.large_string())
            )
        arrays = {
            "source": pa.repeat(pa.scalar(SOURCE, pa.string()), n),
            "source_file": per_file(files),
            "source_position": _positions(c["source_position"]),
            "message_id": pc.binary_join_element_wise(
                per_file(channel_ids), pa.array(c["ts"], pa.string()), ":"
            ),
            "conversation_id": pc.binary_join_element_wise(
                per_file(channels),
                pa.array(c["conversation_key"], pa.string()),
                ":",
                null_handling="skip",
            ),
            "user_id": (
                pa.array(c["user_id"], pa.string())
                if c["user_id"]
                else pa.repeat(pa.scalar(self.workspace_owner, pa.string()), n)
            ),
            "role": pc.if_else(pa.array(c["is_bot"], pa.bool_()), "assistant", "user"),
            "author_id": pa.array(c["author_id"], pa.string()),
            "author_name": author_names,
            "content": content,
            "created_at": times.cast(pa.timestamp("us", tz="UTC")),
            "seq": times,
            "metadata": pa.array(c["metadata"], pa.string()),
        }
        return pa.RecordBatch.from_pydict(arrays, schema=STAGING_SCHEMA)


class _Processor:
    """State of one unit: counts, seen ts, per-user owner cache; rows go to the job's buffer."""

    def __init__(self, unit: Unit, ctx: Context, names: Names, reader: FileReader, rows: _Rows):
        self.unit = unit
        self.rows = rows
        self.ctx = ctx
        self.names = names
        self.reader = reader
        self.skipped: Counter[str] = Counter()
        self.quarantined: list[Quarantined] = []
        self.owner_cache: dict[str, str | None] = {}
        self.seen_ts: set[str] = set()
        self.day_of = day_keys(ctx.settings.timezone)
        self.channel = f"slack:{unit.label}"
        """The unit's conversation id prefix."""
        self.meta_head = (
            orjson.dumps({"channel": unit.label, "channel_id": unit.channel_id}).decode()[:-1]
            + ',"ts":"'
        )
        """Start of a plain message's metadata JSON, up to its ts."""

    def run(self, s: Settings) -> None:
        if self.unit.other_files:
            self.skipped["slack:not_a_day_file"] += len(self.unit.other_files)
        rows = self.rows
        first_row = rows.count()
        for name in self.unit.day_files:
            messages = self._load(name)
            if messages:
                self._messages(name, messages, s)
                if rows.count() >= BATCH_ROWS and s.conversation != "session":
                    rows.flush()
        if s.conversation == "session":
            self._assign_sessions(s, first_row)

    def _quarantine(self, name: str, position: str, reason: str, raw: str = "") -> None:
        self.quarantined.append(Quarantined(name, position, reason, raw[:400]))

    def _load(self, name: str) -> list[Msg | None] | None:
        """The file's messages; None where an element is not an object (quarantined)."""
        try:
            data = self.reader.read_key(
                self.unit.locations[name][0], self.ctx.settings.max_member_bytes
            )
        except OSError as exc:
            self._quarantine(name, "file", f"cannot read day file: {exc}")
            return None
        if len(data) > self.ctx.settings.max_member_bytes:
            self._quarantine(name, "file", f"day file is {len(data)} bytes, over max_member_bytes")
            return None
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            return DAY_DECODER.decode(data)  # type: ignore[return-value]
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            pass  # another shape, damage or deep nesting: decode generically below
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            value = _tolerant_array(data)
            if value is None:
                start = max(exc.pos - 60, 0)
                near = data[start : exc.pos + 60].decode("utf-8", "replace")
                where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
                self._quarantine(name, where, f"day file is not valid JSON: {exc.msg}", near)
                return None
        if not isinstance(value, list):
            kind = "object" if isinstance(value, dict) else type(value).__name__
            self._quarantine(
                name,
                "top level",
                f"day file holds a JSON {kind}, expected an array of messages",
                data[:200].decode("utf-8", "replace"),
            )
            return None
        out: list[Msg | None] = []
        for index, item in enumerate(value):
            problem = _unusable(item)
            if problem is None:
                try:
                    out.append(MESSAGE_DECODER.decode(orjson.dumps(item)))
                    continue
                except (orjson.JSONEncodeError, msgspec.DecodeError, RecursionError) as exc:
                    problem = f"message cannot be read: {exc}"
            self._quarantine(name, f"$[{index}]", problem, _excerpt(item))
            out.append(None)
        return out

    def _messages(self, file_name: str, messages: list[Msg | None], s: Settings) -> None:  # noqa: C901
        unit = self.unit
        label = unit.label
        channel_id = unit.channel_id
        names = self.names
        users = self.ctx.users
        skipped = self.skipped
        include = s.include_subtypes
        author_mode = s.memory_owner == "author"
        mode = s.conversation
        day_of = self.day_of
        day_cache, day_step = day_of.cache, day_of.step
        workspace_owner = s.user_id
        seen = self.seen_ts
        rows = self.rows
        c = rows.cols
        c_pos, c_ts = c["source_position"], c["ts"]
        c_conv, c_user, c_bot = c["conversation_key"], c["user_id"], c["is_bot"]
        c_aid, c_aname, c_content = c["author_id"], c["author_name"], c["content"]
        c_time, c_meta = c["created_at"], c["metadata"]
        thread_of = rows.thread_of if mode == "session" else None
        meta_head = self.meta_head
        dumps = orjson.dumps
        rows_before = len(c_ts)

        for index, m in enumerate(messages):
            if m is None:  # already quarantined while loading
                continue
            ts = m.ts
            if (
                type(ts) is str
                and len(ts) == 17
                and ts[10] == "."
                and (digits := ts[:10] + ts[11:]).isdigit()
                and digits.isascii()
            ):
                micros = int(digits)
            else:
                ts, micros = _slow_ts(ts)
                if ts is None:
                    reason = "message has no ts" if m.ts is None else "message ts is invalid"
                    self._quarantine(file_name, f"$[{index}]", reason, _short(m))
                    continue
            subtype = m.subtype
            if subtype is not None:
                if type(subtype) is not str:
                    subtype = str(subtype)
                if subtype in NOT_MESSAGES:
                    skipped["slack:" + subtype] += 1
                    continue
                if subtype in SYSTEM_SUBTYPES and subtype not in include:
                    skipped["slack:" + subtype] += 1
                    continue
            if m.hidden is True:
                skipped["slack:hidden"] += 1
                continue
            if ts in seen:
                skipped["slack:duplicate"] += 1
                continue
            seen.add(ts)

            # author
            uid = m.user
            if not uid or type(uid) is not str:
                uid = _fallback_author(m)
            info = users.get(uid) if uid else None
            bot_id = m.bot_id
            is_bot = (
                subtype == "bot_message"
                or (bot_id is not None and bot_id != "")
                or (info is not None and info.is_bot)
                or uid == "USLACKBOT"
            )
            author_name = info.name if info is not None else _fallback_name(m, uid)
            author_id = uid or (bot_id if isinstance(bot_id, str) and bot_id else None)

            if author_mode:
                if is_bot:
                    skipped["slack:bot_author"] += 1
                    continue
                if not uid:
                    skipped["slack:no_author"] += 1
                    continue
                owner = self.owner_cache.get(uid, "")
                if owner == "":
                    owner = owner_id(uid, info, author_name, s)
                    self.owner_cache[uid] = owner
                if owner is None:
                    skipped["slack:author_unmapped"] += 1
                    continue
            else:
                owner = workspace_owner

            # content
            text = m.text
            files = None
            if type(text) is str and text:
                if "<" in text or "&" in text or "xox" in text:
                    content = render_mrkdwn(text, names)
                else:
                    content = text
            else:
                files = _file_names(m)
                content = fallback_content(
                    {"blocks": _raw(m.blocks), "attachments": _raw(m.attachments)}, names, files
                )
            if not content or content.isspace():
                skipped["slack:empty"] += 1
                continue

            thread_ts = m.thread_ts
            if type(thread_ts) is not str or not thread_ts or thread_ts == NO_THREAD:
                thread_ts = None
            if mode == "thread":
                if thread_ts is not None:
                    conv = thread_ts
                else:
                    day = day_cache.get(micros // day_step)
                    if day is None:
                        day = day_of(micros)
                    conv = day
            else:
                conv = None
            if thread_of is not None:
                thread_of.append(thread_ts)

            if (
                subtype is None
                and not is_bot
                and not m.edited
                and not m.reactions
                and not m.files
                and not m.file
                and (thread_ts is None or _json_safe_ts(thread_ts))
            ):  # the common case: JSON text without building a dict (ts is digits and ".")
                if thread_ts is None:
                    meta_text = f'{meta_head}{ts}"}}'
                else:
                    meta_text = f'{meta_head}{ts}","thread_ts":"{thread_ts}"}}'
            else:
                meta: dict[str, Any] = {"channel": label, "channel_id": channel_id, "ts": ts}
                if thread_ts is not None:
                    meta["thread_ts"] = thread_ts
                if subtype is not None:
                    meta["subtype"] = subtype
                    if subtype == "thread_broadcast":
                        meta["broadcast"] = True
                if m.edited:
                    meta["edited"] = True
                if m.reactions:
                    meta["reactions"] = _reactions(m.reactions)
                if files is None and (m.files or m.file):
                    files = _file_names(m)
                if files:
                    meta["files"] = files
                if is_bot:
                    meta["bot"] = True
                meta_text = dumps(meta).decode()

            c_pos.append(index)
            c_ts.append(ts)
            c_conv.append(conv)
            if author_mode:
                c_user.append(owner)
            c_bot.append(is_bot)
            c_aid.append(author_id)
            c_aname.append(author_name)
            c_content.append(content)
            c_time.append(micros)
            c_meta.append(meta_text)
        if len(c_ts) > rows_before:
            rows.file_ends.append((file_name, channel_id, self.channel, len(c_ts)))

    def _assign_sessions(self, s: Settings, first_row: int) -> None:
        """Split the unit's top-level messages (its rows from `first_row`) at gaps; replies
        join their parent's session (or keep their thread when it is not in the unit)."""
        cols = self.rows.cols
        times, stamps, keys = cols["created_at"], cols["ts"], cols["conversation_key"]
        thread_of = self.rows.thread_of
        gap = s.session_gap_seconds * 1_000_000
        order = sorted(range(first_row, len(times)), key=times.__getitem__)
        session_of_ts: dict[str, str] = {}
        current = ""
        last: int | None = None
        for i in order:
            thread_ts, ts = thread_of[i], stamps[i]
            if thread_ts is not None and thread_ts != ts:
                continue
            if last is None or times[i] - last > gap:
                current = SESSION_PREFIX + ts
            last = times[i]
            session_of_ts[ts] = current
            keys[i] = current
        for i in order:
            thread_ts = thread_of[i]
            if thread_ts is not None and thread_ts != stamps[i]:
                keys[i] = session_of_ts.get(thread_ts, thread_ts)


_COMMON_POSITIONS = 4096


@functools.cache
def _common_positions() -> pa.Array:
    """`$[0]` ... `$[4095]`, built on first use (not at import: see `skip_pandas_probe`)."""
    return pa.array([f"$[{i}]" for i in range(_COMMON_POSITIONS)], pa.string())


def _positions(indexes: list[int]) -> pa.Array:
    """`$[i]` for each element index (most are small: taken from a prebuilt array)."""
    array = pa.array(indexes, pa.int64())
    if max(indexes) < _COMMON_POSITIONS:
        return _common_positions().take(array)
    return pc.binary_join_element_wise("$[", array.cast(pa.string()), "]", "")


def _large_strings(values: list[str]) -> pa.Array:
    """`large_string_array`, replacing lone surrogates (from broken JSON escapes) if any."""
    try:
        return large_string_array(values)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        return large_string_array([replace_surrogates(v) for v in values])


def _file_names(m: Msg) -> list[str]:
    if not m.files and not m.file:
        return []
    return file_names({"files": _raw(m.files), "file": _raw(m.file)})


def _fallback_author(m: Msg) -> str | None:
    """Sender of a message without `user`: comment.user, then file.user."""
    for raw in (m.comment, m.file):
        value = _raw(raw)
        if isinstance(value, dict) and isinstance(value.get("user"), str) and value["user"]:
            return str(value["user"])
    return None


def _fallback_name(m: Msg, uid: str | None) -> str:
    """Name of a sender missing from users.json: user_profile, bot_profile, username, id."""
    profile = _raw(m.user_profile)
    if isinstance(profile, dict):
        for key in ("display_name", "real_name", "name"):
            value = profile.get(key)
            if isinstance(value, str) and value:
                return value
    if uid == "USLACKBOT":
        return "Slackbot"
    bot = _raw(m.bot_profile)
    if isinstance(bot, dict) and isinstance(bot.get("name"), str) and bot["name"]:
        return str(bot["name"])
    if isinstance(m.username, str) and m.username:
        return m.username
    if uid:
        return uid
    return m.bot_id if isinstance(m.bot_id, str) and m.bot_id else "unknown"


def _reactions(reactions: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(reactions, list):
        for r in reactions:
            if isinstance(r, dict) and r.get("name"):
                users = r.get("users")
                count = r.get("count")
                if not isinstance(count, int):
                    count = len(users) if isinstance(users, list) else 1
                out.append({"name": str(r["name"]), "count": count})
    return out


# Worker-process state: the export context, loaded from its file by the first job that
# names it and kept for the worker's later jobs, with a file reader.
_WORKER: dict[str, Any] = {}


def skip_pandas_probe() -> None:
    """Keep pyarrow from importing pandas in this process.

    pyarrow's first list conversion imports pandas (~0.3 s and ~50 MB per process) just
    to ask whether the list is a pandas object; a worker never holds one. Refusing that
    one import makes pyarrow remember "no pandas" (later code may still import it).
    """
    if "pandas" in sys.modules:
        return
    with refused_imports("pandas"):
        pa.array([0])


def init_worker() -> None:
    """Worker set-up (see `connectors.slack.workers`): no pandas, Arrow's system allocator.

    It needs no context, so the pool can start while the main process still reads the
    export's listing and index.
    """
    skip_pandas_probe()
    pa.set_memory_pool(pa.system_memory_pool())


def save_context(ctx: Context, path: Path) -> None:
    """Write `ctx` for workers (read once per worker, instead of once per job)."""
    path.write_bytes(pickle.dumps(ctx, protocol=pickle.HIGHEST_PROTOCOL))


def run_in_worker(job: Job, context_file: str) -> JobResult:
    """Run one job with the context saved in `context_file` (see `save_context`)."""
    if _WORKER.get("context_file") != context_file:
        if "reader" in _WORKER:
            _WORKER["reader"].close()
        ctx = pickle.loads(Path(context_file).read_bytes())
        _WORKER.update(context_file=context_file, ctx=ctx, reader=FileReader(ctx.export))
    # Freed memory is kept for the next job: handing it back to the system after every
    # job (malloc_trim) cost ~250,000 page faults per million messages (~3% more CPU per
    # message in one-process runs, four pairs).
    return run_job(job, _WORKER["ctx"], _WORKER["reader"])
