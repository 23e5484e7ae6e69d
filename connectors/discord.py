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

from connectors.discord_model import Message, as_message, decode_message, decode_messages
from connectors.discord_text import Names, attachment_lines, render_markup
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
    file = _File(label, channel, conversations)
    array: Array | None = None
    try:
        with export.open(channel.name) as fh:
            for event in walk(fh, descend=lambda p: p == (), stream=_is_messages):
                if type(event) is not Array:
                    continue
                array = event
                full, take = state.rows.__len__, state.rows.take
                limit = state.rows.rows_per_table
                for first, values in event.runs(decode_messages, decode_message):
                    problems = _stage(values, first, file, state)
                    if problems:
                        yield from problems
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


@dataclass
class _File:
    """What every message of one channel file shares, worked out once per file."""

    label: str
    channel: _Channel
    conversations: Conversations
    conversation: str = ""
    """`discord:<channel id>`: the conversation id, or its prefix."""
    keyed: bool = True
    """Whether conversation ids have a key after the channel's (all but `channel` mode)."""

    def __post_init__(self) -> None:
        self.conversation = f"{SOURCE}:{self.channel.id}"
        self.keyed = self.conversations.mode != "chat"


def _mode(options: Options) -> Literal["chat", "thread", "session"]:
    return "chat" if options.conversation == "channel" else options.conversation


def _snowflake(value: Any) -> int | None:
    if type(value) is str and value.isdigit() and value.isascii() and len(value) < 20:
        return int(value)
    if type(value) is int and 0 < value < 1 << 63:
        return value
    return None


def _stage(  # noqa: C901, PLR0912, PLR0915 (one pass over each record's fields, in order)
    values: list[Any], first: int, file: _File, state: _State
) -> list[Quarantined]:
    """Stage each message of a run (append a row) or count it as skipped; the quarantine
    entries of broken records. `values[i]` is element `first + i` of the file's array.

    One loop over the run, with everything the messages share read once before it: the
    per-message code is most of a Discord extract's time.
    """
    problems: list[Quarantined] = []
    skipped = state.skipped
    seen = state.seen
    names = state.names
    users = names.users
    known_roles = names.roles
    owners = state.owners
    per_author = owners.per_author
    prefix = owners.prefix
    owner = owners.user_id
    label = file.label
    meta_head = file.channel.meta_head
    conversation = file.conversation
    session_key = file.conversations.key if file.keyed else None
    (
        add_source,
        add_file,
        add_position,
        add_id,
        add_conversation,
        add_owner,
        add_role,
        add_author_id,
        add_author,
        add_content,
        add_time,
        add_seq,
        add_meta,
    ) = state.add
    for index, msg in enumerate(values, first):
        if not isinstance(msg, Message):
            msg = as_message(msg)
            if not isinstance(msg, Message):
                problems.append(_unusable(msg, index, label))
                continue
        snowflake = int(msg.id)  # a snowflake: the schema and `as_message` take no other
        kind = msg.type
        if kind not in KEPT_TYPES:
            if kind in SYSTEM_TYPES:
                skipped["discord:" + kind] += 1
                continue
            if kind.isdigit() and kind not in _KEPT_NUMBERS:
                skipped["discord:system_type"] += 1
                continue
        if snowflake in seen:
            skipped["discord:duplicate"] += 1
            continue

        # author
        author = msg.author
        author_id: str | None = None
        name = "Unknown"
        is_bot = False
        handle = ""
        if author is not None:
            aid = author.id
            author_id = aid if type(aid) is str and aid else None
            given = author.name
            handle = given if type(given) is str else ""
            nickname = author.nickname
            name = (nickname if type(nickname) is str else "") or handle or author_id or "Unknown"
            is_bot = author.isBot is True
            if author_id is not None:
                users[author_id] = name
            if author.roles:
                for role in author.roles:
                    rid, rname = role.id, role.name
                    if type(rid) is str and type(rname) is str and rname:
                        known_roles[rid] = rname
        if per_author:
            if is_bot:
                skipped["discord:bot_author"] += 1
                continue
            if author_id is None:
                skipped["discord:no_author"] += 1
                continue
            mapped = owners.author_owner(author_id, handle or name)
            if mapped is None:
                skipped["discord:author_unmapped"] += 1
                continue
            owner = mapped

        # content
        extra: dict[str, Any] = {}
        text = msg.content
        content = text if type(text) is str else ""
        if "<" in content:
            content = render_markup(content, msg.mentions, names)
        forwarded = msg.forwardedMessage
        if msg.attachments or msg.stickers or msg.embeds or type(forwarded) is dict:
            content = _with_attachments(msg, content, forwarded, names, extra)
        if not content or content.isspace():
            skipped["discord:empty"] += 1
            continue
        seen.add(snowflake)

        micros = micros_from_iso(msg.timestamp)
        reply_to = None
        reference = msg.reference
        if type(reference) is dict and reference.get("type") in (None, "Default"):
            reply_to = _snowflake(reference.get("messageId"))
            if reply_to is not None:
                extra["reply_to_message_id"] = str(reply_to)
                extra["reply_to"] = f"{SOURCE}:{reply_to}"
        if (
            msg.timestampEdited is not None
            or msg.isPinned is True
            or is_bot
            or msg.reactions
            or msg.interaction is not None
            or (kind != "Default" and kind != "Reply")
        ):
            _more_metadata(msg, kind, extra, is_bot)

        add_source(SOURCE)
        add_file(label)
        add_position(f"messages[{index}]")
        add_id(f"{SOURCE}:{snowflake}")
        if session_key is None:
            add_conversation(conversation)
        else:
            add_conversation(f"{conversation}:{session_key(snowflake, micros, reply_to)}")
        add_owner(owner)
        add_role("assistant" if is_bot else "user")
        add_author_id(author_id)
        add_author(name)
        add_content(f"{name}: {content}" if prefix else content)
        add_time(micros)
        add_seq(snowflake)
        if extra:  # no key of `extra` is in the head: the same text as dumping them merged
            add_meta(f'{meta_head}{snowflake}",{orjson.dumps(extra, default=str).decode()[1:]}')
        else:
            add_meta(f'{meta_head}{snowflake}"}}')
    return problems


def _with_attachments(
    msg: Message, content: str, forwarded: Any, names: Names, extra: dict[str, Any]
) -> str:
    """The message's text followed by its attachments, stickers, embeds and forwarded
    message (an empty text left out)."""
    parts = [content] if content.strip() else []
    if msg.attachments or msg.stickers or msg.embeds:
        parts.extend(attachment_lines(msg.attachments, msg.stickers, msg.embeds, extra))
    if type(forwarded) is dict:
        inner = _text(forwarded.get("content"))
        if "<" in inner:
            inner = render_markup(inner, None, names)
        lines = [inner] if inner.strip() else []
        lines.extend(
            attachment_lines(
                forwarded.get("attachments"), forwarded.get("stickers"), forwarded.get("embeds"), {}
            )
        )
        if lines:
            parts.append("[forwarded message]\n" + "\n".join(lines))
            extra["forwarded"] = True
    return "\n".join(parts)


def _unusable(value: Any, index: int, label: str) -> Quarantined:
    """The quarantine entry of a record that is not an object or has no snowflake `id`."""
    where = f"messages[{index}]"
    if type(value) is not dict:
        kind = "null" if value is None else type(value).__name__
        return Quarantined(
            label,
            where,
            f"discord:not_a_message: message is a JSON {kind}, not an object",
            excerpt(repr(value)),
        )
    return Quarantined(
        label, where, "discord:no_id: message has no snowflake `id`", excerpt(repr(value))
    )


def _more_metadata(msg: Message, kind: str, extra: dict[str, Any], is_bot: bool) -> None:
    edited_at = msg.timestampEdited
    if edited_at is not None and (edited := micros_from_iso(edited_at)) is not None:
        extra["edited"] = iso_from_micros(edited)
    if msg.isPinned is True:
        extra["pinned"] = True
    if kind not in ("Default", "Reply"):
        extra["type"] = kind
    if is_bot:
        extra["bot"] = True
    interaction = msg.interaction
    if type(interaction) is dict and _text(interaction.get("name")):
        used: dict[str, Any] = {"name": interaction["name"]}
        user = interaction.get("user")
        if type(user) is dict:
            used["user"] = _text(user.get("nickname")) or _text(user.get("name"))
        extra["interaction"] = used
    reactions = msg.reactions
    if reactions:
        kept = []
        for r in reactions:
            if type(r.count) is int:
                emoji = r.emoji
                name = _text(emoji.get("name")) if type(emoji) is dict else ""
                if name:
                    kept.append({"emoji": name, "count": r.count})
        if kept:
            extra["reactions"] = kept
