"""Start-up of connector worker processes, run before anything imports pyarrow.

This module imports nothing heavy, so a spawned worker reaches its initializer with only
the standard library loaded (unless `spawn` re-imported a main module that loads more).
"""

from __future__ import annotations

import importlib.abc
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, packages: frozenset[str]):
        self.packages = packages

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.packages:
            raise ImportError(f"{name} is not used in connector workers")


@contextmanager
def refused_imports(*packages: str) -> Iterator[None]:
    """Within the block, importing these top-level packages (not yet imported) fails."""
    finder = _Refuse(frozenset(p for p in packages if p not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """Processes spawned within the block do not re-run the caller's main module.

    `spawn` re-imports `__main__` in every new process so that functions defined there
    can be unpickled. Connector workers only run this package's functions, so re-running
    the caller's script (the `memos-etl` command imports ~0.2 s of modules, numpy among
    them) is only cost, and a script without an `if __name__ == "__main__":` guard would
    start workers again from each worker.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def init_slack_worker() -> None:
    """ProcessPoolExecutor initializer of Slack workers: pyarrow loaded without numpy.

    pyarrow imports numpy when it can (~0.15 CPU-s and ~11 MB per process, and numpy
    starts its BLAS threads); a worker never gives pyarrow a numpy object, and pyarrow
    works without it. Later code may still import numpy.
    """
    with refused_imports("numpy", "pandas"):
        from connectors.slack import normalize as slack_worker

        slack_worker.init_worker()
