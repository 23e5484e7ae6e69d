"""Run part of a read in a helper process that leaves its results in a temporary folder.

Parsing and shaping conversations is pure-Python work bound to one core. To use a second
core, a connector gives a helper process its own share of the input (for ChatGPT: the
conversations after a byte offset) and reads the rest itself; the helper shares nothing
with the parent while both work. The helper writes its rows where the job says (for
ChatGPT: a finished Parquet staging part) and returns a picklable result. The parent
collects it only when it has finished its own share, so it can still throw the helper's
work away (then it reads that share itself).

Earlier designs streamed the rows through a pipe while the parent worked (the parent then
spent its time copying the helper's rows instead of parsing its own share), then spooled
them to an Arrow file that the parent copied into Parquet after both had finished (a
serial tail of about a tenth of the run).

The helper is `python -m connectors.chatgpt.helper FOLDER`, started with `subprocess` (not
`multiprocessing`, which would re-import the caller's main module). It reads one pickled
`(work, job)` from stdin, runs `work(job, FOLDER)` and writes `result.pickle` (or
`error.txt`) into FOLDER. It prints nothing: a bug in it shows up as the parent's
warning and a one-process read, never as a traceback on the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_RESULT = "result.pickle"
_ERROR = "error.txt"


Work = Callable[[Any, Path], Any]
"""Runs in the helper: reads its share, may write files into the given private folder (or
where the job says), returns a picklable result for the parent."""


class Helper:
    """A started helper process and its temporary folder; a context manager that always
    stops the process and removes the folder."""

    def __init__(self, work: Work, job: Any) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="memos-etl-helper-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._process = subprocess.Popen(
            [sys.executable, "-m", "connectors.chatgpt.helper", str(self.folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self._process.stdin is not None
        with self._process.stdin as stdin:
            stdin.write(pickle.dumps((work, job), protocol=pickle.HIGHEST_PROTOCOL))

    def result(self) -> Any | None:
        """Wait for the helper; its result, or None (logged) when it failed."""
        code = self._process.wait()
        if code == 0 and (self.folder / _RESULT).exists():
            return pickle.loads((self.folder / _RESULT).read_bytes())
        error = self.folder / _ERROR
        why = error.read_text(errors="replace") if error.exists() else f"exit code {code}"
        log.warning("the helper process failed (%s); reading its share in this process", why)
        return None

    def stop(self) -> None:
        """End the helper now (its work is not needed)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Helper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _helper_main(folder: Path, work: Work, job: Any) -> int:
    """The helper's side: run `work`, leave its result (or the error) in `folder`."""
    try:
        result = work(job, folder)
        tmp = folder / f"{_RESULT}.tmp"
        tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, folder / _RESULT)
        return 0
    except BaseException as exc:  # noqa: BLE001 - a process entry point reports everything
        with contextlib.suppress(OSError):
            (folder / _ERROR).write_text(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    from pipeline.core.parent_watch import die_with_parent

    die_with_parent()
    job_work, job_args = pickle.loads(sys.stdin.buffer.read())
    sys.exit(_helper_main(Path(sys.argv[1]), job_work, job_args))
