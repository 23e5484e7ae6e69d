"""`memos-etl extract`: read exports into the staging table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from pipeline.core.config import (
    SOURCE_NAME_RULE,
    Config,
    SourceConfig,
    check_source_name,
    describe_validation_error,
)
from pipeline.core.errors import ConfigError
from pipeline.core.workdir import quarantine_path

if TYPE_CHECKING:
    pass

from pipeline.cli.common import (
    common_options,
    emit,
    fail,
    load_cli_config,
    plural,
    setup,
    sigterm_as_interrupt,
)


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--source",
    "kind",
    help="Connector: csv, slack, chatgpt, claude, telegram, discord, whatsapp, or auto.",
)
@click.option("--encoding", help="Text encoding of the export (CSV), e.g. cp1252 or utf-16.")
@click.option(
    "--name",
    help="Label of this source in the workdir (default: the source kind). "
    "Re-extracting a name replaces what it staged before.",
)
@click.option("--user-id", help="Memory owner (user_id) for sources that do not carry one.")
@common_options
def extract(
    path: Path | None,
    kind: str | None,
    encoding: str | None,
    name: str | None,
    user_id: str | None,
    config_path: Path | None,
    workdir: Path | None,
    verbose: int,
    quiet: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Read an export into the Parquet staging table.

    Exit 3 when the export stages nothing (wrong kind, empty, wrong encoding) or more
    than extract.max_quarantined_share of its records are quarantined; 5 when another
    memos-etl command is using the workdir.

    Example: memos-etl extract --source csv data/samples/support_chats.csv --workdir w
    """
    from pipeline.core.lock import workdir_lock
    from pipeline.extract import extract_source, resolve_auto, stats_dict

    progress = setup(verbose, quiet, no_progress)
    cfg = load_cli_config(config_path, {"workdir": workdir, "user_id": user_id})
    sources = _pick_sources(cfg, kind, path, name)
    if encoding is not None:
        sources = [
            s.model_copy(update={"options": {**s.options, "encoding": encoding}}) for s in sources
        ]
    with workdir_lock(cfg.workdir):
        resolved = [resolve_auto(s, keep_label=path is None) for s in sources]
        for before, after in zip(sources, resolved, strict=True):
            if before.kind != after.kind:
                click.echo(f"{after.path}: detected a {after.kind} export", err=True)
        try:
            with sigterm_as_interrupt():
                results = [
                    stats_dict(
                        extract_source(
                            s,
                            cfg.workdir,
                            default_user_id=cfg.user_id,
                            progress=progress,
                            max_quarantined_share=cfg.extract.max_quarantined_share,
                            require_staged=True,
                        )
                    )
                    for s in resolved
                ]
        except KeyboardInterrupt:
            fail(
                click.get_current_context(),
                "interrupted: the source being read was not staged (what it staged before is "
                "kept); run the same extract again",
                130,
            )
    totals = sum_counts(results)
    totals["sources"] = results
    totals["workdir"] = str(cfg.workdir)
    lines = [extract_line(r) for r in results]
    if totals["quarantined"]:
        lines.append(f"quarantined records: {quarantine_path(cfg.workdir)}")
    emit(totals, as_json, "\n".join(lines))


def _pick_sources(
    cfg: Config, kind: str | None, path: Path | None, name: str | None
) -> list[SourceConfig]:
    if name is not None:
        try:
            check_source_name(name)
        except ValueError:
            raise ConfigError(f"--name {name!r}: {SOURCE_NAME_RULE}") from None
    if path is not None:
        if kind is None:
            raise click.UsageError("--source is required with an input PATH (or --source auto)")
        template = next((s for s in cfg.sources if s.kind == kind), None)
        base: dict[str, Any] = template.model_dump() if template else {"kind": kind}
        base.update(kind=kind, path=path)
        if name is not None:
            base["name"] = name
        try:
            return [SourceConfig.model_validate(base)]
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, "--source/--name")) from None
    chosen = [
        s
        for s in cfg.sources
        if (kind is None or s.kind == kind) and (name is None or s.label == name)
    ]
    if not chosen:
        raise click.UsageError("give an input PATH with --source, or a --config with sources")
    return chosen


def sum_counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    skipped: dict[str, int] = {}
    for r in results:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        "read": sum(r["read"] for r in results),
        "staged": sum(r["staged"] for r in results),
        "skipped": dict(sorted(skipped.items())),
        "quarantined": sum(r["quarantined"] for r in results),
        "conversations": sum(r["conversations"] for r in results),
        "users": sum(r["users"] for r in results),
    }


def extract_line(r: dict[str, Any]) -> str:
    skipped = sum(r["skipped"].values())
    return (
        f"{r['source']}: read {r['read']}, staged {r['staged']}, skipped {skipped}, "
        f"quarantined {r['quarantined']} ({plural(r['conversations'], 'conversation')}, "
        f"{plural(r['users'], 'user')})"
    )
