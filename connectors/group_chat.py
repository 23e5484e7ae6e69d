"""Owner and conversation policies shared by the group-chat connectors (Telegram, Discord).

A chat export holds many people talking. Two choices turn it into MemOS memories:

- **Whose memory** (`memory_owner`): `workspace` puts everything under the one configured
  `user_id` and prefixes content with the speaker (`Alice: ...`); `author` gives each
  person's own messages to their own `user_id` (from `user_id_template` or `user_map`;
  bots are skipped); `group` (MemOS group-chat mode) puts everything under the one
  `user_id` with no prefix: the speaker travels in `author_id`/`author_name`. Every mode
  fills `author_id` and `author_name` on every row.
- **What a conversation is** (`conversation`): the whole chat, a reply thread, or a
  session (messages split where the chat was quiet longer than `session_gap_minutes`).

Both keep ids stable when a longer export of the same chat is read again: a message's
conversation depends only on messages before it, so new messages never move old ones.
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Formatter
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorOptions, user_id_template
from pipeline.core.errors import ConfigError


class GroupChatOptions(ConnectorOptions):
    """Options common to the group-chat sources (keys under a source's `options:`)."""

    memory_owner: Literal["workspace", "author", "group"] = "workspace"
    """workspace: everything to `user_id`, speaker-prefixed; author: each person to their
    own user_id; group: everything to `user_id`, no prefix (MemOS group-chat mode)."""
    user_id_template: str = "{id}"
    """author mode: user_id made from the sender's {id} or {name}."""
    user_map: Path | None = None
    """author mode: JSON object or two-column CSV mapping sender id or name to user_id."""
    speaker_prefix: bool | None = None
    """Prefix content with "Name: "; default on in workspace mode, off otherwise (never
    allowed in group mode)."""
    session_gap_minutes: int = Field(default=60, ge=1)
    """session mode: a gap longer than this starts a new conversation."""

    @field_validator("user_id_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        return user_id_template(value, ("id", "name"))

    @model_validator(mode="after")
    def _group_has_no_prefix(self) -> GroupChatOptions:
        if self.memory_owner == "group" and self.speaker_prefix:
            raise ValueError(
                "speaker_prefix cannot be on with memory_owner 'group' (the speaker is "
                "sent as the message's role name instead)"
            )
        return self


@dataclass
class Owners:
    """Decides the memory owner of each message under one `memory_owner` policy."""

    mode: str
    user_id: str
    template: str = "{id}"
    user_map: dict[str, str] = field(default_factory=dict)
    prefix: bool = True
    _cache: dict[tuple[str, str], str | None] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: GroupChatOptions, source: str) -> Owners:
        """The policy of `options`; workspace and group modes need a `user_id`."""
        if options.memory_owner != "author" and not options.user_id:
            raise ConfigError(
                f"{source} source: memory_owner {options.memory_owner!r} needs a user_id (set "
                "`user_id:` on the source or in the config, or pass --user-id)"
            )
        prefix = options.speaker_prefix
        if prefix is None:
            prefix = options.memory_owner == "workspace"
        return cls(
            mode=options.memory_owner,
            user_id=options.user_id or "",
            template=options.user_id_template,
            user_map=load_user_map(options.user_map) if options.user_map else {},
            prefix=prefix,
        )

    @property
    def per_author(self) -> bool:
        return self.mode == "author"

    def author_owner(self, author_id: str, name: str) -> str | None:
        """author mode: the user_id for a sender (None: it cannot be mapped)."""
        key = (author_id, name)
        if key in self._cache:
            return self._cache[key]
        owner = self.user_map.get(author_id) or self.user_map.get(name)
        if owner is None:
            values = {"id": author_id, "name": name}
            used = {f for _, f, _, _ in Formatter().parse(self.template) if f}
            if all(values.get(f) for f in used):
                owner = self.template.format(**values)
        self._cache[key] = owner
        return owner


def load_user_map(
    path: Path,
    header_keys: tuple[str, ...] = ("key", "id", "sender"),
    key_hint: str = "sender id or name",
) -> dict[str, str]:
    """Read a user map: a JSON object, or a CSV whose first two columns are key, user_id.

    A first CSV row whose first cell is one of `header_keys` is a header; `key_hint` names
    the key in the one-line error a malformed row gets (each connector says what it maps).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"user_map {path}: cannot read ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"user_map {path}: not valid JSON ({exc})") from None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
        ):
            raise ConfigError(f"user_map {path}: expected a JSON object of string -> string")
        return dict(value)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"user_map {path}: not UTF-8 text") from None
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or (n == 1 and row[0].strip().lower() in header_keys):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"user_map {path} line {n}: expected `{key_hint},user_id`")
        out[row[0].strip()] = row[1].strip()
    return out


SESSION_PREFIX = "session-"
THREAD_PREFIX = "thread-"
DAY_US = 86_400_000_000


@dataclass
class Conversations:
    """Assigns each message of one chat to a conversation key (None: the whole chat).

    Messages must come in the chat's order (ids and times increasing, as both exporters
    write them). `chat`: None for all. `session`: a new session starts where the time
    since the previous message exceeds the gap; its key is `session-<first message id>`.
    A reply whose parent is in an earlier session joins the parent's session, so a late
    answer stays with its question. `thread`: a reply belongs to `thread-<root id>`, the
    root being the first message of its reply chain (the root itself stays where it is,
    in its day); other messages are grouped by UTC day (`YYYY-MM-DD`).
    """

    mode: Literal["chat", "thread", "session"]
    gap_us: int = 3_600_000_000
    _starts: list[int] = field(default_factory=list)
    """session: the ordering key of each session's first message, ascending."""
    _keys: list[str] = field(default_factory=list)
    _moved: dict[int, str] = field(default_factory=dict)
    """session: replies placed in an earlier session (their own replies follow them)."""
    _last_us: int | None = None
    _root: dict[int, int] = field(default_factory=dict)
    """thread: reply id -> root id."""

    def key(self, order: int, micros: int | None, reply_to: int | None) -> str | None:
        """The conversation key of message `order` (its id as an increasing integer)."""
        if self.mode == "chat":
            return None
        if self.mode == "thread":
            if reply_to is None:
                if micros is None:
                    return "undated"
                return datetime.fromtimestamp(micros // DAY_US * 86_400, timezone.utc).strftime(
                    "%Y-%m-%d"
                )
            root = self._root.get(reply_to, reply_to)
            self._root[order] = root
            return f"{THREAD_PREFIX}{root}"
        return self._session(order, micros, reply_to)

    def _session(self, order: int, micros: int | None, reply_to: int | None) -> str:
        if micros is not None:
            last = self._last_us
            if last is None or micros - last > self.gap_us or not self._keys:
                self._starts.append(order)
                self._keys.append(f"{SESSION_PREFIX}{order}")
            if last is None or micros > last:
                self._last_us = micros
        elif not self._keys:
            self._starts.append(order)
            self._keys.append(f"{SESSION_PREFIX}{order}")
        current = self._keys[-1]
        if reply_to is None:
            return current
        parent = self._moved.get(reply_to)
        if parent is None:
            if reply_to >= self._starts[-1]:
                return current
            at = bisect.bisect_right(self._starts, reply_to) - 1
            if at < 0:
                return current  # the parent is older than the export: stay in time order
            parent = self._keys[at]
        self._moved[order] = parent
        return parent


def micros_from_iso(value: Any) -> int | None:
    """Epoch microseconds of an ISO-8601 time with an offset (`Z` accepted), else None."""
    if type(value) is not str or len(value) < 19:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_from_micros(micros: int) -> str:
    """`2024-01-02T03:04:05Z` for epoch microseconds (metadata times)."""
    return datetime.fromtimestamp(micros // 1_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
