"""Build step: compiles the Slack connector's per-message code with mypyc.

mypyc (part of mypy) turns these type-checked modules into C extensions: the same
source, with less interpreter work per message. Without a C compiler, or with
MEMOS_ETL_PURE_PYTHON set, the package installs as plain Python and works the same.
Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

COMPILED = ["connectors/slack/normalize.py", "connectors/slack/text.py"]
"""Modules compiled by mypyc: the per-message work of Slack extraction."""

BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}
"""setup.py commands that build extensions (the metadata steps skip mypyc's type check)."""


def compiled_extensions() -> list[Extension]:
    """The mypyc extensions, optional so that a failed C build falls back to Python."""
    if os.environ.get("MEMOS_ETL_PURE_PYTHON") or not BUILD_COMMANDS & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify

        extensions = mypycify(COMPILED, opt_level="3", group_name="connectors.slack.native")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (any failure: install as Python)
        sys.stderr.write(f"memos-etl: not compiling {', '.join(COMPILED)} ({exc!r})\n")
        return []
    for extension in extensions:
        extension.optional = True
    return extensions


setup(ext_modules=compiled_extensions())
