"""Start-up of connector worker processes, run before anything imports pyarrow.

This module imports nothing heavy, so a spawned worker reaches its initializer with only
the standard library loaded (unless `spawn` re-imported a main module that loads more).
"""

from __future__ import annotations

from pipeline.core.parent_watch import die_with_parent
from pipeline.core.process_start import refused_imports


def init_slack_worker() -> None:
    """ProcessPoolExecutor initializer of Slack workers: pyarrow loaded without numpy.

    pyarrow imports numpy when it can (~0.15 CPU-s and ~11 MB per process, and numpy
    starts its BLAS threads); a worker never gives pyarrow a numpy object, and pyarrow
    works without it. Later code may still import numpy. The worker ends when the main
    process does, even when that one is killed (`die_with_parent`).
    """
    import multiprocessing

    starter = multiprocessing.parent_process()
    die_with_parent(starter.pid if starter is not None else None)
    with refused_imports("numpy", "pandas"):
        from connectors.slack import normalize as slack_worker

        slack_worker.init_worker()
