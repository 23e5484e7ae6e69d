"""`run --engine ray`: one Ray task per (destination, bucket), one budget actor per account.

Needs the extra (`pip install 'memos-etl[ray]'`); the only module that imports Ray. With
`RAY_ADDRESS` set, `ray.init()` joins that cluster; otherwise it starts a local one.

- **Budget actor.** An account's requests/s and tokens/min are one `AccountLimiter` living
  in an actor (`AccountBudget`). A task asks it for a reservation before every request;
  the actor reserves the slot on its schedules at once (its limiter never sleeps) and
  answers how long to wait, so the limiter's spacing holds across every task, wherever it
  runs. Rejections and successes are reported back, so what the limiter learns about the
  server's ceiling applies to all tasks. Delays, not clock times, cross the wire: the
  nodes' clocks need not agree.
- **Tasks.** A task loads one slice (`pipeline.engines.slices.load_slice`) into its bucket
  ledger on the shared workdir. A task whose worker or node dies is retried by Ray
  (`max_retries`); the retry finds its uncertain batches in the ledger and reads them back
  before resending, so every message still lands exactly once.
- **Keys** are read by each task from its own environment (the account's variable must be
  set on every node); they never travel as task arguments.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.core.config import budget
from pipeline.engines.slices import (
    SHARED_CATCH_UP,
    BucketJob,
    Group,
    SliceResults,
    account_environment,
    budget_peaks,
    load_slice,
)
from pipeline.load.ratelimit import AccountLimiter, Ticket
from pipeline.load.stats import LoadStats
from pipeline.load.targets import open_target
from pipeline.tenants import AccountPipeline

TASK_RETRIES = 3
"""How often Ray reruns a task whose worker process or node died."""
MIN_TASK_CPUS = 0.05
"""The least CPU Ray reserves for one load task. A task mostly waits on the network and on
the shared budget, so a run's tasks share the cluster's CPUs (`task_cpus`): all of them
load at once, as in the in-process engine. Reserving a whole CPU each would run a 2-CPU
machine's 8 buckets two at a time, at a fraction of the budget."""
TICKET_MEMORY = 180.0
"""Seconds the actor remembers a reservation (longer than a token window plus a pause)."""


async def _no_sleep(_: float) -> None:
    """The actor reserves a slot without waiting for it: the task waits."""


class AccountBudget:
    """The budget actor of one account: reservations out, feedback in (one asyncio loop,
    so the limiter is never used from two threads)."""

    def __init__(self, requests_per_second: float | None, tokens_per_minute: float | None):
        self.limiter = AccountLimiter(
            requests_per_second,
            tokens_per_minute,
            clock=time.monotonic,
            sleep=_no_sleep,
            catch_up=SHARED_CATCH_UP,
        )
        self.tickets: dict[int, Ticket] = {}
        self.order: deque[tuple[float, int]] = deque()
        self.next_id = 0
        self.granted: list[tuple[float, float, float]] = []
        """(start, requests, tokens) of every reservation: what the tests check."""

    async def reserve(self, requests: float, tokens: float) -> tuple[int, float, dict[str, Any]]:
        """Reserve a start for a request of this weight: (ticket id, seconds to wait, state)."""
        ticket = await self.limiter.acquire(requests=requests, tokens=tokens)
        now = time.monotonic()
        self.next_id += 1
        self.tickets[self.next_id] = ticket
        self.order.append((now, self.next_id))
        while self.order and self.order[0][0] < now - TICKET_MEMORY:
            self.tickets.pop(self.order.popleft()[1], None)
        self.granted.append((ticket.started, requests, tokens))
        return self.next_id, max(0.0, ticket.started - now), self.state()

    async def release(self, reservation: tuple[int, float, dict[str, Any]]) -> None:
        """A reservation (as `reserve` answered it) given up before its request left: the
        limiter no longer counts it as sent (`AccountLimiter.forget`)."""
        ticket = self.tickets.pop(reservation[0], None)
        if ticket is not None:
            self.limiter.forget(ticket)

    async def success(self, ticket_id: int) -> None:
        self.limiter.on_success(self.tickets.get(ticket_id))

    async def rate_limited(self, ticket_id: int, retry_after: float | None) -> None:
        self.limiter.on_rate_limited(retry_after, self.tickets.get(ticket_id))

    async def token_limited(self, ticket_id: int, retry_after: float | None) -> None:
        self.limiter.on_token_limited(retry_after, self.tickets.get(ticket_id))

    async def reservations(self) -> list[tuple[float, float, float]]:
        """Every reservation's (start, requests, tokens), on the actor's clock."""
        return list(self.granted)

    def state(self) -> dict[str, Any]:
        lim = self.limiter
        return {
            "rate": lim.rate,
            "tokens_per_minute": lim.tokens_per_minute,
            "learned_rate": lim.learned_rate,
            "learned_tokens_per_minute": lim.learned_tokens_per_minute,
            "rate_limited": lim.rate_limited,
            "token_limited": lim.token_limited,
        }


@dataclass
class _RemoteTicket(Ticket):
    ticket_id: int = 0


class ActorBudget:
    """The loader's `Budget` backed by an `AccountBudget` actor (inside a task)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._state: dict[str, Any] = {}

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> Ticket:
        reservation = self.actor.reserve.remote(requests, tokens)
        try:
            ticket_id, wait, self._state = await reservation
            if wait > 0:
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            # the load stopped before the request left: the actor forgets the reservation
            # (Ray hands `release` the answer, also when it has not arrived here yet)
            self.actor.release.remote(reservation)
            raise
        return _RemoteTicket(time.monotonic(), requests, tokens, ticket_id=ticket_id)

    def _id(self, ticket: Ticket | None) -> int:
        return ticket.ticket_id if isinstance(ticket, _RemoteTicket) else 0

    def on_success(self, ticket: Ticket | None = None) -> None:
        self.actor.success.remote(self._id(ticket))

    def on_rate_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        self.actor.rate_limited.remote(self._id(ticket), retry_after)

    def on_token_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        self.actor.token_limited.remote(self._id(ticket), retry_after)

    def _get(self, name: str) -> Any:
        return self._state.get(name)

    @property
    def rate(self) -> float | None:
        value = self._get("rate")
        return None if value is None else float(value)

    @property
    def tokens_per_minute(self) -> float | None:
        value = self._get("tokens_per_minute")
        return None if value is None else float(value)

    @property
    def learned_rate(self) -> float | None:
        value = self._get("learned_rate")
        return None if value is None else float(value)

    @property
    def learned_tokens_per_minute(self) -> float | None:
        value = self._get("learned_tokens_per_minute")
        return None if value is None else float(value)

    @property
    def rate_limited(self) -> int:
        return int(self._get("rate_limited") or 0)

    @property
    def token_limited(self) -> int:
        return int(self._get("token_limited") or 0)


def _load_task(job: BucketJob, actor: Any) -> LoadStats:
    """One slice, in a Ray worker: its own target connection, the account's shared budget."""
    cfg = job.pipeline.config
    env = account_environment(job.pipeline, os.environ)
    with open_target(cfg.load, cfg.workdir, env=env) as endpoint:
        return asyncio.run(load_slice(job, endpoint, ActorBudget(actor)))


_remote_load = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(_load_task)
_RemoteBudget = ray.remote(num_cpus=0)(AccountBudget)


def ensure_ray() -> None:
    """Join `RAY_ADDRESS`'s cluster, or start a local one, unless already connected."""
    if not ray.is_initialized():
        ray.init(log_to_driver=False)


def budget_actor(pipeline: AccountPipeline) -> Any:
    """A new budget actor holding the account's requests/s and tokens/min."""
    cfg = pipeline.config
    rps, tpm = budget(cfg.load, cfg.account)
    return _RemoteBudget.remote(rps, tpm)


def task_cpus(cluster_cpus: float, tasks: int) -> float:
    """CPUs to reserve per task so that `tasks` tasks fit the cluster at once (at most one
    each, at least `MIN_TASK_CPUS`; Ray accepts four decimals)."""
    share = cluster_cpus / max(1, tasks)
    return max(MIN_TASK_CPUS, min(1.0, math.floor(share * 10_000) / 10_000))


def run_slices(groups: Sequence[Group]) -> list[SliceResults]:
    """Every account's jobs as Ray tasks at once, one budget actor per account."""
    ensure_ray()
    actors = [budget_actor(pipeline) for pipeline, _ in groups]
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    cpus = task_cpus(resources.get("CPU", 1.0), sum(len(j) for _, j in groups))
    refs = [
        [_remote_load.options(num_cpus=cpus).remote(job, actor) for job in jobs]
        for (_, jobs), actor in zip(groups, actors, strict=True)
    ]
    out = []
    for (_, jobs), account_refs, actor in zip(groups, refs, actors, strict=True):
        stats: list[LoadStats] = ray.get(account_refs)
        granted = ray.get(actor.reservations.remote())
        out.append(
            SliceResults(
                {job.bucket: s for job, s in zip(jobs, stats, strict=True)},
                budget_peaks(granted),
            )
        )
    for actor in actors:
        ray.kill(actor)
    return out
