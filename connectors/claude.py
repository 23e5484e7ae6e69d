"""Claude.ai data export -> the conversations the user saw, one staged row per message.

Input: the export ZIP, its unpacked folder, or a bare `conversations.json` (an array of
`{uuid, name, created_at, account, chat_messages: [...]}`), streamed conversation by
conversation. Contract (see docs/chatgpt-claude.md):
- Roles: sender `human` -> user, `assistant` -> assistant; other senders are skipped.
- Text comes from the `text` blocks of `content[]`; `thinking`, `tool_use` and
  `tool_result` blocks are left out (the top-level `text` can include hidden thinking, so
  it is used only when a message has no content blocks at all).
- The thread follows `parent_message_uuid` when messages carry it (the newest leaf is the
  visible branch, Claude has no `current_node`), else array order. Other branches are
  skipped as `claude:other_branch`, or staged as their own conversations with
  `branches: all`. A broken tree (cycle, unknown parent) quarantines the conversation.
- `seq` follows the thread and `created_at` never decreases along it (as for ChatGPT).
- `message_id` is `claude:<conversation uuid>:<message uuid>`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from connectors.base import ConnectorOptions
from connectors.export_files import ExportFiles, stream_array_file
from connectors.input_limits import InputLimitOptions
from connectors.row_buffer import RowBuffer, guarded
from connectors.tree import ParentTree, running_times
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import Event, Quarantined, Skipped

SOURCE = "claude"
ROOT_PARENT = "00000000-0000-4000-8000-000000000000"
"""The sentinel `parent_message_uuid` of a conversation's first message."""
_ROLES = {"human": "user", "assistant": "assistant"}


class Options(ConnectorOptions, InputLimitOptions):
    """Keys allowed under a `claude` source's `options:` (with the input limits of
    `connectors.export_files.InputLimitOptions`)."""

    branches: Literal["current", "all"] = "current"
    """`current`: only the branch ending at the newest message. `all`: also every other
    branch, each as its own conversation `<uuid>:<leaf message uuid>`."""
    owner_from_export: bool = True
    """Memory owner: each conversation's `account.uuid`, else the single user in users.json,
    else the configured `user_id`; false: always the configured `user_id`."""
    include_attachment_text: bool = False
    """Append the text Claude extracted from attached files to the message content."""


@dataclass
class _Context:
    options: Options
    default_user: str | None
    rows: RowBuffer = field(default_factory=RowBuffer)
    seen: set[str] = field(default_factory=set)


def read(path: Path, options: Options) -> Iterator[Event]:
    """Yield events covering every message of every conversation in the export at `path`.

    Staged messages come in `MessageTable` events (bulk); skipped ones as `Skipped`.
    """
    with ExportFiles(path, limits=options.limits()) as export:
        yield from export.skipped(SOURCE)
        name = export.single_file or "conversations.json"
        if name not in export.names:
            raise InputError(f"{path}: not a Claude export (no conversations.json found)")
        ctx = _Context(options=options, default_user=_default_user(export, options))
        label = export.label(name)
        for element in stream_array_file(export, name, "claude"):
            if isinstance(element, Quarantined):  # one element, or the rest of the file
                yield element
                continue
            yield from _guarded_events(element.value, ctx, label, element.index)
            if ctx.rows.full and (table := ctx.rows.take()) is not None:
                yield table
        table = ctx.rows.take()
        if table is not None:
            yield table


def _default_user(export: ExportFiles, options: Options) -> str | None:
    """The single account in users.json (unless `owner_from_export: false`), else the
    configured user_id; None if neither is known."""
    if options.owner_from_export and "users.json" in export.names:
        users = export.read_json("users.json")
        if isinstance(users, dict):
            users = [users]
        if isinstance(users, list):
            ids = {
                u["uuid"] for u in users if isinstance(u, dict) and isinstance(u.get("uuid"), str)
            }
            if len(ids) == 1:
                return str(ids.pop())
    return options.user_id


def _owner(conv: dict[str, Any], ctx: _Context, source_file: str) -> str:
    """The conversation's `account.uuid`, else users.json, else the configured user_id."""
    if ctx.options.owner_from_export:
        account = conv.get("account")
        if isinstance(account, dict) and isinstance(account.get("uuid"), str) and account["uuid"]:
            return str(account["uuid"])
    if ctx.default_user is not None:
        return ctx.default_user
    raise ConfigError(
        f"{source_file}: a conversation has no account uuid and there is no single user in "
        "users.json; set `user_id` for this source in the config (or pass --user-id)"
    )


def _parse_time(value: Any) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (`...Z` accepted), or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _guarded_events(conv: Any, ctx: _Context, source_file: str, index: int) -> list[Event]:
    """`conversation_events`, with a conversation holding a value that cannot be stored
    quarantined whole (`connectors.row_buffer.guarded`)."""
    messages = conv.get("chat_messages") if isinstance(conv, dict) else None
    return guarded(
        lambda: conversation_events(conv, ctx, source_file, index),
        ctx.rows,
        kind="claude",
        source_file=source_file,
        index=index,
        count=len(messages) if isinstance(messages, list) and messages else 1,
        unit="messages",
    )


def conversation_events(conv: Any, ctx: _Context, source_file: str, index: int) -> Iterator[Event]:
    """Events for one conversation: one count per entry of `chat_messages`.

    Staged messages are appended to `ctx.rows`; the caller turns them into tables.
    """
    where = f"conversations[{index}]"
    messages = conv.get("chat_messages") if isinstance(conv, dict) else None
    conv_id = conv.get("uuid") if isinstance(conv, dict) else None
    if not isinstance(conv_id, str) or not isinstance(messages, list):
        yield Quarantined(
            source_file,
            where,
            "claude:not_a_conversation: no string `uuid` or no `chat_messages` list",
            repr(conv)[:200],
        )
        return
    where = f"{where} (uuid {conv_id})"
    if not messages:
        yield Skipped("claude:empty_conversation")
        return
    if conv_id in ctx.seen:
        yield Skipped("claude:duplicate_conversation", len(messages))
        return
    ctx.seen.add(conv_id)
    tree = _tree(messages)
    if tree.broken and _newest_leaf(tree) not in tree.broken:
        # The visible branch is intact: only messages cut off from it are lost.
        problem = tree.problem
        dropped = tree.drop_broken()
        yield Quarantined(
            source_file,
            where,
            f"claude:broken_branch: {problem}; {dropped} message(s) cut off from the newest "
            "branch not loaded, that branch itself was",
            f"{len(messages)} messages",
        )
        if dropped > 1:
            yield Skipped("claude:broken_branch", dropped - 1)
    if tree.problem is not None:
        yield Quarantined(
            source_file,
            where,
            f"claude:broken_tree: {tree.problem}; conversation not loaded",
            f"{len(messages)} messages",
        )
        if len(messages) > 1:
            yield Skipped("claude:quarantined_conversation", len(messages) - 1)
        return
    user_id = _owner(conv, ctx, source_file)
    skipped = _Thread(conv, conv_id, tree, ctx, user_id, source_file, index).stage()
    for reason, count in skipped.items():
        yield Skipped(reason, count)


def _newest_leaf(tree: ParentTree) -> str:
    """The leaf the user saw last (as `_Thread.stage` picks it); any node if none is a leaf."""
    leaves = tree.leaves()
    if not leaves:  # every message is in a cycle
        return next(iter(tree.nodes))
    return max(leaves, key=lambda nid: _message_key(tree.nodes[nid]))


def _message_key(payload: tuple[int, dict[str, Any]]) -> tuple[float, int]:
    t = _parse_time(payload[1].get("created_at"))
    return (t if t is not None else float("-inf"), payload[0])


def _tree(messages: list[Any]) -> ParentTree:
    """Parent links from `parent_message_uuid`; a message without one follows the previous
    message of the array (so legacy exports without the key form one chain)."""
    items: list[tuple[str, str | None, Any]] = []
    previous: str | None = None
    for pos, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return ParentTree(problem=f"chat_messages[{pos}] is not a JSON object")
        uid = msg.get("uuid")
        if not isinstance(uid, str) or not uid:
            uid = f"#{pos}"  # legacy messages without uuid: keep their array position
        parent = msg.get("parent_message_uuid", previous)
        if parent == ROOT_PARENT or parent == "":
            parent = None
        if parent is not None and not isinstance(parent, str):
            return ParentTree(problem=f"message {uid} has a parent that is not a string")
        items.append((uid, parent, (pos, msg)))
        previous = uid
    return ParentTree.build(items)


class _Thread:
    """Stages one checked Claude conversation: the newest branch, then optionally others."""

    def __init__(
        self,
        conv: dict[str, Any],
        conv_id: str,
        tree: ParentTree,
        ctx: _Context,
        user_id: str,
        source_file: str,
        index: int,
    ) -> None:
        self.conv = conv
        self.conv_id = conv_id
        self.tree = tree
        self.ctx = ctx
        self.user_id = user_id
        self.source_file = source_file
        self.index = index
        self.skipped: Counter[str] = Counter()
        self.times: dict[str, float | None] = {}
        title = conv.get("name")
        self.title = title if isinstance(title, str) and title.strip() else None
        known = [t for t in map(self._raw_time, tree.nodes) if t is not None]
        created = _parse_time(conv.get("created_at"))
        if created is not None:
            known.append(created)
        self.start_time = min(known) if known else None

    def _raw_time(self, nid: str) -> float | None:
        return _parse_time(self.tree.nodes[nid][1].get("created_at"))

    def _key(self, nid: str) -> tuple[float, int]:
        t = self._raw_time(nid)
        return (t if t is not None else float("-inf"), self.tree.nodes[nid][0])

    def stage(self) -> Counter[str]:
        """Append visible messages to the row buffer; return the skip counts."""
        staged, off = self.tree.conversations(
            max(self.tree.leaves(), key=self._key),
            self._key,
            self.conv_id,
            self.ctx.options.branches == "all",
        )
        for path, conversation_id, branched in staged:
            self._segment(path, conversation_id, branched)
        if off:
            self.skipped["claude:other_branch"] += off
        return self.skipped

    def _segment(self, path: list[str], conversation_id: str, branched: bool) -> None:
        fork = self.tree.parent[path[0]]
        before = self.times.get(fork) if fork is not None else None
        times = running_times(path, self._raw_time, before, self.start_time)
        seq = 0
        for nid, (eff, note) in zip(path, times, strict=True):
            from_start = note is not None and note.get("time_source") == "conversation"
            self.times[nid] = None if from_start else eff
            pos, msg = self.tree.nodes[nid]
            sender = msg.get("sender")
            role = _ROLES.get(sender) if isinstance(sender, str) else None
            if role is None:
                self.skipped["claude:unknown_sender"] += 1
                continue
            text, extra = _content(msg, self.ctx.options)
            if not text:
                self.skipped["claude:empty"] += 1
                continue
            meta: dict[str, Any] = {"message_uuid": nid}
            if self.title is not None:
                meta["title"] = self.title
            if branched:
                meta["branch_of"] = self.conv_id
                if seq == 0:
                    meta["fork_parent"] = fork
            meta.update(extra)
            if note is not None:
                if "create_time_raw" in note:
                    note["create_time_raw"] = msg.get("created_at")
                meta.update(note)
            self.ctx.rows.append(
                (
                    SOURCE,
                    self.source_file,
                    f"conversations[{self.index}].chat_messages[{pos}]",
                    f"{SOURCE}:{self.conv_id}:{nid}",
                    conversation_id,
                    self.user_id,
                    role,
                    None,
                    None,
                    text,
                    None if eff is None else round(eff * 1_000_000),
                    seq,
                    orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode(),
                )
            )
            seq += 1


def _content(msg: dict[str, Any], options: Options) -> tuple[str, dict[str, Any]]:
    """Visible text of a message (text blocks only) and metadata on what else it held."""
    extra: dict[str, Any] = {}
    texts: list[str] = []
    blocks = msg.get("content")
    if isinstance(blocks, list) and blocks:
        hidden: Counter[str] = Counter()
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and isinstance(block.get("name"), str):
                extra.setdefault("tools_used", []).append(block["name"])
            elif isinstance(kind, str):
                hidden[kind] += 1
        if hidden:
            extra["left_out_blocks"] = dict(sorted(hidden.items()))
    elif isinstance(msg.get("text"), str):
        texts.append(msg["text"])
    files: list[dict[str, Any]] = []
    for att in msg.get("attachments") or []:
        if isinstance(att, dict):
            item = {k: att[k] for k in ("file_name", "file_type", "file_size") if k in att}
            files.append(item)
            body = att.get("extracted_content")
            if options.include_attachment_text and isinstance(body, str) and body.strip():
                texts.append(f"[attachment: {att.get('file_name') or 'file'}]\n{body}")
    if files:
        extra["attachments"] = files
    named = [
        {k: f[k] for k in ("file_name", "file_uuid", "file_kind") if k in f}
        for f in msg.get("files") or []
        if isinstance(f, dict)
    ]
    if named:
        extra["files"] = named
    text = "\n\n".join(t.strip() for t in texts if t and t.strip())
    if not text and (files or named):
        names = [f.get("file_name") for f in files + named]
        text = " ".join(f"[file: {n}]" if n else "[file]" for n in names)
    return text, extra


def looks_like(path: Path) -> bool:
    """`--source auto`: a `conversations.json` (or the file itself) holding
    `chat_messages` (cheap; never raises)."""
    from connectors.detect import json_export_has

    return json_export_has(path, b"chat_messages")
