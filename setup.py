"""Build step: compiles the Slack connector's per-message code with mypyc.

mypyc (part of mypy) turns these type-checked modules into C extensions: the same
source, run about a fifth faster on the Slack benchmark. Without a C compiler, or when
MEMOS_ETL_PURE_PYTHON is set, the package installs as plain Python and works the same.
Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

COMPILED = ["connectors/slack_worker.py", "connectors/slack_text.py"]
"""Modules compiled by mypyc: they hold the per-message loop of Slack extraction."""


def compiled_extensions() -> list[Extension]:
    """The mypyc extensions, optional so that a failed C build falls back to Python."""
    if os.environ.get("MEMOS_ETL_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify

        extensions = mypycify(COMPILED, opt_level="3", group_name="connectors.slack_native")
    except (Exception, SystemExit) as exc:  # mypyc reports type errors with SystemExit
        print(f"memos-etl: not compiling {', '.join(COMPILED)} ({exc})", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True
    return extensions


setup(ext_modules=compiled_extensions())
