"""Pick an engine and run every account of a config through it (`run --engine`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError
from pipeline.core.progress import Progress
from pipeline.engines.slices import DEFAULT_BUCKETS, AccountRun, RunSlices, run_accounts
from pipeline.tenants import account_pipelines

Engine = Literal["inprocess", "ray"]
ENGINES: tuple[str, ...] = ("embedded", "inprocess", "ray")
"""`embedded`: one loader (`pipeline.run`, the default); the others run by bucket."""


def slice_runner(engine: Engine) -> RunSlices:
    """The engine's executor; Ray's only when the extra is installed."""
    if engine == "inprocess":
        from pipeline.engines import inprocess

        return inprocess.run_slices
    try:
        from pipeline.engines import ray_engine
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray ({exc}); install it with: pip install 'memos-etl[ray]'"
        ) from None
    return ray_engine.run_slices


def run_with_engine(
    cfg: Config,
    engine: Engine,
    *,
    buckets: int = DEFAULT_BUCKETS,
    since: datetime | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    command: str = "memos-etl run",
) -> list[AccountRun]:
    """Every account of `cfg`, loaded by bucket with `engine` (accounts at once)."""
    if buckets < 1:
        raise ConfigError("--buckets must be at least 1")
    return run_accounts(
        account_pipelines(cfg),
        slice_runner(engine),
        buckets=buckets,
        since=since,
        progress=progress,
        env=env,
        command=command,
    )
