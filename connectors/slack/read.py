"""Slack workspace exports (ZIP or extracted folder) -> staging events.

Reads the standard export, the "all channels and conversations" export (groups, DMs,
group DMs), Enterprise Grid org exports (`org_users.json`, workspaces under `teams/`) and
slackdump's Slack-format exports. ZIP members are read in place, never extracted.

Contract: staged rows (in STAGING_SCHEMA) as one `StagedPart` per job when a parts folder
is given (worker processes write the Parquet parts themselves), else as `MessageTable`
events; `Skipped` counts under `slack:<reason>`, one `Quarantined` per unreadable day file
or message record; read == staged + skipped + quarantined. Conversations are processed
in worker processes (a unit = day files of one conversation, cut only between days, so
threads are rebuilt across days; a job = consecutive units, one part each). Defaults and
every option: docs/slack.md.

Longer than most modules because it plans, runs and merges the jobs of a whole export;
the per-message work lives in normalize.py and the listing in export.py.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorOptions, known_time_zone, user_id_template
from connectors.export_files import Limits, dropped_events
from connectors.group_chat import load_user_map
from connectors.slack.export import (
    ExportListing,
    FileReader,
    Folder,
    discover,
    open_export,
)
from connectors.slack.model import Context, Job, JobResult, Settings, Unit, UserInfo
from connectors.slack.normalize import (
    SYSTEM_SUBTYPES,
    run_in_worker,
    run_job,
    save_context,
)
from connectors.slack.workers import init_slack_worker
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import Event, MessageTable, Quarantined, Skipped
from pipeline.core.process_start import main_module_hidden
from pipeline.core.staging import part_path

log = logging.getLogger(__name__)

GIB = 1 << 30
PARALLEL_MIN_BYTES = 16 << 20
ESTIMATED_DAY_FILE_BYTES = 32 << 10
"""Size assumed for a day file whose size was not looked up (folders are not listed with
sizes) when its conversation's size was not sampled either."""
SIZE_SAMPLES = 3
"""Day files stat'ed per conversation to estimate the size of its other day files."""
SIZE_SAMPLE_BUDGET = 1_500
"""At most this many files are stat'ed per export: those of the longest conversations."""
PART_BYTES = 2 << 20
"""Day files per unit, in (estimated) bytes: a long channel is cut into such units."""
JOB_BYTES = 32 << 20
"""Units per job (one staged part each), in (estimated) bytes."""
MERGE_ROWS = 16_384
"""Without a parts folder, job tables are merged into tables of about this many rows."""
WRITES_PARTS = True
"""`read` takes `parts_dir=` (see connectors/base.py)."""


class Options(ConnectorOptions):
    """Options of the `slack` source (keys under `options:`); see docs/slack.md."""

    conversation: Literal["thread", "channel", "session"] = "thread"
    """thread: one conversation per thread, other messages per channel per day;
    channel: one per channel; session: split a channel at gaps of `session_gap_minutes`."""
    timezone: str = "UTC"
    """Time zone of the calendar days that group top-level messages (thread mode)."""
    session_gap_minutes: int = Field(default=60, ge=1)
    memory_owner: Literal["workspace", "author", "group"] = "workspace"
    """workspace: everything goes to `user_id`; author: each human to their own user_id;
    group: staged like workspace (owner `user_id`, no name prefix) and sent as a MemOS group
    chat: the participants' Slack ids as the `user_id` list, each speaker per message."""
    user_id_template: str = "{id}"
    """author mode: user_id made from {id}, {name}, {email} or {team}."""
    user_map: Path | None = None
    """author mode: JSON object or two-column CSV mapping Slack id, email or handle to user_id."""
    speaker_prefix: bool | None = None
    """Prefix content with "Name: "; default on in workspace mode, off in author and group
    mode (group mode sends the speaker as `role_name` and refuses the prefix)."""
    include_subtypes: list[str] = Field(default_factory=list)
    """System subtypes to stage instead of skipping (e.g. channel_topic), or ["all"]."""
    channels: list[str] = Field(default_factory=list)
    """Only these channels (names, ids or glob patterns); empty means all."""
    exclude_channels: list[str] = Field(default_factory=list)
    workers: int | None = Field(default=None, ge=1, le=64)
    """Worker processes; default: one per CPU core (in-process for small exports)."""
    max_member_bytes: int = Field(default=128 << 20, ge=1)
    """Largest day file: peak memory is up to ~10x one day file (docs/input-limits.md)."""
    max_total_bytes: int = Field(default=64 * GIB, ge=1)
    max_compression_ratio: float = Field(default=100.0, gt=1)
    max_members: int = Field(default=Limits.max_members, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("user_id_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        return user_id_template(value, ("id", "name", "email", "team"))

    @model_validator(mode="after")
    def _no_prefix_in_group_mode(self) -> Options:
        if self.memory_owner == "group" and self.speaker_prefix:
            raise ValueError(
                "speaker_prefix: memory_owner 'group' sends each speaker as role_name; "
                "a name prefix in the content would duplicate it (drop speaker_prefix)"
            )
        return self

    @model_validator(mode="after")
    def _known_subtypes(self) -> Options:
        unknown = set(self.include_subtypes) - SYSTEM_SUBTYPES - {"all"}
        if unknown:
            raise ValueError(
                f"include_subtypes: not system subtypes: {', '.join(sorted(unknown))} "
                "(other subtypes are always staged)"
            )
        return self


def read(path: Path, options: Options, parts_dir: Path | None = None) -> Iterator[Event]:
    """Stream the events of one Slack export (see the module docstring for the contract)."""
    if options.memory_owner in ("workspace", "group") and not options.user_id:
        raise ConfigError(
            f"slack source: memory_owner {options.memory_owner!r} needs a user_id (set "
            "`user_id:` on the "
            "source or in the config, or pass --user-id)"
        )
    settings = _settings(options)
    limits = Limits(
        max_member_bytes=options.max_member_bytes,
        max_total_bytes=options.max_total_bytes,
        max_ratio=options.max_compression_ratio,
        max_members=options.max_members,
    )
    export = open_export(path, limits)
    yield from dropped_events(export.dropped, "slack")
    with _worker_pool(export, options.workers) as pool:
        layout = discover(export.files)
        if layout.stray_day_files:
            yield Skipped("slack:day_file_outside_export_layout", layout.stray_day_files)
        reader = FileReader(export)
        try:
            index = _Index()
            for root in layout.roots:
                yield from index.load(reader, root)
        finally:
            reader.close()
        if not layout.folders and not index.found:
            raise InputError(
                f"{path}: no Slack export found (expected channels.json/users.json or channel "
                "folders of YYYY-MM-DD.json day files)"
            )
        units = _units(layout.folders, index, options)
        ctx = Context(
            export,
            index.users,
            {u: i.name for u, i in index.users.items()},
            index.channel_names(),
            settings,
        )
        events = _run(units, ctx, pool, parts_dir)
        del units, ctx, export, layout, index  # the listing is not needed while messages flow
        yield from events


def _settings(options: Options) -> Settings:
    include = (
        SYSTEM_SUBTYPES
        if "all" in options.include_subtypes
        else frozenset(options.include_subtypes)
    )
    prefix = options.speaker_prefix
    if prefix is None:
        prefix = options.memory_owner == "workspace"
    return Settings(
        conversation=options.conversation,
        timezone=options.timezone,
        session_gap_seconds=options.session_gap_minutes * 60,
        include_subtypes=include,
        memory_owner=options.memory_owner,
        user_id=options.user_id or "",
        user_id_template=options.user_id_template,
        user_map=load_user_map(options.user_map, SLACK_MAP_HEADERS, "slack id/email")
        if options.user_map
        else {},
        speaker_prefix=prefix,
        max_member_bytes=options.max_member_bytes,
    )


SLACK_MAP_HEADERS = ("slack", "key", "id", "slack_id")
"""First cells of a user-map CSV header row."""


class _Index:
    """Users and conversations from the index files of every export root."""

    def __init__(self) -> None:
        self.users: dict[str, UserInfo] = {}
        self.by_id: dict[str, tuple[str, str | None]] = {}
        """conversation id -> (kind, name or None)"""
        self.by_root_name: dict[tuple[str, str], str] = {}
        self.by_name: dict[str, list[str]] = {}
        self.found = False

    def load(self, reader: FileReader, root: str) -> Iterator[Event]:
        for file in ("org_users.json", "users.json"):
            value = yield from _load_index(reader, root + file)
            if value is not None:
                self.found = True
                self._add_users(value)
        for file, kind in (
            ("channels.json", "channel"),
            ("groups.json", "private"),
            ("mpims.json", "mpim"),
            ("dms.json", "dm"),
        ):
            value = yield from _load_index(reader, root + file)
            if value is None:
                continue
            self.found = True
            for entry in value:
                if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                    continue
                cid = entry["id"]
                name = entry.get("name")
                name = name if isinstance(name, str) and name and kind != "dm" else None
                self.by_id.setdefault(cid, (kind, name))
                if name:
                    self.by_root_name.setdefault((root, name), cid)
                    ids = self.by_name.setdefault(name, [])
                    if cid not in ids:
                        ids.append(cid)

    def _add_users(self, value: list[Any]) -> None:
        for u in value:
            if not isinstance(u, dict) or not isinstance(u.get("id"), str):
                continue
            profile = u.get("profile")
            p = profile if isinstance(profile, dict) else {}
            handle = _text(u.get("name"))
            name = (
                _text(p.get("display_name"))
                or _text(u.get("real_name"))
                or _text(p.get("real_name"))
                or handle
                or u["id"]
            )
            team = _text(u.get("team_id")) or _text(u.get("team"))
            self.users.setdefault(
                u["id"],
                UserInfo(
                    name=name,
                    handle=handle,
                    email=_text(p.get("email")),
                    team=team,
                    is_bot=bool(u.get("is_bot")) or u["id"] == "USLACKBOT",
                ),
            )

    def channel_names(self) -> dict[str, str]:
        return {cid: name for cid, (_, name) in self.by_id.items() if name}

    def resolve(self, folder: Folder) -> tuple[str, str, str | None]:
        """(conversation id, kind, name) of a folder: by name in its root, then id, then name."""
        cid = self.by_root_name.get((folder.root, folder.name))
        if cid is None and folder.name in self.by_id:
            cid = folder.name
        if cid is None and len(self.by_name.get(folder.name, [])) == 1:
            cid = self.by_name[folder.name][0]
        if cid is None:
            unknown_id = folder.name if not folder.root else folder.root + folder.name
            return unknown_id, "unknown", folder.name
        kind, name = self.by_id[cid]
        return cid, kind, name


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _load_index(reader: FileReader, name: str) -> Generator[Event, None, list[Any] | None]:
    """Parse one index file: a list, or None (missing, or broken and quarantined)."""
    if name not in reader.export.files:
        return None
    try:
        value = orjson.loads(reader.read(name).removeprefix(b"\xef\xbb\xbf"))
    except OSError as exc:
        log.warning("%s: cannot read (%s)", name, exc)
        yield Quarantined(name, "file", f"cannot read index file: {exc}")
        return None
    except orjson.JSONDecodeError as exc:
        log.warning("%s: not valid JSON; names from it are unavailable", name)
        yield Quarantined(
            name,
            f"line {exc.lineno} column {exc.colno} (char {exc.pos})",
            f"index file is not valid JSON: {exc.msg}",
        )
        return None
    if value is None:
        return []
    if not isinstance(value, list):
        yield Quarantined(name, "top level", "index file is not a JSON array")
        return None
    return value


def _matches(patterns: list[str], *keys: str | None) -> bool:
    return any(k is not None and fnmatch.fnmatchcase(k, p) for p in patterns for k in keys)


def _units(folders: list[Folder], index: _Index, options: Options) -> list[Unit]:
    grouped: dict[str, tuple[str, str | None, list[Folder]]] = {}
    for folder in folders:
        cid, kind, name = index.resolve(folder)
        grouped.setdefault(cid, (kind, name, []))[2].append(folder)
    label_count: dict[str, int] = {}
    for cid, (_, name, _) in grouped.items():
        label_count[name or cid] = label_count.get(name or cid, 0) + 1
    units: list[Unit] = []
    excluded = 0
    for cid, (kind, name, members) in grouped.items():
        if (options.channels and not _matches(options.channels, cid, name)) or _matches(
            options.exclude_channels, cid, name
        ):
            excluded += 1
            continue
        label = name or cid
        if label_count[label] > 1:
            label = f"{label}~{cid}"
        if len(members) == 1:  # already in name order, which is day order within one folder
            day_files = members[0].day_files
        else:
            day_files = sorted(
                (f for m in members for f in m.day_files), key=lambda f: (_day_name(f), f)
            )
        others = tuple(f for m in members for f in m.other_files)
        units.append(Unit(cid, label, kind, tuple(day_files), others))
    if excluded:
        log.info("slack: %d conversations left out by channels/exclude_channels", excluded)
    return units


def sampled_file_bytes(units: list[Unit], files: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Channel id -> mean size of a few of its day files, for conversations whose files
    were listed without sizes (export folders), longest conversations first, within
    `SIZE_SAMPLE_BUDGET` stat calls.

    Busy channels have day files many times the typical size: without this, jobs cut by
    file count differ twentyfold in work and the last long one keeps one core busy alone.
    """
    estimates: dict[str, int] = {}
    budget = SIZE_SAMPLE_BUDGET
    for unit in sorted(units, key=lambda u: len(u.day_files), reverse=True):
        day_files = unit.day_files
        if budget < SIZE_SAMPLES or not day_files or files[day_files[0]][1] >= 0:
            continue
        step = max(len(day_files) // SIZE_SAMPLES, 1)
        sizes = []
        for name in day_files[step // 2 :: step][:SIZE_SAMPLES]:
            budget -= 1
            try:
                sizes.append(os.stat(files[name][0]).st_size)
            except OSError:
                continue
        if sizes:
            estimates[unit.channel_id] = max(sum(sizes) // len(sizes), 1)
    return estimates


def split_unit(
    unit: Unit,
    files: dict[str, tuple[str, int]],
    part_bytes: int = PART_BYTES,
    file_bytes: int = ESTIMATED_DAY_FILE_BYTES,
) -> list[Unit]:
    """Cut a conversation into parts of consecutive days (at most ~`part_bytes` each),
    each with its own slice of the listing (`locations`) and estimated `size` (listed
    sizes, else `file_bytes` per day file).

    All files of one day name stay in one part, so duplicate (conversation, ts) records,
    which share their day file, are still found. Session mode needs whole units: it
    passes a `part_bytes` no unit reaches.
    """
    parts: list[Unit] = []
    locations: dict[str, tuple[str, int]] = {}
    size = 0
    others = unit.other_files
    day_files = unit.day_files
    last = len(day_files) - 1
    for index, name in enumerate(day_files):
        where = locations[name] = files[name]
        size += _estimated_bytes(where[1], file_bytes)
        if size >= part_bytes and (
            index == last or _day_name(day_files[index + 1]) != _day_name(name)
        ):
            parts.append(_part(unit, locations, others, size))
            locations, size, others = {}, 0, ()
    if locations or not parts:
        parts.append(_part(unit, locations, others, size))
    return parts


def _estimated_bytes(size: int, unknown: int = ESTIMATED_DAY_FILE_BYTES) -> int:
    """A listed file's size, or `unknown` where it was not looked up."""
    return size if size > 0 else unknown


def _day_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _part(
    unit: Unit, locations: dict[str, tuple[str, int]], others: tuple[str, ...], size: int
) -> Unit:
    return Unit(unit.channel_id, unit.label, unit.kind, tuple(locations), others, locations, size)


def make_jobs(units: list[Unit], parts_dir: Path | None) -> list[Job]:
    """Group consecutive units into jobs of about `JOB_BYTES` (one part file each)."""
    groups: list[list[Unit]] = []
    size = JOB_BYTES
    for unit in units:
        if size >= JOB_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(unit)
        size += unit.size
    return [
        Job(tuple(g), str(part_path(parts_dir, i)) if parts_dir is not None else None)
        for i, g in enumerate(groups)
    ]


@contextmanager
def _worker_pool(
    export: ExportListing, workers: int | None
) -> Iterator[ProcessPoolExecutor | None]:
    """The worker processes, started at once so they import while the index is read.

    None (work in this process) with `workers: 1`, on one core, or by default when the
    export's files total under `PARALLEL_MIN_BYTES`.
    """
    count = workers or os.cpu_count() or 1
    if workers is None and count > 1:
        total = sum(_estimated_bytes(size) for _, size in export.files.values())
        if total < PARALLEL_MIN_BYTES:
            count = 1
    if count <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        max_workers=count, mp_context=get_context("spawn"), initializer=init_slack_worker
    )
    try:
        with main_module_hidden():
            for _ in range(count):
                pool.submit(int)  # each submit starts one more worker until `count` run
        yield pool
    except BaseException:
        # Interrupted or failed: the jobs' results are not wanted, so the workers are
        # stopped now instead of being waited for (their parts are thrown away).
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run(
    units: list[Unit], ctx: Context, pool: ProcessPoolExecutor | None, parts_dir: Path | None
) -> Iterator[Event]:
    files = ctx.export.files
    part_bytes = PART_BYTES if ctx.settings.conversation != "session" else 1 << 62
    file_bytes = sampled_file_bytes(units, files)
    units = [
        part
        for unit in sorted(units, key=lambda u: u.label)
        for part in split_unit(
            unit, files, part_bytes, file_bytes.get(unit.channel_id, ESTIMATED_DAY_FILE_BYTES)
        )
    ]
    jobs = make_jobs(units, parts_dir)
    ctx = replace(ctx, export=replace(ctx.export, files={}))
    del files, units
    merged = _Merger()
    if pool is None:
        reader = FileReader(ctx.export)
        try:
            for job in jobs:
                yield from merged.add(run_job(job, ctx, reader))
        finally:
            reader.close()
        yield from merged.flush()
        return
    with tempfile.TemporaryDirectory(prefix="memos-etl-slack-") as tmp:
        context_file = Path(tmp) / "context.pickle"
        save_context(ctx, context_file)
        # Results are small (counts and part names), so every job is queued at once: a
        # worker that finishes early takes the next job instead of waiting for the oldest.
        # Largest first, so the last jobs to run are short ones and both cores finish
        # together; results are still passed on in job (part) order.
        futures: dict[int, Future[JobResult]] = {
            i: pool.submit(run_in_worker, jobs[i], str(context_file))
            for i in sorted(range(len(jobs)), key=lambda i: -jobs[i].size)
        }
        for i in range(len(jobs)):
            yield from merged.add(futures.pop(i).result())  # a result is let go once used
        yield from merged.flush()


class _Merger:
    """Passes parts on; joins small job tables into tables of about `MERGE_ROWS` rows."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.rows = 0

    def add(self, result: JobResult) -> Iterator[Event]:
        if result.part is not None:
            yield result.part
        if result.table is not None:
            self.tables.append(result.table)
            self.rows += result.table.num_rows
        for reason, n in sorted(result.skipped.items()):
            yield Skipped(reason, n)
        yield from result.quarantined
        if self.rows >= MERGE_ROWS:
            yield from self.flush()

    def flush(self) -> Iterator[Event]:
        if self.tables:
            yield MessageTable(pa.concat_tables(self.tables))
        self.tables, self.rows = [], 0


def looks_like(path: Path) -> bool:
    """`--source auto`: a folder or ZIP with Slack's `channels.json`, `dms.json`,
    `groups.json` or `mpims.json` (cheap; never raises)."""
    from connectors.detect import member_names

    markers = {"channels.json", "dms.json", "groups.json", "mpims.json"}
    return any(n.rsplit("/", 1)[-1] in markers for n in member_names(path))
