"""With `MEMOS_ETL_COMPILE=1` the modules setup.py lists are installed compiled.

The test runs only in a build that asked for compiling (a CI job or a release check):
the everyday editable install is plain Python, so there is nothing to check there.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.environ.get("MEMOS_ETL_COMPILE") != "1",
    reason="compiling is opt-in: set MEMOS_ETL_COMPILE=1 and `pip install .` to test the build",
)


def compiled_modules() -> list[str]:
    """`COMPILED` of setup.py as module names, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            paths = [str(v) for v in ast.literal_eval(node.value)]
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


@pytest.mark.parametrize("module", compiled_modules())
def test_installed_module_is_compiled(module: str, tmp_path: Path) -> None:
    # Import from outside the checkout, so the installed package is what loads.
    found = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found.endswith(tuple(EXTENSION_SUFFIXES)), f"{module} is not compiled: {found}"
