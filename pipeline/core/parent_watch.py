"""Make a helper or worker process end when the process that started it ends.

A killed `extract` or `chunk` (SIGKILL, or SIGTERM before it can clean up) must not leave its worker
processes behind: they would sit idle, holding their memory, forever. On Linux the kernel
sends the worker SIGKILL when its parent dies (`PR_SET_PDEATHSIG`); everywhere, and for
the case where the parent's starting thread ends first, a daemon thread checks once a
second whether the worker was re-parented and then exits. Imports only the standard
library (workers call this before anything heavy is loaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
CHECK_SECONDS = 1.0


def die_with_parent(parent: int | None = None) -> None:
    """End this process (exit code 1) as soon as its parent is gone.

    `parent` is the pid of the process that started this one, when known (a
    `multiprocessing` child knows it): if that one already died while this process was
    starting, this process has been re-parented and ends at once.
    """
    if parent is None:
        parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # advice only: the thread remains
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while True:
        time.sleep(CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)
