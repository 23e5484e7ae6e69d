"""Process start-up helpers that import nothing heavy.

Kept apart from the worker code so that the per-message module can use `refused_imports`
and the worker initializer can import the per-message module without a cycle. The
connectors' worker processes and the bucket stages (chunk, the dry run) use them.
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


def pyarrow_without_pandas() -> None:
    """Keep pandas out of this process while pyarrow converts Python values.

    pyarrow imports pandas (about 0.3 s and 48 MB) the first time it converts a Python
    value (`pa.array`, `pa.scalar`, a Python argument of a compute function), only to ask
    whether the value is a pandas object; our stages never pass one. Asked once while the
    import is refused, pyarrow settles for this process that pandas is absent for those
    checks; what really needs pandas (`Table.to_pandas`) still imports it. Nothing is done
    when pandas is loaded already.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    with refused_imports("pandas"):
        pa.array([0])
