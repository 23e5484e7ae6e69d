"""One (destination, bucket) slice of an account's batches: planned by the driver, loaded
by a task with its own ledger, the same way whichever engine runs it.

The driver (holding the workdir lock) extracts and chunks as `run` does, drops what the
destination already has (from the workdir ledger and every bucket ledger), and writes each
bucket's remaining batches to `ledger/<dest>/bucket-NNNN.jsonl`. A task loads one slice
through `load_batches` into `ledger/<dest>/bucket-NNNN.sqlite`, which only it writes: a
task killed at any moment and run again finds its `sending` batches there and reads them
back before resending (exactly once, as for one loader). Slices a previous run left are
finished first, before anything is re-chunked, like `run` finishes its batch file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline import incremental
from pipeline.core.batches import Batch, encode_batch
from pipeline.core.buckets import bucket_of
from pipeline.core.destination import Destination, destination_for
from pipeline.core.errors import ConfigError
from pipeline.core.lock import workdir_lock
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.workdir import (
    bucket_ledger_dir,
    bucket_ledger_path,
    bucket_slice_path,
    ledger_path,
)
from pipeline.load.budget import Budget
from pipeline.load.entry import WINDOW
from pipeline.load.ledger import Ledger
from pipeline.load.loader import load_batches
from pipeline.load.preflight import preflight
from pipeline.load.ratelimit import AccountLimiter, Ticket
from pipeline.load.stats import LoadStats, run_counts
from pipeline.load.targets import Endpoint, open_target
from pipeline.run import extract_and_chunk
from pipeline.tenants import AccountPipeline

log = logging.getLogger("memos_etl.engines")

DEFAULT_BUCKETS = 8
"""Buckets per destination unless `--buckets` says otherwise: enough slices to keep a few
workers busy; a conversation never spans two, so more buckets only add files."""


@dataclass(frozen=True)
class BucketJob:
    """One task's work: deliver bucket `bucket` of `pipeline`'s batches to `destination`.

    `kill_after` is fault injection for tests (like `serve`'s faults): the process running
    the task exits after its Nth confirmed batch, before the ledger records it, once per
    `kill_marker` file; the engine's retry must then deliver exactly once.
    """

    pipeline: AccountPipeline
    destination: Destination
    bucket: int
    command: str = "memos-etl run"
    kill_after: int | None = None
    kill_marker: Path | None = None

    @property
    def workdir(self) -> Path:
        return self.pipeline.config.workdir


@dataclass
class SliceResults:
    """What an engine's executor returns for one account: each bucket's load, and the
    busiest windows of the account's shared budget (`peaks`)."""

    buckets: dict[int, LoadStats] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)


@dataclass
class AccountRun:
    """What one account's engine run did: extract and chunk stats, per-bucket loads."""

    account: str
    destination: Destination
    extract: list[dict[str, Any]] = field(default_factory=list)
    chunk: dict[str, Any] = field(default_factory=dict)
    buckets: dict[int, LoadStats] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    already_batches: int = 0
    already_messages: int = 0
    load_seconds: float = 0.0
    """How long the loads took, pass by pass: from the first bucket's start to the last
    one's end (`pass_span`). Buckets may run a few at a time (fewer workers than buckets),
    so the longest bucket's load alone understates it."""

    @property
    def load(self) -> LoadStats:
        """The buckets' loads added up (durations overlap: the longest counts), with what
        the driver left out of the slices because the destination has it."""
        stats = merge_stats(self.buckets.values())
        stats.duration = max(stats.duration, self.load_seconds)
        stats.already_batches += self.already_batches
        stats.already_messages += self.already_messages
        stats.messages += self.already_messages
        return stats

    def add(self, results: SliceResults) -> None:
        """Take in one executor pass (a resumed pass, then the new batches)."""
        self.load_seconds += pass_span(results.buckets.values())
        for bucket, stats in results.buckets.items():
            if bucket in self.buckets:
                self.buckets[bucket] = merge_stats([self.buckets[bucket], stats])
            else:
                self.buckets[bucket] = stats
        for name, value in results.peaks.items():
            self.peaks[name] = max(self.peaks.get(name, 0.0), value)


SHARED_CATCH_UP = 0.0
"""Seconds of missed slots an account's shared budget may catch up: none. One loader's
limiter catches up 0.1 s after its workers fell behind; shared by many tasks, whose waits
are timed from the budget's answer, that burst would put the busiest second over the
account's requests/s (56 at 50 measured), so the engines keep the schedule strict."""

Group = tuple[AccountPipeline, Sequence["BucketJob"]]
RunSlices = Callable[[Sequence[Group]], list[SliceResults]]
"""An engine's executor: load every account's jobs at once, each account's jobs sharing its
budget; one result per account, in order."""

PEAK_WINDOWS: tuple[tuple[str, float, int], ...] = (
    ("requests_per_1s", 1.0, 1),
    ("tokens_per_10s", 10.0, 2),
    ("tokens_per_60s", 60.0, 2),
)
"""Windows the busiest share of the budget is reported for: (name, seconds, which field)."""


def budget_peaks(granted: Sequence[tuple[float, float, float]]) -> dict[str, float]:
    """The most requests and tokens reserved within any window of `PEAK_WINDOWS`, from
    (start, requests, tokens) reservations: proof that tasks together kept the budget."""
    starts = sorted(granted)
    out: dict[str, float] = {}
    for name, window, index in PEAK_WINDOWS:
        best = total = 0.0
        left = 0
        for item in starts:
            total += item[index]
            while starts[left][0] <= item[0] - window:
                total -= starts[left][index]
                left += 1
            best = max(best, total)
        out[name] = best
    out["max_call_tokens"] = max((t for _, _, t in starts), default=0.0)
    return out


class RecordingBudget:
    """A `Budget` that notes every reservation of the limiter it wraps (for `budget_peaks`)."""

    def __init__(self, inner: AccountLimiter) -> None:
        self.inner = inner
        self.granted: list[tuple[float, float, float]] = []

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> Ticket:
        ticket = await self.inner.acquire(requests, tokens)
        self.granted.append((ticket.started, requests, tokens))
        return ticket

    def on_success(self, ticket: Ticket | None = None) -> None:
        self.inner.on_success(ticket)

    def on_rate_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        self.inner.on_rate_limited(retry_after, ticket)

    def on_token_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        self.inner.on_token_limited(retry_after, ticket)

    @property
    def rate(self) -> float | None:
        return self.inner.rate

    @property
    def tokens_per_minute(self) -> float | None:
        return self.inner.tokens_per_minute

    @property
    def learned_rate(self) -> float | None:
        return self.inner.learned_rate

    @property
    def learned_tokens_per_minute(self) -> float | None:
        return self.inner.learned_tokens_per_minute

    @property
    def rate_limited(self) -> int:
        return self.inner.rate_limited

    @property
    def token_limited(self) -> int:
        return self.inner.token_limited


def account_environment(pipeline: AccountPipeline, env: Mapping[str, str]) -> dict[str, str]:
    """The environment `pipeline`'s targets read (its key under the name they expect).

    Uses the pipeline's own mapping when it has one (accounts naming their key variable);
    the key is only ever read from the environment, never passed or logged."""
    environment = getattr(pipeline, "environment", None)
    if callable(environment):
        return dict(environment(env))
    return dict(env)


def check_engine_target(pipeline: AccountPipeline) -> None:
    """Engines deliver from several loads at once: the target must be a server they all
    reach (`memos`, `memos-server`, or `local` with the URL of a running `memos-etl serve`),
    not the embedded store a single process starts."""
    load = pipeline.config.load
    if load.target == "local" and not load.base_url:
        raise ConfigError(
            f"account {pipeline.account!r}: --engine needs a server every task can reach; "
            "for the local store run `memos-etl serve` and set load.base_url to its URL"
        )


def pass_span(parts: Iterable[LoadStats]) -> float:
    """Seconds from the first bucket load's start to the last one's end (the longest
    load when their start times were not recorded)."""
    loads = list(parts)
    timed = [s for s in loads if s.started_at]
    if not timed:
        return max((s.duration for s in loads), default=0.0)
    return max(s.started_at + s.duration for s in timed) - min(s.started_at for s in timed)


def merge_stats(parts: Iterable[LoadStats]) -> LoadStats:
    """Add per-bucket load counts into one (the first stop reason is kept)."""
    out = LoadStats()
    for s in parts:
        for name in (
            "batches", "messages", "sent_batches", "sent_messages", "already_batches",
            "already_messages", "duplicate_messages", "verified_landed", "verified_messages",
            "split", "requests", "peak_in_flight", "done", "failed", "pending", "blocked",
        ):  # fmt: skip
            setattr(out, name, getattr(out, name) + getattr(s, name))
        out.retries.update(s.retries)
        out.redacted.update(s.redacted)
        out.changed.extend(s.changed)
        out.failures.extend(s.failures[: max(0, 20 - len(out.failures))])
        out.duration = max(out.duration, s.duration)
        out.stopped = out.stopped or s.stopped
        out.stop_message = out.stop_message or s.stop_message
        out.limits = out.limits or s.limits
    return out


# --- the driver -------------------------------------------------------------------------


def existing_slices(workdir: Path, dest: Destination) -> list[int]:
    """Buckets a previous run left unfinished (a slice file is removed once delivered)."""
    folder = bucket_ledger_dir(workdir, dest.id)
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("bucket-*.jsonl"))


class DeliveredEverywhere:
    """What `dest` has confirmed, asked a window of ids at a time: the workdir ledger's
    record and every bucket ledger's (never every delivery in memory at once)."""

    def __init__(self, workdir: Path, dest: Destination):
        self.stack = contextlib.ExitStack()
        self.main = self.stack.enter_context(incremental.DeliveredLedger(workdir, dest))
        folder = bucket_ledger_dir(workdir, dest.id)
        paths = sorted(folder.glob("bucket-*.sqlite")) if folder.is_dir() else []
        self.buckets = [self.stack.enter_context(Ledger(path, dest)) for path in paths]

    def among(self, message_ids: Sequence[str]) -> dict[str, str]:
        """`{message_id: content_hash}` of those of `message_ids` the destination has."""
        found = self.main.among(message_ids)
        for ledger in self.buckets:
            found.update(ledger.delivered_among(message_ids))
        return found

    def close(self) -> None:
        self.stack.close()


@dataclass(frozen=True)
class SlicePlan:
    """What `write_slices` wrote: batches per bucket, and what it left out because the
    destination already has it (reported as already delivered)."""

    counts: dict[int, int]
    already_batches: int
    already_messages: int


def write_slices(
    workdir: Path, dest: Destination, batches: Iterable[Batch], buckets: int, resend: bool
) -> SlicePlan:
    """Split the batches `dest` still needs into one file per bucket (replacing the last
    run's).

    The batch file is read a window at a time (`WINDOW` batches): the window's messages are
    asked of the ledgers, and its batches appended to their bucket's file, so memory holds
    one window, never the batch file or what the destination has. Every slice is written
    before any is delivered, so a message met again in a later window (the same id and
    content in two conversations: two buckets whose tasks run at once) is recognised by
    the messages kept so far, held on disk beside the slices (`SeenOnDisk`).
    """
    folder = bucket_ledger_dir(workdir, dest.id)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("bucket-*.jsonl"), *folder.glob("bucket-*.jsonl.tmp")]:
        old.unlink()
    plan = incremental.BatchPlan([])
    counts: dict[int, int] = {}
    delivered = DeliveredEverywhere(workdir, dest)
    remembered = incremental.SeenOnDisk(folder / ".seen.sqlite")
    try:
        for window in incremental.filter_windows(
            incremental.windows(batches, WINDOW), delivered.among, resend, plan, remembered
        ):
            lines: dict[int, list[bytes]] = {}
            for batch in window:
                bucket = bucket_of(batch.conversation_id, buckets)
                lines.setdefault(bucket, []).append(encode_batch(batch))
            for bucket, chunk in lines.items():
                tmp = bucket_slice_path(workdir, dest.id, bucket).with_suffix(".jsonl.tmp")
                with tmp.open("ab") as out:
                    out.write(b"".join(chunk))
                counts[bucket] = counts.get(bucket, 0) + len(chunk)
    finally:
        delivered.close()
        remembered.close()
    for bucket in counts:
        path = bucket_slice_path(workdir, dest.id, bucket)
        os.replace(path.with_suffix(".jsonl.tmp"), path)
    return SlicePlan(dict(sorted(counts.items())), plan.already_batches, plan.already_messages)


def run_accounts(
    pipelines: Sequence[AccountPipeline],
    run_slices: RunSlices,
    *,
    buckets: int = DEFAULT_BUCKETS,
    since: datetime | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    command: str = "memos-etl run",
    kill_after: int | None = None,
) -> list[AccountRun]:
    """extract -> chunk -> load by bucket for every account, each under its workdir lock:
    first the slices a previous run left, then the new batches (see the module docstring).
    Accounts are prepared one after another and loaded together."""
    from pipeline.core.batches import read_batches

    base_env = os.environ if env is None else env
    runs: list[AccountRun] = []
    with contextlib.ExitStack() as locks:
        for pipeline in pipelines:
            check_engine_target(pipeline)
            cfg = pipeline.config
            environment = account_environment(pipeline, base_env)
            dest = destination_for(cfg.load, cfg.workdir, env=environment)
            locks.enter_context(workdir_lock(cfg.workdir))
            with open_target(cfg.load, cfg.workdir, env=environment) as endpoint:
                preflight(
                    endpoint,
                    server=cfg.load.target == "memos-server",
                    auth_scheme=cfg.load.auth_scheme,
                    timeout=min(cfg.load.timeout, 10.0),
                )
            runs.append(AccountRun(pipeline.account, dest))

        locks.enter_context(recorded_in_history(runs, pipelines, command))

        # fault injection (tests): only one task of the whole run is killed
        marker = pipelines[0].config.workdir / ".engine-kill-marker" if pipelines else None

        def jobs(run: AccountRun, pipeline: AccountPipeline, numbers: Iterable[int]) -> Group:
            return pipeline, [
                BucketJob(
                    pipeline,
                    run.destination,
                    b,
                    command,
                    kill_after=kill_after,
                    kill_marker=marker if kill_after is not None else None,
                )
                for b in numbers
            ]

        previous = [
            jobs(r, p, existing_slices(p.config.workdir, r.destination))
            for r, p in zip(runs, pipelines, strict=True)
        ]
        if any(group[1] for group in previous):
            log.info("finishing the slices of a previous run")
            for run, results in zip(runs, run_slices(previous), strict=True):
                run.add(results)
            if any(r.load.stopped for r in runs):
                return runs
        fresh: list[Group] = []
        for run, pipeline in zip(runs, pipelines, strict=True):
            cfg = pipeline.config
            run.extract, chunked, _, excluded = extract_and_chunk(
                cfg, run.destination, since, progress or NullProgress()
            )
            run.chunk = chunked.to_json()
            plan = write_slices(
                cfg.workdir,
                run.destination,
                read_batches(cfg.workdir),
                buckets,
                cfg.load.resend_changed,
            )
            run.already_batches += plan.already_batches
            run.already_messages += plan.already_messages + excluded
            log.info(
                "%s: %d batches in %d buckets",
                pipeline.account,
                sum(plan.counts.values()),
                len(plan.counts),
            )
            fresh.append(jobs(run, pipeline, plan.counts))
        for run, results in zip(runs, run_slices(fresh), strict=True):
            run.add(results)
    return runs


@contextlib.contextmanager
def recorded_in_history(
    runs: Sequence[AccountRun], pipelines: Sequence[AccountPipeline], command: str
) -> Iterator[None]:
    """One `memos-etl history` line per account for the whole engine run, in the workdir
    ledger `history` reads (the bucket ledgers keep their tasks' own lines). A run that
    dies stays listed as unfinished."""
    started = time.monotonic()
    opened = []
    for run, pipeline in zip(runs, pipelines, strict=True):
        with Ledger(ledger_path(pipeline.config.workdir), run.destination) as ledger:
            opened.append(ledger.start_run(command))
    try:
        yield
    finally:
        for run, pipeline, run_id in zip(runs, pipelines, opened, strict=True):
            counts = run_counts(run.load)
            counts["duration_s"] = round(time.monotonic() - started, 3)
            with Ledger(ledger_path(pipeline.config.workdir), run.destination) as ledger:
                ledger.end_run(run_id, counts)


# --- a task ---------------------------------------------------------------------------


def read_slice(job: BucketJob) -> list[Batch]:
    """The batches of the job's slice file (none when it is gone)."""
    path = bucket_slice_path(job.workdir, job.destination.id, job.bucket)
    if not path.exists():
        return []
    with path.open("rb") as fh:
        return [Batch.from_json(orjson.loads(line)) for line in fh if line.strip()]


class _KillingLedger(Ledger):
    """A ledger whose process dies after its Nth confirmed batch, before recording it
    (`BucketJob.kill_after`): the request landed, the ledger still says `sending`."""

    def __init__(self, path: Path, destination: Destination, after: int, marker: Path) -> None:
        super().__init__(path, destination)
        self._left = after
        self._marker = marker

    def mark_done(self, batch_id: str, *args: Any, **kwargs: Any) -> None:
        self._left -= 1
        if self._left == 0 and not self._marker.exists():
            self._marker.touch()
            os._exit(17)
        super().mark_done(batch_id, *args, **kwargs)


def open_bucket_ledger(job: BucketJob) -> Ledger:
    """The job's bucket ledger (with the kill hook when the job asks for it)."""
    path = bucket_ledger_path(job.workdir, job.destination.id, job.bucket)
    if job.kill_after is not None and job.kill_marker is not None:
        return _KillingLedger(path, job.destination, job.kill_after, job.kill_marker)
    return Ledger(path, job.destination)


async def load_slice(job: BucketJob, endpoint: Endpoint, budget: Budget) -> LoadStats:
    """Deliver one slice through its bucket ledger, within the shared `budget`."""
    batches = read_slice(job)
    cfg = job.pipeline.config
    with open_bucket_ledger(job) as ledger:
        run_id = ledger.start_run(job.command)
        stats = LoadStats()
        started = time.time()
        try:
            stats = await load_batches(
                batches, ledger, endpoint, cfg.load, account=cfg.account, shared_budget=budget
            )
            stats.started_at = started
        finally:
            ledger.end_run(run_id, run_counts(stats))
    if stats.complete:  # nothing left to resume: the next run need not read it again
        bucket_slice_path(job.workdir, job.destination.id, job.bucket).unlink(missing_ok=True)
    return stats
