"""The modules setup.py compiles are compiled, and current, wherever a C compiler is."""

from __future__ import annotations

import ast
import os
import shutil
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compiled_sources() -> list[str]:
    """`COMPILED` of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED list")


def has_c_compiler() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    return bool(compiler) and shutil.which(compiler[0]) is not None


@pytest.mark.parametrize("source", compiled_sources())
def test_compiled_module_is_built_from_its_current_source(source: str) -> None:
    if os.environ.get("MEMOS_ETL_PURE_PYTHON"):
        pytest.skip("MEMOS_ETL_PURE_PYTHON is set: the package runs as plain Python")
    if not has_c_compiler():
        pytest.skip("no C compiler: the package installed as plain Python")
    stem = (ROOT / source).with_suffix("")
    extensions = [built for s in EXTENSION_SUFFIXES if (built := Path(f"{stem}{s}")).exists()]
    reinstall = "reinstall (pip install -e .) or set MEMOS_ETL_PURE_PYTHON=1"
    assert extensions, f"{source} is not compiled: {reinstall}"
    # `import` picks the extension over the .py; with mypyc it is a small shim that loads
    # the compiled code from a shared `*__mypyc*` library, rebuilt whenever code changes.
    built = [extensions[0], *stem.parent.glob("*__mypyc*")]
    assert max(b.stat().st_mtime for b in built) >= (ROOT / source).stat().st_mtime, (
        f"{source} changed after it was compiled, so its old version runs: {reinstall}"
    )
