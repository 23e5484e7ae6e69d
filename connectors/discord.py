"""DiscordChatExporter JSON exports -> staging events.

Input: one channel file (`{guild, channel, dateRange, exportedAt, messages: [...],
messageCount}` as Tyrrrz/DiscordChatExporter writes it), or a folder or ZIP of them (one
file per channel, thread or partition). Each file is streamed message by message
(`connectors.nested_json`); a first pass reads only each file's header, to name channels
in mentions and to read a channel's partitions in order.

Contract (every rule, option and reason: docs/discord.md):
- One staged row per `Default`/`Reply` (and slash-command) message with something
  readable; system messages (joins, pins, thread created, calls, boosts, ...) are skipped
  as `discord:<Type>`, empty ones as `discord:empty`, a message id seen before (an
  overlapping re-export in the same folder) as `discord:duplicate`; a record that is not
  an object or has no snowflake `id` is quarantined alone.
- `message_id` is `discord:<message snowflake>`, `seq` the snowflake; `created_at` the
  `timestamp` (with its offset, in UTC). Raw mentions (`<@id>`, `<#id>`, `<@&id>`,
  `<:emoji:id>`, `<t:unix:f>`) become names; attachments, embeds, stickers and forwarded
  messages become text. Replies keep `reference.messageId`; edits keep the final text.
- Owners and conversations follow `connectors.group_chat`.
"""

from __future__ import annotations

import fnmatch
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field

from connectors.discord_model import decode_message
from connectors.discord_text import Names, attachment_lines, learn_roles, render_markup
from connectors.export_files import ExportFiles
from connectors.group_chat import (
    Conversations,
    GroupChatOptions,
    Owners,
    iso_from_micros,
    micros_from_iso,
)
from connectors.group_chat_jobs import Job, group_units, run_jobs, worker_count
from connectors.json_stream import JSONStreamError
from connectors.nested_json import Array, Enter, walk
from connectors.nested_json import Field as JsonField
from connectors.nested_json import Path as JsonPath
from connectors.row_buffer import Appenders, RowBuffer
from pipeline.core.errors import InputError
from pipeline.core.models import Event, Quarantined, Skipped, excerpt
from pipeline.core.staging import part_path

SOURCE = "discord"
HEAD_BYTES = 64 * 1024
HEADER_CHUNK = 64 * 1024
"""The header pass reads a file in steps this small: it stops at the first message, and the
walk's default 8 MB read would pull most of every channel file through the main process
before any worker starts."""
LOOK_FILES = 3
"""`looks_like` reads the head of at most this many JSON files (64 KB in all)."""

KEPT_TYPES = frozenset({"Default", "Reply", "ChatInputCommand", "ContextMenuCommand"})
"""Message types staged as messages (with numeric forms 0, 19, 20, 23)."""
SYSTEM_TYPES = frozenset(
    [
        "RecipientAdd",
        "RecipientRemove",
        "Call",
        "ChannelNameChange",
        "ChannelIconChange",
        "ChannelPinnedMessage",
        "GuildMemberJoin",
        "UserPremiumGuildSubscription",
        "UserPremiumGuildSubscriptionTier1",
        "UserPremiumGuildSubscriptionTier2",
        "UserPremiumGuildSubscriptionTier3",
        "ChannelFollowAdd",
        "GuildDiscoveryDisqualified",
        "GuildDiscoveryRequalified",
        "GuildDiscoveryGracePeriodInitialWarning",
        "GuildDiscoveryGracePeriodFinalWarning",
        "ThreadCreated",
        "ThreadStarterMessage",
        "GuildInviteReminder",
        "AutoModerationAction",
        "RoleSubscriptionPurchase",
        "InteractionPremiumUpsell",
        "StageStart",
        "StageEnd",
        "StageSpeaker",
        "StageTopic",
        "GuildApplicationPremiumSubscription",
        "GuildIncidentAlertModeEnabled",
        "GuildIncidentAlertModeDisabled",
        "GuildIncidentReportRaid",
        "GuildIncidentReportFalseAlarm",
        "PurchaseNotification",
        "PollResult",
    ]
)
"""System notifications (DiscordChatExporter writes their fallback text as `content`)."""
_KEPT_NUMBERS = frozenset({"0", "19", "20", "23"})
THREAD_KINDS = frozenset({"GuildNewsThread", "GuildPublicThread", "GuildPrivateThread"})


class Options(GroupChatOptions):
    """Keys allowed under a `discord` source's `options:` (see docs/discord.md)."""

    conversation: Literal["channel", "thread", "session"] = "session"
    """channel: one conversation per channel or thread; thread: each reply chain, other
    messages per day; session: split a channel where it was quiet longer than
    `session_gap_minutes`."""
    channels: list[str] = Field(default_factory=list)
    """Only these channels (names, ids, `category/name`, or glob patterns); empty: all."""
    exclude_channels: list[str] = Field(default_factory=list)
    workers: int | None = Field(default=None, ge=1, le=64)
    """Worker processes; default: one per CPU core (in-process below 16 MB of files)."""


def looks_like(path: Path) -> bool:
    """True when `path` looks like DiscordChatExporter JSON (reads at most ~64 KB)."""
    try:
        with ExportFiles(path, sibling_globs=()) as export:
            for name in _json_files(export)[:LOOK_FILES]:
                with export.open(name) as fh:
                    if is_discord_head(fh.read(HEAD_BYTES // LOOK_FILES)):
                        return True
    except (InputError, OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return False
    return False


_HEAD = re.compile(rb'^\{\s*"guild"\s*:\s*\{')


def is_discord_head(head: bytes) -> bool:
    """Whether the first bytes of a JSON file look like a DiscordChatExporter channel file."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return _HEAD.match(text) is not None and b'"channel"' in text


def _json_files(export: ExportFiles) -> list[str]:
    if export.single_file:
        return [export.single_file]
    return [n for n in export.names if n.lower().endswith(".json")]


@dataclass
class _Channel:
    """One channel file's header."""

    name: str
    guild_id: str = ""
    guild: str = ""
    id: str = ""
    channel: str = ""
    kind: str = ""
    parent_id: str = ""
    parent: str = ""
    first: int = 0
    problem: str | None = None
    meta_head: str = ""


@dataclass
class _State:
    options: Options
    owners: Owners
    channel_names: dict[str, str]
    rows: RowBuffer = field(default_factory=RowBuffer)
    add: Appenders = ()
    skipped: Counter[str] = field(default_factory=Counter)
    seen: set[int] = field(default_factory=set)
    conversations: dict[str, Conversations] = field(default_factory=dict)
    names: Names = field(default_factory=Names)

    def __post_init__(self) -> None:
        self.add = self.rows.appenders()
        self.names.channels = self.channel_names


WRITES_PARTS = True
"""`read` takes `parts_dir=` (see connectors/base.py): channels are staged in workers."""


@dataclass(frozen=True)
class _Context:
    """What every job of one export shares (sent once per job to a worker)."""

    path: Path
    options: Options
    owners: Owners
    channel_names: dict[str, str]


def read(path: Path, options: Options, parts_dir: Path | None = None) -> Iterator[Event]:
    """Yield the events of every message of every channel file at `path`.

    Channels (each with all its files) are grouped into jobs; with `parts_dir` and enough
    data, worker processes stage the jobs into Parquet parts, else they run in-process.
    Either way the rows are the same: each job keeps its own duplicate and name lookups.
    """
    owners = Owners.from_options(options, SOURCE)
    with ExportFiles(path, sibling_globs=()) as export:
        headers = [_header(export, name) for name in _json_files(export)]
        channels = [h for h in headers if h.problem is None]
        if not channels:
            raise InputError(
                f"{path}: no DiscordChatExporter JSON file found (export with `--format Json`)"
            )
        for bad in headers:
            if bad.problem is not None:
                yield Quarantined(export.label(bad.name), "file", f"discord:{bad.problem}")
        units: dict[str, list[_Channel]] = {}
        for channel in sorted(channels, key=lambda c: (c.id, c.first, c.name)):
            if _wanted(channel, options):
                units.setdefault(channel.id, []).append(channel)
        sizes = [(unit, sum(export.size(c.name) for c in unit)) for unit in units.values()]
    context = _Context(path, options, owners, {c.id: c.channel for c in channels if c.channel})
    workers = worker_count(options.workers, sum(size for _, size in sizes))
    jobs = [
        Job(
            tuple(c for unit in group for c in unit),
            context,
            str(part_path(parts_dir, i)) if parts_dir is not None and workers > 1 else None,
        )
        for i, group in enumerate(group_units(sizes))
    ]
    yield from run_jobs(_job, jobs, min(workers, len(jobs)))


def _job(job: Job) -> Iterator[Event]:
    """Stage the channels of one job (in a worker process or in-process)."""
    context: _Context = job.context
    state = _State(context.options, context.owners, context.channel_names)
    with ExportFiles(context.path, sibling_globs=()) as export:
        for channel in job.units:
            yield from _read_file(export, channel, state)
    table = state.rows.take()
    if table is not None:
        yield table
    for reason, count in sorted(state.skipped.items()):
        yield Skipped(reason, count)


def _header(export: ExportFiles, name: str) -> _Channel:
    """The guild and channel of a file (and its first message id), read up to that message."""
    header = _Channel(name)
    try:
        with export.open(name) as fh:
            events = walk(fh, descend=lambda p: p == (), stream=_is_messages, chunk=HEADER_CHUNK)
            for event in events:
                if type(event) is JsonField and len(event.path) == 1:
                    key, value = event.path[0], event.value
                    if key in ("guild", "channel") and isinstance(value, dict):
                        _fill_header(header, key, value)
                elif type(event) is Enter and event.path == ("messages",):
                    if not header.id:
                        header.problem = "not_a_channel_file: no `channel.id` before `messages`"
                        return header
                elif type(event) is Array:
                    for value in event.values():
                        if type(value) is dict:
                            header.first = _snowflake(value.get("id")) or 0
                        break
                    return header
    except JSONStreamError as exc:
        header.problem = f"malformed_json: {exc} at byte {exc.offset}; file not read"
        return header
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        header.problem = f"unreadable_file: {exc}; file not read"
        return header
    header.problem = "not_a_channel_file: no `messages` array (not DiscordChatExporter JSON)"
    return header


def _is_messages(path: JsonPath) -> bool:
    return path == ("messages",)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _fill_header(header: _Channel, key: str | int, value: dict[str, Any]) -> None:
    if key == "guild":
        header.guild_id = _text(value.get("id"))
        header.guild = _text(value.get("name"))
        return
    header.id = _text(value.get("id"))
    header.channel = _text(value.get("name"))
    header.kind = _text(value.get("type"))
    header.parent_id = _text(value.get("categoryId"))
    header.parent = _text(value.get("category"))
    meta: dict[str, Any] = {
        "guild": header.guild,
        "guild_id": header.guild_id,
        "channel": header.channel,
        "channel_id": header.id,
        "channel_type": header.kind,
    }
    if header.kind in THREAD_KINDS:
        meta["thread_of"] = header.parent
        meta["thread_of_id"] = header.parent_id
    elif header.parent:
        meta["category"] = header.parent
    header.meta_head = orjson.dumps(meta).decode()[:-1] + ',"id":"'


def _wanted(channel: _Channel, options: Options) -> bool:
    keys = (channel.id, channel.channel, f"{channel.parent}/{channel.channel}")
    if options.channels and not _matches(options.channels, keys):
        return False
    return not _matches(options.exclude_channels, keys)


def _matches(patterns: list[str], keys: tuple[str, ...]) -> bool:
    return any(k and fnmatch.fnmatchcase(k, p) for p in patterns for k in keys)


def _read_file(export: ExportFiles, channel: _Channel, state: _State) -> Iterator[Event]:
    label = export.label(channel.name)
    options = state.options
    conversations = state.conversations.setdefault(
        channel.id, Conversations(_mode(options), options.session_gap_minutes * 60_000_000)
    )
    array: Array | None = None
    try:
        with export.open(channel.name) as fh:
            for event in walk(fh, descend=lambda p: p == (), stream=_is_messages):
                if type(event) is not Array:
                    continue
                array = event
                full, take = state.rows.__len__, state.rows.take
                limit = state.rows.rows_per_table
                for value in event.values(decode_message):
                    problem = _message(value, event.index, channel, conversations, state, label)
                    if problem is not None:
                        yield problem
                    if full() >= limit and (table := take()) is not None:
                        yield table
    except JSONStreamError as exc:
        yield Quarantined(
            label,
            f"byte {exc.offset} (message #{exc.index})",
            f"discord:malformed_json: {exc}; messages from here to the end of this file "
            "were not read",
        )
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        yield Quarantined(
            label,
            f"after message #{array.index if array else 0}",
            f"discord:unreadable_file: {exc}; the rest of this file was not read",
        )


def _mode(options: Options) -> Literal["chat", "thread", "session"]:
    return "chat" if options.conversation == "channel" else options.conversation


def _snowflake(value: Any) -> int | None:
    if type(value) is str and value.isdigit() and value.isascii() and len(value) < 20:
        return int(value)
    if type(value) is int and 0 < value < 1 << 63:
        return value
    return None


def _message(  # noqa: C901 (one pass over the record's fields, in order)
    msg: Any,
    index: int,
    channel: _Channel,
    conversations: Conversations,
    state: _State,
    label: str,
) -> Quarantined | None:
    """Stage one message (append a row) or count it as skipped; a quarantine entry if broken."""
    where = f"messages[{index}]"
    if type(msg) is not dict:
        kind = "null" if msg is None else type(msg).__name__
        return Quarantined(
            label,
            where,
            f"discord:not_a_message: message is a JSON {kind}, not an object",
            excerpt(repr(msg)),
        )
    snowflake = _snowflake(msg.get("id"))
    if snowflake is None:
        return Quarantined(
            label,
            where,
            "discord:no_id: message has no snowflake `id`",
            excerpt(repr(msg)),
        )
    skipped = state.skipped
    kind = msg.get("type", "Default")
    if type(kind) is not str:  # any JSON value may stand here; lists are not hashable
        kind = str(kind)
    if kind not in KEPT_TYPES:
        if kind in SYSTEM_TYPES:
            skipped["discord:" + kind] += 1
            return None
        if kind.isdigit() and kind not in _KEPT_NUMBERS:
            skipped["discord:system_type"] += 1
            return None
    if snowflake in state.seen:
        skipped["discord:duplicate"] += 1
        return None

    # author
    author = msg.get("author")
    author_id: str | None = None
    name = "Unknown"
    is_bot = False
    handle = ""
    if type(author) is dict:
        aid = author.get("id")
        author_id = aid if type(aid) is str and aid else None
        given = author.get("name")
        handle = given if type(given) is str else ""
        nickname = author.get("nickname")
        name = (nickname if type(nickname) is str else "") or handle or author_id or "Unknown"
        is_bot = author.get("isBot") is True
        if author_id is not None:
            state.names.users[author_id] = name
        learn_roles(author.get("roles"), state.names.roles)
    owners = state.owners
    if owners.per_author:
        if is_bot:
            skipped["discord:bot_author"] += 1
            return None
        if author_id is None:
            skipped["discord:no_author"] += 1
            return None
        owner = owners.author_owner(author_id, handle or name)
        if owner is None:
            skipped["discord:author_unmapped"] += 1
            return None
    else:
        owner = owners.user_id

    # content
    extra: dict[str, Any] = {}
    text = msg.get("content")
    content = text if type(text) is str else ""
    if "<" in content:
        content = render_markup(content, msg.get("mentions"), state.names)
    parts = [content] if content.strip() else []
    if msg.get("attachments") or msg.get("stickers") or msg.get("embeds"):
        parts.extend(attachment_lines(msg, extra))
    forwarded = msg.get("forwardedMessage")
    if type(forwarded) is dict:
        inner = _text(forwarded.get("content"))
        if "<" in inner:
            inner = render_markup(inner, None, state.names)
        lines = [inner] if inner.strip() else []
        lines.extend(attachment_lines(forwarded, {}))
        if lines:
            parts.append("[forwarded message]\n" + "\n".join(lines))
            extra["forwarded"] = True
    content = "\n".join(parts)
    if not content or content.isspace():
        skipped["discord:empty"] += 1
        return None
    state.seen.add(snowflake)

    micros = micros_from_iso(msg.get("timestamp"))
    reply_to = None
    reference = msg.get("reference")
    if type(reference) is dict and reference.get("type") in (None, "Default"):
        reply_to = _snowflake(reference.get("messageId"))
        if reply_to is not None:
            extra["reply_to_message_id"] = str(reply_to)
            extra["reply_to"] = f"{SOURCE}:{reply_to}"
    _more_metadata(msg, kind, extra, is_bot)

    key = conversations.key(snowflake, micros, reply_to)
    conversation = f"{SOURCE}:{channel.id}" if key is None else f"{SOURCE}:{channel.id}:{key}"
    if extra:  # no key of `extra` is in the head: the same text as dumping them merged
        meta = f'{channel.meta_head}{snowflake}",{orjson.dumps(extra, default=str).decode()[1:]}'
    else:
        meta = f'{channel.meta_head}{snowflake}"}}'
    if owners.prefix:
        content = f"{name}: {content}"
    add = state.add
    add[0](SOURCE)
    add[1](label)
    add[2](where)
    add[3](f"{SOURCE}:{snowflake}")
    add[4](conversation)
    add[5](owner)
    add[6]("assistant" if is_bot else "user")
    add[7](author_id)
    add[8](name)
    add[9](content)
    add[10](micros)
    add[11](snowflake)
    add[12](meta)
    return None


def _more_metadata(msg: dict[str, Any], kind: Any, extra: dict[str, Any], is_bot: bool) -> None:
    edited_at = msg.get("timestampEdited")
    if edited_at is not None and (edited := micros_from_iso(edited_at)) is not None:
        extra["edited"] = iso_from_micros(edited)
    if msg.get("isPinned") is True:
        extra["pinned"] = True
    if kind not in ("Default", "Reply"):
        extra["type"] = kind
    if is_bot:
        extra["bot"] = True
    interaction = msg.get("interaction")
    if type(interaction) is dict and _text(interaction.get("name")):
        used: dict[str, Any] = {"name": interaction["name"]}
        user = interaction.get("user")
        if type(user) is dict:
            used["user"] = _text(user.get("nickname")) or _text(user.get("name"))
        extra["interaction"] = used
    reactions = msg.get("reactions")
    if type(reactions) is list and reactions:
        kept = []
        for r in reactions:
            if type(r) is dict and type(r.get("count")) is int:
                emoji = r.get("emoji")
                name = _text(emoji.get("name")) if type(emoji) is dict else ""
                if name:
                    kept.append({"emoji": name, "count": r["count"]})
        if kept:
            extra["reactions"] = kept
