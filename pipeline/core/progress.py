"""Progress reporting, injected into stage code so stages never import tqdm themselves."""

from __future__ import annotations

import sys
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    """Something that shows how far a stage got."""

    def start(self, desc: str, total: int | None = None, unit: str = "it") -> None:
        """Begin a new bar (closing any previous one)."""

    def advance(self, n: int = 1) -> None:
        """Move the current bar forward by `n`."""

    def set_total(self, total: int | None) -> None:
        """Change the current bar's total (a stage that learns what is left as it goes)."""

    def close(self) -> None:
        """Finish the current bar."""


class NullProgress:
    """Shows nothing; the default for library calls and tests."""

    def start(self, desc: str, total: int | None = None, unit: str = "it") -> None:
        """Ignore."""

    def advance(self, n: int = 1) -> None:
        """Ignore."""

    def set_total(self, total: int | None) -> None:
        """Ignore."""

    def close(self) -> None:
        """Ignore."""


class _Bar(tqdm):  # type: ignore[misc]
    """A tqdm bar without tqdm's monitor thread (it only tunes how often a stalled bar
    redraws): a process with a thread of its own could not fork its bucket workers
    (`pipeline.core.bucket_workers.worker_context`)."""

    monitor_interval = 0


class TqdmProgress:
    """tqdm bars on stderr; invisible when stderr is not a terminal (`disable=None`)."""

    def __init__(self, *, disable: bool | None = None):
        self._disable = disable
        self._bar: tqdm[None] | None = None

    def start(self, desc: str, total: int | None = None, unit: str = "it") -> None:
        """Open a bar on stderr."""
        self.close()
        self._bar = _Bar(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            disable=self._disable,
            unit_scale=True,
            dynamic_ncols=True,
        )

    def advance(self, n: int = 1) -> None:
        """Advance the open bar."""
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        """Change the open bar's total and redraw it."""
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        """Close the open bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
