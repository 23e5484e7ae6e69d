"""Start-up of group-chat worker processes; imports nothing heavy itself.

A spawned worker unpickles its initializer by importing this module, so the initializer
runs before pyarrow is loaded and can keep numpy and pandas out of the worker.
"""

from __future__ import annotations

from pipeline.core.process_start import refused_imports


def init_group_chat_worker() -> None:
    """pyarrow without numpy or pandas, on the system allocator.

    pyarrow imports numpy when it can (~11 MB), and its first list conversion imports
    pandas (~50 MB) just to ask whether the list is a pandas object; a worker never holds
    either. The system allocator returns freed memory between jobs. About 60 MB less per
    worker; later code may still import both.
    """
    with refused_imports("numpy", "pandas"):
        import pyarrow as pa

        pa.array([0])
    pa.set_memory_pool(pa.system_memory_pool())
