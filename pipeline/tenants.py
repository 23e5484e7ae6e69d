"""Many accounts in one config: split it into one self-contained pipeline per MemOS account.

The single-account pipeline (`pipeline.run`) stays the unit of work; a config that lists
several accounts (`accounts:`) is run as several of them, each with its own workdir
(`<workdir>/accounts/<name>/`), ledger, destination and budget, so the sources of one
account share its budget and never share a ledger with another account's.
Engines (in-process, Ray) iterate `account_pipelines`; `run_account` runs one of them
in-process and counts what it delivered per source.

An account's key comes from the environment variable its entry names (`api_key_env`),
handed to the pipeline as `MEMOS_API_KEY` (or, for a `local` target with a URL, as the
serve token) in a copy of the environment: the key is never in the config, a log line or
the ledger (which keeps only its fingerprint).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import incremental
from pipeline.core.config import API_KEY_ENV, Config
from pipeline.core.destination import Destination, destination_for
from pipeline.core.errors import ConfigError, MemosError
from pipeline.core.progress import Progress
from pipeline.core.staging import read_labeled_bucket, staged_bucket_count
from pipeline.load.targets import SERVE_TOKEN_ENV
from pipeline.run import RunResult, run_pipeline

DEFAULT_ACCOUNT = "default"
"""The one account of a config without `accounts:` (its workdir is the config's own)."""


@dataclass(frozen=True)
class AccountPipeline:
    """One account's share of a config: its name, a config with only its sources, and the
    name of the environment variable holding its key (None: `MEMOS_API_KEY`)."""

    account: str
    config: Config
    key_env: str | None = None
    named: bool = False
    """True for an account of an `accounts:` section (not the implicit default)."""

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` as this account's pipeline must see it: its key under the name the
        targets read. A named but unset variable is a `ConfigError` naming the account,
        unless the target needs no key (the embedded local server)."""
        out = dict(env)
        if self.key_env is None:
            return out
        load = self.config.load
        if load.target == "local" and not load.base_url:
            return out  # the embedded server takes no key
        key = env.get(self.key_env)
        if not key:
            raise ConfigError(
                f"account {self.account!r}: {self.key_env} is not set; export the "
                "account's API key in it (accounts.<name>.api_key_env names the variable)"
            )
        out.pop(API_KEY_ENV, None)
        out.pop(SERVE_TOKEN_ENV, None)
        out[SERVE_TOKEN_ENV if load.target == "local" else API_KEY_ENV] = key
        return out


def account_pipelines(cfg: Config) -> list[AccountPipeline]:
    """The config's pipelines, one per account; a config without accounts is one pipeline."""
    if not cfg.accounts:
        return [AccountPipeline(DEFAULT_ACCOUNT, cfg)]
    return [account_pipeline(cfg, name) for name in cfg.accounts]


def account_pipeline(
    cfg: Config, name: str, load_overrides: Mapping[str, Any] | None = None
) -> AccountPipeline:
    """Account `name`'s pipeline (`--account NAME`), with flag overrides of its `load:`."""
    config = cfg.for_account(name, load_overrides)
    return AccountPipeline(name, config, cfg.accounts[name].api_key_env, named=True)


@contextlib.contextmanager
def account_errors(pipeline: AccountPipeline) -> Iterator[None]:
    """Put the account's name in front of any error raised inside (a key rejected, a
    destination down), so a run over many accounts says which one failed."""
    try:
        yield
    except MemosError as exc:
        prefix = f"account {pipeline.account!r}"
        text = str(exc)
        if pipeline.key_env:  # the key was handed on as MEMOS_API_KEY: name the real variable
            text = text.replace(API_KEY_ENV, pipeline.key_env)
        if pipeline.named and not text.startswith(prefix):
            text = f"{prefix}: {text}"
        exc.args = (text, *exc.args[1:])
        raise


@dataclass
class SourceCounts:
    """One source's messages for its account's destination, after a run.

    `staged` = `delivered` + `not_delivered`; `sent` is the part of `delivered` this run
    delivered (sent, or found already landed after an uncertain send)."""

    source: str
    account: str
    staged: int = 0
    quarantined: int = 0
    sent: int = 0
    delivered: int = 0

    @property
    def not_delivered(self) -> int:
        """Staged but not at the destination: failed, pending, changed or left out."""
        return self.staged - self.delivered

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "staged": self.staged,
            "quarantined": self.quarantined,
            "sent": self.sent,
            "delivered": self.delivered,
            "not_delivered": self.not_delivered,
        }


@dataclass
class AccountRun:
    """What one account's pipeline did: the run's result and its counts per source."""

    pipeline: AccountPipeline
    destination: Destination
    result: RunResult
    sources: list[SourceCounts] = field(default_factory=list)


def run_account(
    pipeline: AccountPipeline,
    *,
    env: Mapping[str, str],
    since: datetime | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
    heartbeat: float | None = None,
    command: str = "memos-etl run",
    settings: dict[str, Any] | None = None,
) -> AccountRun:
    """Run one account's pipeline in-process and count its sources' deliveries.

    Errors (a key rejected, a destination down) are re-raised with the account's name in
    front, so a run over many accounts says which one failed.
    """
    cfg = pipeline.config
    with account_errors(pipeline):
        account_env = pipeline.environment(env)
        dest = destination_for(cfg.load, cfg.workdir, env=account_env)
        with _DeliveredBefore(cfg.workdir, dest) as before:
            result = run_pipeline(
                cfg,
                since=since,
                progress=progress,
                handle_signals=handle_signals,
                heartbeat=heartbeat,
                env=account_env,
                command=command,
                settings=settings,
            )
            counts = _source_counts(pipeline, result, before, dest)
    return AccountRun(pipeline, dest, result, counts)


class _DeliveredBefore:
    """The ids `dest` had before a run, copied from the ledger into a scratch
    `incremental.SeenOnDisk` (removed on exit), so that the counts after the run can tell
    which deliveries are new without holding every delivered id in memory (~100 bytes
    each in a set)."""

    def __init__(self, workdir: Path, dest: Destination):
        handle, name = tempfile.mkstemp(prefix="memos-etl-delivered-", suffix=".sqlite")
        os.close(handle)
        self.seen = incremental.SeenOnDisk(Path(name))
        try:
            with incremental.DeliveredLedger(workdir, dest) as ledger:
                if ledger.scope is not None:
                    where, params = ledger.scope
                    rows = ledger.connection().execute(
                        f"select message_id from delivered_messages where {where}",  # noqa: S608
                        params,
                    )
                    while chunk := rows.fetchmany(10_000):
                        self.seen.add(m.encode() for (m,) in chunk)
        except BaseException:
            self.close()
            raise

    def among(self, message_ids: Sequence[str]) -> set[str]:
        """Those of `message_ids` the destination had before the run."""
        return {k.decode() for k in self.seen.among([m.encode() for m in message_ids])}

    def close(self) -> None:
        self.seen.close()

    def __enter__(self) -> _DeliveredBefore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _source_counts(
    pipeline: AccountPipeline, result: RunResult, before: _DeliveredBefore, dest: Destination
) -> list[SourceCounts]:
    """Per source: staged messages, how many the destination holds, and how many of those
    this run delivered (read from the staging table and the ledger, read-only), one staging
    bucket at a time: memory holds a bucket's ids, never every delivery."""
    cfg = pipeline.config
    labels = [s.label for s in cfg.sources]
    counts = {label: SourceCounts(label, pipeline.account) for label in labels}
    for stats in result.extract:
        if stats["source"] in counts:
            counts[str(stats["source"])].quarantined = int(stats["quarantined"])
    buckets = staged_bucket_count(cfg.workdir, labels)
    with incremental.DeliveredLedger(cfg.workdir, dest) as delivered:
        for bucket in range(buckets):
            staged = read_labeled_bucket(
                cfg.workdir, labels, ["message_id"], bucket, buckets
            ).to_pydict()
            ids = sorted(set(staged["message_id"]))
            after = delivered.among(ids)
            had = before.among(ids)
            for message_id, label in zip(staged["message_id"], staged["label"], strict=True):
                row = counts[label]
                row.staged += 1
                if message_id in after:
                    row.delivered += 1
                    if message_id not in had:
                        row.sent += 1
    return [counts[label] for label in labels]
