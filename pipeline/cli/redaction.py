"""The redaction flags of `chunk`, `run` and `validate`: one-off changes to the `redact:`
section of the config (see docs/redaction.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from pipeline.core import redact
from pipeline.core.config import Config, RedactConfig, describe_validation_error
from pipeline.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def redact_options(func: F) -> F:
    """`--redact KIND=ACTION` and `--redact-pattern NAME=REGEX`, both repeatable."""
    func = click.option(
        "--redact-pattern",
        "redact_patterns",
        multiple=True,
        metavar="NAME=REGEX",
        help="Also mask matches of this named regex (RE2 syntax); repeatable.",
    )(func)
    return click.option(
        "--redact",
        "redact_actions",
        multiple=True,
        metavar="KIND=ACTION",
        help="Redaction for one kind (or `secrets`, `personal`, `all`): keep, mask or "
        "drop-message; overrides the config's `redact:` section; repeatable.",
    )(func)


def _split(value: str, flag: str, what: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest:
        raise click.UsageError(f"{flag} expects {what}, got {value!r}")
    return name.strip(), rest


def apply_redact_flags(cfg: Config, actions: Sequence[str], patterns: Sequence[str]) -> Config:
    """`cfg` with the `--redact` / `--redact-pattern` flags applied (later flags win)."""
    if not actions and not patterns:
        return cfg
    data = cfg.redact.model_dump()
    for value in patterns:
        name, pattern = _split(value, "--redact-pattern", "NAME=REGEX")
        data["custom"] = [c for c in data["custom"] if c["name"] != name]
        data["custom"].append({"name": name, "pattern": pattern, "action": "mask"})
    custom_names = {c["name"] for c in data["custom"]}
    for value in actions:
        kind, action = _split(value, "--redact", "KIND=ACTION")
        if action not in redact.ACTIONS:
            raise click.UsageError(
                f"--redact {value}: action must be one of {', '.join(redact.ACTIONS)}"
            )
        if kind in redact.GROUPS:
            data.update(dict.fromkeys(redact.GROUPS[kind], action))
            if kind == "all":
                for c in data["custom"]:
                    c["action"] = action
        elif kind in redact.BUILTIN_KINDS:
            data[kind] = action
        elif kind in custom_names:
            for c in data["custom"]:
                if c["name"] == kind:
                    c["action"] = action
        else:
            known = ", ".join([*redact.GROUPS, *redact.BUILTIN_KINDS, *sorted(custom_names)])
            raise click.UsageError(f"--redact {value}: unknown kind {kind!r} (kinds: {known})")
    try:
        section = RedactConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "redaction flags")) from None
    return cfg.model_copy(update={"redact": section})
