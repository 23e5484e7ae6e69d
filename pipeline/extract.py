"""Extract stage: run one connector over one export into the staging table.

Every event a connector yields is counted, so the returned `ExtractStats` always
satisfies read == staged + sum(skipped) + quarantined.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
from pydantic import ValidationError

from connectors.base import ConnectorOptions, get_connector
from pipeline.core.config import SourceConfig, describe_validation_error
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import (
    Distinct,
    ExtractStats,
    Message,
    MessageTable,
    Quarantined,
    Skipped,
    StagedPart,
)
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.quarantine import entry, replace_source_entries
from pipeline.core.staging import StagingWriter

SUMMARY_FILE = "_extract.json"


def connector_options(source: SourceConfig, default_user_id: str | None) -> ConnectorOptions:
    """Validate a source's `options:` against its connector's model (one-line errors)."""
    connector = get_connector(source.kind)
    raw = {**source.options}
    user_id = source.user_id or default_user_id
    if user_id is not None:
        raw.setdefault("user_id", user_id)
    try:
        return connector.options_model.model_validate(raw)
    except ValidationError as exc:
        where = f"options of source {source.label!r} ({source.kind})"
        raise ConfigError(describe_validation_error(exc, where)) from None


def extract_source(
    source: SourceConfig,
    workdir: Path,
    *,
    default_user_id: str | None = None,
    progress: Progress | None = None,
) -> ExtractStats:
    """Read `source` into `<workdir>/staging/<label>/` and its bad records into quarantine."""
    progress = progress or NullProgress()
    connector = get_connector(source.kind)
    options = connector_options(source, default_user_id)
    if not source.path.exists():
        raise InputError(f"input not found: {source.path}")

    skipped: Counter[str] = Counter()
    quarantined: list[dict[str, object]] = []
    pairs = _Pairs()
    read = 0
    progress.start(f"extract {source.label}", unit="msg")
    with StagingWriter(workdir, source.label) as writer:
        events = (
            connector.read(source.path, options, parts_dir=writer.parts_dir)
            if connector.writes_parts
            else connector.read(source.path, options)
        )
        for event in events:
            if isinstance(event, Message):
                read += 1
                writer.write(event)
                pairs.add_message(event.user_id, event.conversation_id)
                progress.advance()
            elif isinstance(event, Skipped):
                read += event.count
                skipped[event.reason] += event.count
            elif isinstance(event, Quarantined):
                read += 1
                quarantined.append(entry(source.label, event))
            elif isinstance(event, MessageTable):
                table = event.table
                read += table.num_rows
                writer.write_table(table)
                pairs.add(Distinct.of_table(table))
                progress.advance(table.num_rows)
            elif isinstance(event, StagedPart):
                read += event.rows
                writer.adopt(event)
                pairs.add(event.distinct)
                progress.advance(event.rows)
        writer.flush()
        distinct = pairs.result()
        stats = ExtractStats(
            source=source.label,
            read=read,
            staged=writer.rows_written,
            skipped=dict(sorted(skipped.items())),
            quarantined=len(quarantined),
            conversations=len(distinct.pairs),
            users=len(distinct.users),
        )
        (writer.tmp_dir / SUMMARY_FILE).write_bytes(orjson.dumps(stats_dict(stats)))
    progress.close()
    replace_source_entries(workdir, source.label, quarantined)
    return stats


class _Pairs:
    """Collects the distinct (user_id, conversation_id) pairs and users of one extract."""

    COMPACT_EVERY = 64
    """Parts kept before they are merged (bounds the list on long extracts)."""
    MESSAGES_PER_FLUSH = 65_536
    """`Message` events buffered as Python strings before they become one part."""

    def __init__(self) -> None:
        self.parts: list[Distinct] = []
        self.user_ids: list[str] = []
        self.conversation_ids: list[str] = []

    def add(self, distinct: Distinct) -> None:
        self.parts.append(distinct)
        if len(self.parts) >= self.COMPACT_EVERY:
            self.parts = [Distinct.merge(self.parts)]

    def add_message(self, user_id: str, conversation_id: str) -> None:
        self.user_ids.append(user_id)
        self.conversation_ids.append(conversation_id)
        if len(self.user_ids) >= self.MESSAGES_PER_FLUSH:
            self._flush_messages()

    def _flush_messages(self) -> None:
        if self.user_ids:
            users = pa.array(self.user_ids, pa.string())
            self.add(Distinct.of(users, pa.array(self.conversation_ids, pa.string())))
            self.user_ids, self.conversation_ids = [], []

    def result(self) -> Distinct:
        self._flush_messages()
        return Distinct.merge(self.parts)


def stats_dict(stats: ExtractStats) -> dict[str, object]:
    """The JSON form of extract counts (the `--json` output's per-source object)."""
    return {
        "source": stats.source,
        "read": stats.read,
        "staged": stats.staged,
        "skipped": stats.skipped,
        "quarantined": stats.quarantined,
        "conversations": stats.conversations,
        "users": stats.users,
    }
