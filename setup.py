"""Build step: optionally compiles the Slack connector's per-message code with mypyc.

Compiling is opt-in: set `MEMOS_ETL_COMPILE=1` when building a wheel or running a regular
(non-editable) `pip install .`. mypyc (part of mypy) turns the modules in `COMPILED` into
C extensions: the same source, with less interpreter work per message. Without the
variable the package is plain Python. An editable install is never compiled, so the code
you edit is always the code that runs. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

COMPILED = ["connectors/slack/normalize.py", "connectors/slack/text.py"]
"""Modules compiled by mypyc: the per-message work of Slack extraction."""

COMPILE_ENV = "MEMOS_ETL_COMPILE"
"""Set to 1 to compile `COMPILED` (needs a C compiler)."""

BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install"}
"""setup.py commands that build extensions (the metadata steps skip mypyc's type check)."""

EDITABLE_COMMANDS = {"editable_wheel", "develop"}


def compiled_extensions() -> list[Extension]:
    """The mypyc extensions when compiling was asked for; a failed compile is an error."""
    if os.environ.get(COMPILE_ENV) != "1":
        return []
    commands = set(sys.argv[1:])
    if EDITABLE_COMMANDS & commands:
        sys.exit(
            f"memos-etl: {COMPILE_ENV}=1 is for `pip install .` or wheel builds; an editable "
            "install runs the source you edit, so it is never compiled (unset the variable)"
        )
    if not BUILD_COMMANDS & commands:
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3", group_name="connectors.slack.native"))


setup(ext_modules=compiled_extensions())
