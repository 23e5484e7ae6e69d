"""The connector contract and the registry that picks a connector by name.

A connector module defines an `Options` model (a `ConnectorOptions` subclass: its fields
are the keys allowed under a source's `options:` in the config) and a function
`read(path, options) -> Iterator[Event]` that yields one event per input record:
`Message` (staged), `Skipped` (deliberately left out, with a reason), or `Quarantined`
(unreadable, with file, position and reason). Raising `InputError` is for inputs that
cannot be read at all.

Connectors write nothing into the workdir, with one exception: a module that sets
`WRITES_PARTS = True` is called as `read(path, options, parts_dir=...)` and may write
finished Parquet parts (`pipeline.core.staging.part_path`) into that folder from its worker
processes, announcing each with a `StagedPart` event; rows then never cross a process
boundary. Called without `parts_dir`, it yields `MessageTable` events instead. Private
temporary files (e.g. a helper process's spool) are allowed and removed before `read`
returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from string import Formatter
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

from pipeline.core.errors import ConfigError
from pipeline.core.models import Event


class ConnectorOptions(BaseModel):
    """Options every connector accepts; subclasses add their own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str | None = None
    """Memory owner for every message, unless the connector takes it from the data."""


def known_time_zone(value: str) -> str:
    """`value` if it names a time zone (IANA, or UTC); for connectors' `timezone` option
    validators, which report the `ValueError` as a one-line config error."""
    if value != "UTC":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
    return value


def user_id_template(value: str, fields: tuple[str, ...]) -> str:
    """`value` if it is a `str.format` template using only (and at least one of) `fields`;
    for connectors' `user_id_template` option validators."""
    try:
        used = {f for _, f, _, _ in Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    if not used or used - set(fields):
        names = ", ".join("{" + f + "}" for f in fields[:-1]) + " and {" + fields[-1] + "}"
        raise ValueError(f"template must use only {names} (got {value!r})")
    return value


ReadFn = Callable[..., Iterator[Event]]
"""`read(path, options)`, plus `parts_dir=` for connectors that write parts."""


@dataclass(frozen=True)
class Connector:
    """A registered source kind: its name, options model and reader."""

    name: str
    options_model: type[ConnectorOptions]
    read: ReadFn
    writes_parts: bool = False


_REGISTRY: dict[str, str] = {
    "csv": "connectors.csv_export",
    "slack": "connectors.slack.read",
    "chatgpt": "connectors.chatgpt.connector",
    "claude": "connectors.claude",
    "telegram": "connectors.telegram",
    "discord": "connectors.discord",
    "whatsapp": "connectors.whatsapp.read",
}


def known_sources() -> list[str]:
    """Names accepted by `--source`."""
    return sorted(_REGISTRY)


def module_name(name: str) -> str:
    """The module of a registered source kind (for `connectors.detect`)."""
    found = _REGISTRY.get(name)
    if found is None:
        raise ConfigError(f"unknown source {name!r}; choose one of: {', '.join(known_sources())}")
    return found


def get_connector(name: str) -> Connector:
    """Look up a connector by source name; unknown names are a `ConfigError`."""
    module_name = _REGISTRY.get(name)
    if module_name is None:
        raise ConfigError(f"unknown source {name!r}; choose one of: {', '.join(known_sources())}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"source {name!r} is not available in this build") from exc
    return Connector(
        name=name,
        options_model=module.Options,
        read=module.read,
        writes_parts=bool(getattr(module, "WRITES_PARTS", False)),
    )
