"""`run --engine inprocess`: every slice of every account on one asyncio loop in this
process, each account's slices sharing one `AccountLimiter`. The same slices and ledgers as
the Ray engine with nothing to install: the reference the Ray engine is measured against,
and the fallback without Ray."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence

from pipeline.core.config import budget
from pipeline.engines.slices import (
    SHARED_CATCH_UP,
    Group,
    RecordingBudget,
    SliceResults,
    account_environment,
    budget_peaks,
    load_slice,
)
from pipeline.load.ratelimit import AccountLimiter
from pipeline.load.stats import LoadStats
from pipeline.load.targets import open_target


def run_slices(groups: Sequence[Group]) -> list[SliceResults]:
    """Load every account's jobs concurrently, each account within its one budget."""
    with contextlib.ExitStack() as stack:
        endpoints = [
            stack.enter_context(
                open_target(p.config.load, p.config.workdir, env=account_environment(p, os.environ))
            )
            for p, _ in groups
        ]

        async def everything() -> list[list[LoadStats]]:
            budgets = []
            for pipeline, _ in groups:
                rps, tpm = budget(pipeline.config.load, pipeline.config.account)
                limiter = AccountLimiter(
                    rps, tpm, clock=time.monotonic, sleep=asyncio.sleep, catch_up=SHARED_CATCH_UP
                )
                budgets.append(RecordingBudget(limiter))
            per_account = [
                asyncio.gather(*(load_slice(job, endpoint, shared) for job in jobs))
                for (_, jobs), endpoint, shared in zip(groups, endpoints, budgets, strict=True)
            ]
            done = await asyncio.gather(*per_account)
            for shared, peaks_of in zip(budgets, peaks, strict=True):
                peaks_of.update(budget_peaks(shared.granted))
            return [list(d) for d in done]

        peaks: list[dict[str, float]] = [{} for _ in groups]
        results = asyncio.run(everything())
    return [
        SliceResults({job.bucket: s for job, s in zip(jobs, stats, strict=True)}, p)
        for (_, jobs), stats, p in zip(groups, results, peaks, strict=True)
    ]
