"""Plain data of the Slack connector, shared by the planner and the worker processes.

The export context, settings, work units, jobs and results cross the process boundary
(pickled), and `Msg` is the decoding schema of a day-file message. They live apart from
the per-message code (`connectors.slack.normalize`), which is compiled when the package is
built (see setup.py): compiled classes are not plain Python classes, and these must be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow as pa

from connectors.slack.export import ExportListing
from pipeline.core.models import Quarantined, StagedPart


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What we use of a users.json entry."""

    name: str
    handle: str
    email: str
    team: str
    is_bot: bool


@dataclass(frozen=True)
class Settings:
    """The options a worker needs (picklable)."""

    conversation: str = "thread"
    timezone: str = "UTC"
    session_gap_seconds: int = 3600
    include_subtypes: frozenset[str] = frozenset()
    memory_owner: str = "workspace"
    user_id: str = ""
    user_id_template: str = "{id}"
    user_map: dict[str, str] = field(default_factory=dict)
    speaker_prefix: bool = True
    max_member_bytes: int = 1 << 30


@dataclass(frozen=True)
class Context:
    """Everything shared by all units of one export (sent once to each worker)."""

    export: ExportListing
    users: dict[str, UserInfo]
    user_names: dict[str, str]
    channel_names: dict[str, str]
    settings: Settings


@dataclass(frozen=True)
class Unit:
    """One conversation: its id, readable label, kind, day files and other files."""

    channel_id: str
    label: str
    kind: str
    day_files: tuple[str, ...]
    other_files: tuple[str, ...] = ()
    locations: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Day file name -> (key to open it, size): only this unit's part of the listing."""
    size: int = 0
    """Bytes of its day files (estimated where not looked up): for sizing jobs."""


@dataclass(frozen=True)
class Job:
    """Consecutive units staged together: into the part at `part_path`, or (None) a table."""

    units: tuple[Unit, ...]
    part_path: str | None = None

    @property
    def size(self) -> int:
        """Estimated bytes of its day files."""
        return sum(unit.size for unit in self.units)


@dataclass
class JobResult:
    """What a job produced: its part (or table), skip counts and quarantined records."""

    part: StagedPart | None
    table: pa.Table | None
    skipped: dict[str, int]
    quarantined: list[Quarantined]


NO_RAW = msgspec.Raw()


class Msg(msgspec.Struct, gc=False):
    """The fields of a day-file message we read; the rest is skipped while decoding.

    Small fields are `Any` so type drift never fails a file; bulky ones stay raw JSON
    (`msgspec.Raw`) and are decoded only when needed (empty `text`, unknown user).
    """

    ts: Any = None
    user: Any = None
    subtype: Any = None
    text: Any = None
    thread_ts: Any = None
    bot_id: Any = None
    hidden: Any = None
    edited: Any = None
    reactions: Any = None
    username: Any = None
    files: msgspec.Raw = NO_RAW
    file: msgspec.Raw = NO_RAW
    attachments: msgspec.Raw = NO_RAW
    blocks: msgspec.Raw = NO_RAW
    user_profile: msgspec.Raw = NO_RAW
    bot_profile: msgspec.Raw = NO_RAW
    comment: msgspec.Raw = NO_RAW


DAY_DECODER = msgspec.json.Decoder(list[Msg])
MESSAGE_DECODER = msgspec.json.Decoder(Msg)
