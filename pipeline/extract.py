"""Extract stage: run one connector over one export into the staging table.

Every event a connector yields is counted, so the returned `ExtractStats` always
satisfies read == staged + sum(skipped) + quarantined.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
from pydantic import ValidationError

from connectors.base import ConnectorOptions, get_connector
from pipeline.config import SourceConfig, describe_validation_error
from pipeline.errors import ConfigError, InputError
from pipeline.models import (
    ExtractStats,
    Message,
    MessageTable,
    Quarantined,
    Skipped,
    StagedPart,
)
from pipeline.progress import NullProgress, Progress
from pipeline.quarantine import entry, replace_source_entries
from pipeline.staging import StagingWriter

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
    conversations: set[tuple[str, str]] = set()
    users: set[str] = set()
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
                conversations.add((event.user_id, event.conversation_id))
                users.add(event.user_id)
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
                pairs = table.group_by(["user_id", "conversation_id"]).aggregate([])
                conversations.update(
                    zip(
                        pairs.column("user_id").to_pylist(),
                        pairs.column("conversation_id").to_pylist(),
                        strict=True,
                    )
                )
                users.update(pairs.column("user_id").unique().to_pylist())
                progress.advance(table.num_rows)
            elif isinstance(event, StagedPart):
                read += event.rows
                writer.adopt(event)
                conversations.update(event.pairs)
                users.update(user for user, _ in event.pairs)
                progress.advance(event.rows)
        writer.flush()
        stats = ExtractStats(
            source=source.label,
            read=read,
            staged=writer.rows_written,
            skipped=dict(sorted(skipped.items())),
            quarantined=len(quarantined),
            conversations=len(conversations),
            users=len(users),
        )
        (writer.tmp_dir / SUMMARY_FILE).write_bytes(orjson.dumps(stats_dict(stats)))
    progress.close()
    replace_source_entries(workdir, source.label, quarantined)
    return stats


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
