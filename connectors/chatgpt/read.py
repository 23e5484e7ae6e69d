"""ChatGPT export layout and conversation threads: files, owner, assets, and the visible thread.

Input: the export ZIP, its unpacked folder, or a bare `conversations.json` /
`conversations-NNN.json`. Both layouts are read: the classic single `conversations.json`
and the 2026 shards (`conversations-000.json`, ... listed in `export_manifest.json`, whose
nodes have no `children` key). Files are streamed conversation by conversation
(`connectors.json_stream`), so a 700 MB export never sits in memory whole.

Contract, per conversation (see docs/chatgpt-claude.md):
- The thread is the path from `current_node` up the `parent` links to the root, reversed.
  `children` is never read. A tree with a cycle or a parent that does not exist is
  quarantined whole (one `Quarantined` entry; its other nodes are counted as skipped under
  `chatgpt:quarantined_conversation`).
- Every node of `mapping` yields exactly one count: a staged `Message` or a `Skipped` under
  a specific reason (`chatgpt:other_branch`, `chatgpt:hidden_system`, `chatgpt:thoughts`...).
- `seq` follows the thread and `created_at` never decreases along it: a message stamped
  before its parent gets its parent's time (raw value kept as `create_time_raw` in
  metadata); a message without a time takes its nearest timed ancestor's, else the
  conversation's start.
- `message_id` is `chatgpt:<conversation id>:<node id>`; `conversation_id` is the
  ChatGPT conversation id (`<id>:<leaf node id>` for extra branches with `branches: all`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import field_validator

from connectors.base import ConnectorOptions
from connectors.chatgpt.content import shape
from connectors.export_files import ExportFiles, stream_array_file
from connectors.input_limits import InputLimitOptions
from connectors.json_stream import StreamedElement
from connectors.row_buffer import RowBuffer, guarded
from connectors.tree import ParentTree, running_times
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import Event, Quarantined, Skipped

SOURCE = "chatgpt"
log = logging.getLogger(__name__)

_SHARD = re.compile(r"conversations-(\d+)\.json")
_CLASSIC_FILE = re.compile(r"file-([A-Za-z0-9]+)-(.+)")


class Options(ConnectorOptions, InputLimitOptions):
    """Keys allowed under a `chatgpt` source's `options:` (with the input limits of
    `connectors.export_files.InputLimitOptions`)."""

    branches: Literal["current", "all"] = "current"
    """`current`: only the thread ending at `current_node`. `all`: also every other branch,
    each as its own conversation `<id>:<leaf node id>` holding the nodes after its fork."""
    include_tool_messages: bool = False
    """Stage tool outputs (role `tool`) and assistant tool calls instead of skipping them."""
    owner_from_export: bool = True
    """Memory owner: the id in user.json when present (the configured `user_id` is the
    fallback); false: always the configured `user_id`."""
    parallel: Literal["auto", "on", "off"] = "auto"
    """`on`: read in two processes, each parsing its own share of the conversations (see
    connectors/chatgpt/split.py); `auto` (default): only for exports of 64 MB and more on
    a multi-core machine; `off`: one process (a shared machine with no core to spare)."""

    @field_validator("parallel", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare `on`/`off` as true/false: accept those as meant."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


@dataclass
class Context:
    """What every conversation of one export shares."""

    user_id: str
    options: Options
    asset_names: dict[str, str]
    rows: RowBuffer = field(default_factory=RowBuffer)
    seen: set[str] = field(default_factory=set)


def conversation_files(export: ExportFiles) -> list[str]:
    """The conversation files to read, in order: the single file, else the shards."""
    if export.single_file is not None:
        return [export.single_file]
    if "conversations.json" in export.names:
        return ["conversations.json"]
    numbered = {n: m for n in export.names if (m := _SHARD.fullmatch(n))}
    shards = sorted(numbered, key=lambda n: int(numbered[n].group(1)))
    if "export_manifest.json" in export.names:
        listed = _manifest_files(export)
        shards = listed + [s for s in shards if s not in listed]
    if not shards:
        raise InputError(
            f"{export.path}: not a ChatGPT export (no conversations.json or "
            "conversations-NNN.json found)"
        )
    return shards


def _manifest_files(export: ExportFiles) -> list[str]:
    manifest = export.read_json("export_manifest.json")
    try:
        files = manifest["logical_files"]["conversations.json"]["files"]
    except (KeyError, TypeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _owner(export: ExportFiles, options: Options) -> str:
    """The `id` in user.json (unless `owner_from_export: false`), else the configured
    user_id; neither is a `ConfigError`."""
    if options.owner_from_export and "user.json" in export.names:
        user = export.read_json("user.json")
        if isinstance(user, dict) and isinstance(user.get("id"), str) and user["id"]:
            if options.user_id and options.user_id != user["id"]:
                log.info(
                    "owner of %s: %s from user.json (not the configured user_id)",
                    export.path,
                    user["id"],
                )
            return str(user["id"])
    if options.user_id:
        return options.user_id
    raise ConfigError(
        f"{export.path}: no user.json with an `id` in this ChatGPT export; set `user_id` "
        "for this source in the config (or pass --user-id)"
    )


def asset_names(export: ExportFiles) -> dict[str, str]:
    """File id -> original file name, from the 2026 map file and classic upload names."""
    names: dict[str, str] = {}
    for member in export.names:
        match = _CLASSIC_FILE.fullmatch(member)
        if match:
            names[f"file-{match.group(1)}"] = match.group(2)
    if "conversation_asset_file_names.json" in export.names:
        mapping = export.read_json("conversation_asset_file_names.json")
        if isinstance(mapping, dict):
            for key, value in mapping.items():
                if isinstance(value, str):
                    names[key.removesuffix(".dat")] = value
    return names


def read_file(
    export: ExportFiles, name: str, ctx: Context, start: int = 0, index: int = 0
) -> Iterator[Event]:
    """Events of one conversations file (from byte offset `start`, an element's start,
    whose conversation then counts as number `index`). Full tables are yielded as they
    fill; the last rows stay in `ctx.rows` for the caller."""
    if name not in export.names:
        yield Quarantined(
            source_file=export.label(name),
            position="(whole file)",
            reason="chatgpt:missing_file: listed in export_manifest.json but absent "
            "from the export; its conversations were not read",
        )
        return
    elements = stream_array_file(export, name, "chatgpt", start=start, index=index)
    yield from consume(elements, ctx, export.label(name))


def consume(
    elements: Iterator[StreamedElement | Quarantined],
    ctx: Context,
    label: str,
    stop: int | None = None,
) -> Generator[Event, None, StreamedElement | None]:
    """Events of streamed conversations, up to the first element that starts at or after
    byte `stop` (returned unprocessed; None when the stream ended first)."""
    for element in elements:
        if isinstance(element, Quarantined):  # one element, or the rest of the file
            yield element
            continue
        if stop is not None and element.offset >= stop:
            return element
        yield from guarded_events(element.value, ctx, label, element.index)
        if ctx.rows.full and (table := ctx.rows.take()) is not None:
            yield table
    return None


def guarded_events(conv: Any, ctx: Context, source_file: str, index: int) -> list[Event]:
    """`conversation_events`, with a conversation holding a value that cannot be stored
    quarantined whole (`connectors.row_buffer.guarded`)."""
    mapping = conv.get("mapping") if isinstance(conv, dict) else None
    return guarded(
        lambda: conversation_events(conv, ctx, source_file, index),
        ctx.rows,
        kind="chatgpt",
        source_file=source_file,
        index=index,
        count=len(mapping) if isinstance(mapping, dict) and mapping else 1,
        unit="nodes",
    )


def conversation_events(conv: Any, ctx: Context, source_file: str, index: int) -> Iterator[Event]:
    """Events for one conversation object: one count per node of its mapping.

    Staged messages are appended to `ctx.rows`; the caller turns them into tables.
    """
    where = f"conversations[{index}]"
    if not isinstance(conv, dict):
        yield Quarantined(
            source_file,
            where,
            "chatgpt:not_a_conversation: not a JSON object",
            repr(conv)[:200],
        )
        return
    conv_id = _conversation_id(conv)
    mapping = conv.get("mapping")
    if not isinstance(conv_id, str) or not isinstance(mapping, dict):
        yield Quarantined(
            source_file,
            where,
            "chatgpt:not_a_conversation: no string `id` or no `mapping` object",
            f"keys: {', '.join(sorted(map(str, conv)))}",
        )
        return
    where = f"{where} (id {conv_id})"
    if not mapping:
        yield Skipped("chatgpt:empty_conversation")
        return
    if conv_id in ctx.seen:
        yield Skipped("chatgpt:duplicate_conversation", len(mapping))
        return
    ctx.seen.add(conv_id)
    tree, times = _tree(mapping)
    if tree.broken and _canonical_leaf(conv, tree, times) not in tree.broken:
        # The thread is intact: only nodes cut off from it are lost (one entry for them).
        problem = tree.problem
        dropped = tree.drop_broken()
        times = {nid: times[nid] for nid in tree.nodes}
        yield Quarantined(
            source_file,
            where,
            f"chatgpt:broken_branch: {problem}; {dropped} node(s) cut off from the thread "
            "not loaded, the thread itself was",
            f"{len(mapping)} nodes",
        )
        if dropped > 1:
            yield Skipped("chatgpt:broken_branch", dropped - 1)
    if tree.problem is not None:
        yield Quarantined(
            source_file,
            where,
            f"chatgpt:broken_tree: {tree.problem}; conversation not loaded",
            f"{len(mapping)} nodes",
        )
        if len(mapping) > 1:
            yield Skipped("chatgpt:quarantined_conversation", len(mapping) - 1)
        return
    skipped = _Thread(conv, conv_id, tree, times, ctx, source_file, index).stage()
    for reason, count in skipped.items():
        yield Skipped(reason, count)


def _canonical_leaf(conv: dict[str, Any], tree: ParentTree, times: dict[str, float | None]) -> str:
    """The thread's last node: `current_node` when it exists, else the newest leaf."""
    current = conv.get("current_node")
    if isinstance(current, str) and current in tree.nodes:
        return current
    leaves = tree.leaves()
    if not leaves:  # every node is in a cycle
        return next(iter(tree.nodes))
    return max(leaves, key=lambda nid: (_time_key(times[nid]), nid))


def _time_key(t: float | None) -> float:
    return t if t is not None else float("-inf")


def _conversation_id(conv: Any) -> str | None:
    if conv.__class__ is not dict:
        return None
    conv_id = conv.get("id") or conv.get("conversation_id")
    return conv_id if isinstance(conv_id, str) else None


def _tree(mapping: dict[str, Any]) -> tuple[ParentTree, dict[str, float | None]]:
    """The mapping's tree from `parent` links (payloads: the nodes' messages or None) and
    each node's own message time."""
    nodes: dict[str, Any] = {}
    parents: dict[str, str | None] = {}
    times: dict[str, float | None] = {}
    for nid, node in mapping.items():
        if node.__class__ is not dict:
            return ParentTree(problem=f"node {nid} is not a JSON object"), times
        parent = node.get("parent")
        if parent is not None and parent.__class__ is not str:
            return ParentTree(problem=f"node {nid} has a parent that is not a string id"), times
        msg = node.get("message")
        if msg.__class__ is dict:
            t = msg.get("create_time")
            times[nid] = t if t.__class__ is float and 0 < t < 1e11 else _number(t)
        else:
            msg = None
            times[nid] = None
        nodes[nid] = msg
        parents[nid] = parent
    return ParentTree.link(nodes, parents), times


def _number(value: Any) -> float | None:
    """A usable epoch-seconds value, or None (bools, NaN and absurd values are not times)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e11:
        return float(value)
    return None


def _micros(ts: float | None) -> int | None:
    return None if ts is None else round(ts * 1_000_000)


class _Thread:
    """Stages one checked conversation tree: the canonical thread, then other branches."""

    def __init__(
        self,
        conv: dict[str, Any],
        conv_id: str,
        tree: ParentTree,
        raw_times: dict[str, float | None],
        ctx: Context,
        source_file: str,
        index: int,
    ) -> None:
        self.conv = conv
        self.conv_id = conv_id
        self.tree = tree
        self.raw_times = raw_times
        self.ctx = ctx
        self.source_file = source_file
        self.index = index
        self.skipped: Counter[str] = Counter()
        self.times: dict[str, float | None] = {}
        title = conv.get("title")
        self.title = title if isinstance(title, str) and title.strip() else None
        slug = conv.get("default_model_slug")
        self.default_model = slug if isinstance(slug, str) else None
        gizmo = conv.get("gizmo_id")
        self.gizmo_id = gizmo if isinstance(gizmo, str) else None
        self.start_time = self._start_time()

    def _raw_time(self, nid: str) -> float | None:
        return self.raw_times[nid]

    def _start_time(self) -> float | None:
        """The conversation's start: the earlier of its create_time and its first message.

        Conversation-level times can be years after the messages (bulk restores), so a
        message without any timed ancestor never gets a time later than real messages.
        """
        known = [t for t in self.raw_times.values() if t is not None]
        created = _number(self.conv.get("create_time"))
        if created is not None:
            known.append(created)
        return min(known) if known else _number(self.conv.get("update_time"))

    def _key(self, nid: str) -> tuple[float, str]:
        t = self._raw_time(nid)
        return (t if t is not None else float("-inf"), nid)

    def _leaf(self) -> str:
        """`current_node` when it exists, else the newest leaf."""
        current = self.conv.get("current_node")
        if isinstance(current, str) and current in self.tree.nodes:
            return current
        return max(self.tree.leaves(), key=self._key)

    def stage(self) -> Counter[str]:
        """Append visible messages to the row buffer; return the skip counts."""
        staged, off = self.tree.conversations(
            self._leaf(), self._key, self.conv_id, self.ctx.options.branches == "all"
        )
        for path, conversation_id, branched in staged:
            self._segment(path, conversation_id, branched)
        if off:
            self.skipped["chatgpt:other_branch"] += off
        return self.skipped

    def _segment(self, path: list[str], conversation_id: str, branched: bool) -> None:
        """Stage the visible messages of `path` (a thread or a branch); count the rest."""
        fork = self.tree.parent[path[0]]
        before = self.times.get(fork) if fork is not None else None
        times = running_times(path, self.raw_times.__getitem__, before, self.start_time)
        (
            add_source,
            add_file,
            add_position,
            add_id,
            add_conversation,
            add_user,
            add_role,
            add_author_id,
            add_name,
            add_content,
            add_time,
            add_seq,
            add_meta,
        ) = self.ctx.rows.appenders()
        user_id = self.ctx.user_id
        source_file = self.source_file
        position = f"conversations[{self.index}].mapping["
        id_prefix = f"{SOURCE}:{self.conv_id}:"
        track = self.ctx.options.branches == "all"
        nodes = self.tree.nodes
        base: dict[str, Any] = {}
        if self.title is not None:
            base["title"] = self.title
        if self.gizmo_id is not None:
            base["gizmo_id"] = self.gizmo_id
        if branched:
            base["branch_of"] = self.conv_id
        skipped = self.skipped
        seq = 0
        for nid, (eff, time_note) in zip(path, times, strict=True):
            if track:  # fork times, for the branches after this one
                from_start = (
                    time_note is not None and time_note.get("time_source") == "conversation"
                )
                self.times[nid] = None if from_start else eff
            msg = nodes[nid]
            if msg is None:
                skipped[
                    "chatgpt:root" if self.tree.parent[nid] is None else "chatgpt:no_message"
                ] += 1
                continue
            shaped = shape(msg, self.ctx.options.include_tool_messages, self.ctx.asset_names)
            if isinstance(shaped, str):
                skipped[shaped] += 1
                continue
            role, text, extra, model, name = shaped
            meta = {"node_id": nid, **base}
            if model is None and role == "assistant":
                model = self.default_model
            if model is not None:
                meta["model"] = model
            if branched and seq == 0:
                meta["fork_parent"] = fork
            if extra:
                meta.update(extra)
            if time_note is not None:
                meta.update(time_note)
            add_source(SOURCE)
            add_file(source_file)
            add_position(position + nid + "]")
            add_id(id_prefix + nid)
            add_conversation(conversation_id)
            add_user(user_id)
            add_role(role)
            add_author_id(None)
            add_name(name)
            add_content(text)
            add_time(None if eff is None else round(eff * 1_000_000))
            add_seq(seq)
            add_meta(orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode())
            seq += 1
