"""The C heap's arena cap reaches the processes a stage starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_malloc_arenas_are_capped_for_this_process_and_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cap reaches the processes a stage starts (they read it from the environment)."""
    from pipeline.core import process_memory

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    process_memory.limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == str(process_memory.MALLOC_ARENAS)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('MALLOC_ARENA_MAX'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == str(process_memory.MALLOC_ARENAS)


def test_a_users_malloc_arena_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core import process_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    process_memory.limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
