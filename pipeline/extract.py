"""Extract stage: run one connector over one export into the staging table.

Every event a connector yields is counted, so the returned `ExtractStats` always
satisfies read == staged + sum(skipped) + quarantined.

Bad input is loud: an export that stages nothing (wrong kind, empty, garbage, wrong
encoding), or one whose quarantined share is over `max_quarantined_share`, raises
`InputError` (exit 3) with a hint, and the source's previous staging stays as it was. The
quarantine file still gets the reasons. Kind `auto` picks the connector from the export's
layout (`connectors.detect`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from connectors import detect
from connectors.base import ConnectorOptions, get_connector
from pipeline.core.batches import write_json_atomic
from pipeline.core.config import SourceConfig, describe_validation_error
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.models import (
    Distinct,
    Event,
    ExtractStats,
    Message,
    MessageTable,
    Quarantined,
    Skipped,
    StagedPart,
)
from pipeline.core.process_memory import release_freed_memory
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.quarantine import entry, replace_source_entries
from pipeline.core.staging import (
    StagingWriter,
    read_labeled_bucket,
    source_dir,
    staged_bucket_count,
)
from pipeline.core.workdir import quarantine_path

SUMMARY_FILE = "_extract.json"
AUTO = "auto"
"""The source kind that asks `connectors.detect` to pick the connector."""
log = logging.getLogger("memos_etl.extract")


def resolve_auto(source: SourceConfig, *, keep_label: bool = True) -> SourceConfig:
    """`source` with kind `auto` replaced by the detected kind; other sources are returned
    as they are. `InputError` when no single kind fits. With `keep_label` the source keeps
    its name (`auto` if it had none, so a config's names stay valid); without, an unnamed
    source is named after the detected kind."""
    if source.kind != AUTO:
        return source
    kind = detect.choose(source.path)
    log.info("%s looks like a %s export", source.path, kind)
    update: dict[str, object] = {"kind": kind}
    if keep_label:
        update["name"] = source.label
    return source.model_copy(update=update)


def _refuse(
    source: SourceConfig,
    read: int,
    staged: int,
    skipped: int,
    quarantined: int,
    share: float | None,
    required: bool,
    top_reason: str | None = None,
) -> str | None:
    """Why this extract must fail loudly, or None (`top_reason`: the commonest quarantine
    reason, which often names the fix, e.g. the file's encoding)."""
    where = f"{source.path} (as --source {source.kind})"
    if staged == 0 and required:
        guess = [k for k in detect.detect(source.path) if k != source.kind]
        hint = (
            f"it looks like a {' or '.join(guess)} export: try --source {guess[0]}"
            if guess
            else "check the file and its kind (--source auto detects it)"
        )
        if quarantined:
            commonest = f"commonest reason: {top_reason}; " if top_reason else ""
            hint += f"; {commonest}reasons in {{quarantine}}"
        return (
            f"nothing staged from {where}: read {read} records, skipped {skipped}, "
            f"quarantined {quarantined}; {hint}"
        )
    if share is not None and read and quarantined / read > share:
        return (
            f"{quarantined} of {read} records of {where} were quarantined, over the "
            f"allowed share {share:g} (extract.max_quarantined_share); reasons in "
            "{quarantine}"
        )
    return None


def _commonest_reason(quarantined: list[dict[str, object]]) -> str | None:
    reasons = Counter(str(q.get("reason")) for q in quarantined)
    return reasons.most_common(1)[0][0] if reasons else None


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
    max_quarantined_share: float | None = None,
    require_staged: bool = False,
) -> ExtractStats:
    """Read `source` into `<workdir>/staging/<label>/` and its bad records into quarantine.

    Raises `InputError` when `require_staged` and nothing was staged, or when more than
    `max_quarantined_share` of the records were quarantined (None: no limit); the source's
    previous staging is kept then. (The dry run reports such exports instead.)
    """
    progress = progress or NullProgress()
    # Arrow's default allocator (mimalloc) keeps what it freed for as long as the process
    # lives once the system allocator takes over (bucketing, chunk, validate do that): in
    # `run` 145 MB of huge pages stayed resident through the load. Start with the system one.
    release_freed_memory()
    source = resolve_auto(source)
    connector = get_connector(source.kind)
    options = connector_options(source, default_user_id)
    if not source.path.exists():
        raise InputError(f"input not found: {source.path}")

    skipped: Counter[str] = Counter()
    quarantined: list[dict[str, object]] = []
    read = 0
    progress.start(f"extract {source.label}", unit="msg")
    with StagingWriter(workdir, source.label) as writer:
        events = (
            connector.read(source.path, options, parts_dir=writer.parts_dir)
            if connector.writes_parts
            else connector.read(source.path, options)
        )
        for event in _with_kind_hint(events, source):
            if isinstance(event, Message):
                read += 1
                writer.write(event)
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
                progress.advance(table.num_rows)
            elif isinstance(event, StagedPart):
                read += event.rows
                writer.adopt(event)
                progress.advance(event.rows)
        writer.flush()
        why = _refuse(
            source,
            read,
            writer.rows_written,
            sum(skipped.values()),
            len(quarantined),
            max_quarantined_share,
            require_staged,
            _commonest_reason(quarantined),
        )
        if why is not None:
            replace_source_entries(workdir, source.label, quarantined)
            raise InputError(why.replace("{quarantine}", str(quarantine_path(workdir))))
        staged = writer.rows_written
    conversations, users = distinct_counts(workdir, source.label)
    stats = ExtractStats(
        source=source.label,
        read=read,
        staged=staged,
        skipped=dict(sorted(skipped.items())),
        quarantined=len(quarantined),
        conversations=conversations,
        users=users,
    )
    write_json_atomic(source_dir(workdir, source.label) / SUMMARY_FILE, stats_dict(stats))
    progress.close()
    replace_source_entries(workdir, source.label, quarantined)
    return stats


def _with_kind_hint(events: Iterator[Event], source: SourceConfig) -> Iterator[Event]:
    """The connector's events; an export it cannot read at all gets a hint when its layout
    is another connector's (a Claude export given as `--source chatgpt`)."""
    try:
        yield from events
    except (ConfigError, InputError) as exc:
        guess = [k for k in detect.detect(source.path) if k != source.kind]
        if not guess:
            raise
        raise type(exc)(
            f"{exc}; {source.path} looks like a {' or '.join(guess)} export: "
            f"try --source {guess[0]}"
        ) from None


def distinct_counts(workdir: Path, label: str) -> tuple[int, int]:
    """(conversations, users) of one staged source, counted bucket by bucket.

    A conversation lives in one bucket, so the distinct (user, conversation) pairs of the
    buckets add up; only the distinct users are carried across buckets. Counting from
    the staged files keeps the extract's memory flat: collecting the pairs while messages
    streamed in held every conversation id of the export (~110 MB more at 5M messages).
    """
    buckets = staged_bucket_count(workdir, [label])
    conversations = 0
    users: list[pa.Array] = []
    for bucket in range(buckets):
        table = read_labeled_bucket(
            workdir, [label], ["user_id", "conversation_id"], bucket, buckets
        )
        if table.num_rows:
            distinct = Distinct.of_table(table)
            conversations += len(distinct.pairs)
            users.append(distinct.users)
        if len(users) > 64:
            users = [pc.unique(pa.chunked_array(users, pa.string()))]
    if not users:
        return conversations, 0
    return conversations, len(pc.unique(pa.chunked_array(users, pa.string())))


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
