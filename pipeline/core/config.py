"""Pipeline configuration: one YAML file per pipeline, validated into a frozen `Config`.

Precedence is flag > environment > file > default. Relative paths in a config file are
resolved against the file's own folder, so a scheduled run works from any directory.
Secrets never live here: the API key comes only from `MEMOS_API_KEY`, or, in a
multi-account config (`accounts:`), from the environment variable each account names
(`api_key_env`): the config holds the variable's name, never the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core import memos_api, redact
from pipeline.core.errors import ConfigError
from pipeline.core.workdir import account_workdir

DEFAULT_WORKDIR = Path(".memos-etl")
API_KEY_ENV = "MEMOS_API_KEY"
BASE_URL_ENV = "MEMOS_BASE_URL"
CLOUD_BASE_URL = "https://memos.memtensor.cn/api/openmem/v1"
GROUP_OWNER = "group"
"""The connector option value (`memory_owner: group`) that turns on group-chat mode."""


SOURCE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A source name: it becomes a folder name under `<workdir>/staging/`, so it is an
identifier, never a path (no `/`, no `..`, no leading dot, which marks temp folders)."""
SOURCE_NAME_RULE = (
    "a source name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)


def check_source_name(name: str) -> str:
    """`name` if it is a valid source name, else `ValueError` saying the rule.

    A name is joined to `<workdir>/staging/` and that folder is replaced and deleted on
    every extract, so anything path-like (`..`, `/x`, `a/b`) must never get through.
    """
    if not SOURCE_NAME_RE.fullmatch(name):
        raise ValueError(f"not a valid source name: {SOURCE_NAME_RULE}")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """One input export: which connector reads it, where it is, and the connector's options."""

    kind: str
    path: Path
    name: str | None = None
    """Label of this source in the staging folder and reports; defaults to `kind`."""
    user_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    account: str | None = None
    """In a multi-account config: the name of the account (under `accounts:`) it loads into."""

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, name: str | None) -> str | None:
        return None if name is None else check_source_name(name)

    @property
    def label(self) -> str:
        """The source's unique name inside one pipeline."""
        return self.name or self.kind


class ExtractConfig(_Section):
    """How much bad input an extract tolerates."""

    max_quarantined_share: float = Field(default=0.8, ge=0, le=1)
    """An extract fails (exit 3) when more than this share of the records read is
    quarantined: that many unreadable records mean the wrong kind or encoding far more
    often than a few damaged rows. 1 turns the check off."""


DEFAULT_BATCH_TOKENS = 4000
"""Default batch size in tokens, when the account allows it (smaller on older plans)."""


class AccountConfig(_Section):
    """The MemOS account's budget, shared by every project and API key of the account.

    Defaults are MemOS Cloud's newest documented limits; older plans were documented at
    `max_tokens_per_call` 4,000 / 8,000 / 20,000 and `requests_per_second` 10. Several
    pipelines loading into one account at once share it: give each its part.
    """

    requests_per_second: float = Field(default=memos_api.REQUESTS_PER_SECOND, gt=0, le=1000)
    """Request ceiling per second (a group-chat request naming N users counts N)."""
    tokens_per_minute: int | None = Field(default=memos_api.TOKENS_PER_MINUTE, ge=1000)
    """Input tokens per minute (beyond it: code 40309); null when the plan has no such limit."""
    max_tokens_per_call: int = Field(default=memos_api.MAX_CALL_TOKENS, ge=64)
    """Input tokens one add/message call may carry (beyond it: 40305 / 40013)."""


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
"""An environment variable's name: what `api_key_env` holds (never a key itself)."""


class NamedAccountConfig(AccountConfig):
    """One account of a multi-account config (`accounts: {NAME: ...}`): where its sources
    load, which environment variable holds its key, and its budget (shared by its sources).

    `target`, `base_url` and `allow_insecure_http` default to the config's `load:` section.
    """

    target: Literal["local", "memos", "memos-server"] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable holding this account's API key (for a `local`
    target with a `base_url`: the serve token); default `MEMOS_API_KEY`."""
    allow_insecure_http: bool | None = None

    @field_validator("api_key_env")
    @classmethod
    def _names_a_variable(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME_RE.fullmatch(name):
            # never echo the value: it may be a key pasted where its variable's name belongs
            raise ValueError(
                "must be the name of an environment variable (letters, digits, '_'), "
                "never the key itself"
            )
        return name

    def budget(self) -> AccountConfig:
        """The account's budget alone (the `account:` section of its pipeline)."""
        return AccountConfig(
            requests_per_second=self.requests_per_second,
            tokens_per_minute=self.tokens_per_minute,
            max_tokens_per_call=self.max_tokens_per_call,
        )


class ChunkConfig(_Section):
    """Batch limits per addMessage request."""

    max_tokens: int = Field(default=DEFAULT_BATCH_TOKENS, ge=64, le=memos_api.MAX_CALL_TOKENS)
    """Default: 4000, or the account's `max_tokens_per_call` when that is smaller."""
    max_messages: int = Field(default=50, ge=1, le=1000)


class LoadConfig(_Section):
    """Where and how fast batches are delivered."""

    target: Literal["local", "memos", "memos-server"] = "local"
    """local: the embedded server; memos: MemOS Cloud (`/add/message`); memos-server: a
    self-hosted MemOS server (`/product/add`, see docs/memos-targets.md)."""
    base_url: str | None = None
    rate: float | None = Field(default=None, gt=0, le=1000)
    """Request ceiling per second; default the account's `requests_per_second` (the
    embedded local target: no client-side limit)."""
    max_in_flight: int | None = Field(default=None, ge=1, le=512)
    """Concurrent requests; default: sized from rate x observed latency (4..256)."""
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    max_retry_after: float = Field(default=300.0, gt=0)
    """Longest wait a server's Retry-After can impose, in seconds (longer values are cut)."""
    allow_insecure_http: bool = False
    """Allow sending a key over plain http to a host other than loopback (see targets)."""
    resend_changed: bool = False
    async_mode: bool = False
    agent_id: str | None = None
    app_id: str | None = None
    local_db: Path | None = None
    """SQLite file of the embedded local target; default `<workdir>/local-memos.sqlite`."""
    cube: list[str] = Field(default_factory=list)
    """memos-server: the MemCube ids to write into (`writable_cube_ids`); default: the
    batch owner's own cube."""
    server_mode: Literal["fast", "fine"] | None = None
    """memos-server with `async_mode: false`: the server's extraction mode (`mode`)."""
    auth_scheme: Literal["Token", "Bearer"] = "Token"
    """Scheme of the `Authorization` header sent with `MEMOS_API_KEY` (memos-server: only
    when the key is set; the stock server has no auth)."""

    @field_validator("cube", mode="before")
    @classmethod
    def _one_or_more_cubes(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def server(self) -> bool:
        """True for the self-hosted MemOS server's contract (`/product/add`)."""
        return self.target == "memos-server"

    @property
    def add_path(self) -> str:
        """The add endpoint of this target."""
        return memos_api.SERVER_ADD_PATH if self.server else memos_api.CLOUD_ADD_PATH

    def request_body(self, batch_body: Mapping[str, Any], owner: str = "") -> dict[str, Any]:
        """The exact body for a batch under these load settings: `add/message`, or
        `/product/add` for memos-server (where `owner` is the batch's `user_id`)."""
        if self.server:
            return memos_api.server_request_body(
                batch_body,
                owner=owner or str(batch_body["user_id"]),
                cube_ids=self.cube,
                async_mode="async" if self.async_mode else "sync",
                mode=self.server_mode,
            )
        return memos_api.request_body(
            batch_body, async_mode=self.async_mode, agent_id=self.agent_id, app_id=self.app_id
        )


class CustomRedaction(_Section):
    """A named regex (RE2 syntax) to redact, e.g. internal ticket or customer ids."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    pattern: str
    action: redact.Action = "mask"

    @model_validator(mode="after")
    def _valid(self) -> CustomRedaction:
        if self.name in redact.BUILTIN_KINDS or self.name in redact.GROUPS:
            raise ValueError(
                f"{self.name!r} is a built-in kind; give the custom regex another name"
            )
        problem = redact.check_pattern(self.pattern)
        if problem:
            raise ValueError(f"pattern of {self.name!r} is not usable: {problem}")
        return self


class RedactConfig(_Section):
    """What is sent in place of credentials and personal data (see docs/redaction.md).

    One key per kind, each `keep`, `mask` or `drop-message`: every secret kind is masked
    and personal data kept unless set otherwise. `custom` adds named regexes.
    """

    private_key: redact.Action = "mask"
    password: redact.Action = "mask"
    bearer_token: redact.Action = "mask"
    jwt: redact.Action = "mask"
    aws_access_key: redact.Action = "mask"
    github_token: redact.Action = "mask"
    slack_token: redact.Action = "mask"
    api_key: redact.Action = "mask"
    google_api_key: redact.Action = "mask"
    email: redact.Action = "keep"
    phone: redact.Action = "keep"
    custom: list[CustomRedaction] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_custom_names(self) -> RedactConfig:
        names = [c.name for c in self.custom]
        if len(names) != len(set(names)):
            raise ValueError("two custom redaction regexes share a name")
        return self

    def policy(self) -> redact.Policy:
        """The `pipeline.core.redact.Policy` this section describes."""
        actions: dict[str, redact.Action] = {
            kind: getattr(self, kind) for kind in redact.BUILTIN_KINDS
        }
        return redact.Policy.build(actions, [(c.name, c.pattern, c.action) for c in self.custom])


class Config(_Section):
    """A whole pipeline: sources, chunking and loading settings."""

    workdir: Path = DEFAULT_WORKDIR
    user_id: str | None = None
    sources: list[SourceConfig] = Field(default_factory=list)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    account: AccountConfig = Field(default_factory=AccountConfig)
    accounts: dict[str, NamedAccountConfig] = Field(default_factory=dict)
    """Several MemOS accounts in one config (see docs/accounts.md): each source names one
    (`account: NAME`); `for_account` gives each account's own pipeline."""
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    load: LoadConfig = Field(default_factory=LoadConfig)
    redact: RedactConfig = Field(default_factory=RedactConfig)

    def tags_by_source(self) -> dict[str, list[str]]:
        """The MemOS `tags` of each source that has some, by source name (label)."""
        return {s.label: list(s.tags) for s in self.sources if s.tags}

    def group_sources(self) -> frozenset[str]:
        """Names (labels) of the sources read in group-chat mode (`memory_owner: group`):
        the chunker sends their conversations' participants as the `user_id` list."""
        return frozenset(
            s.label for s in self.sources if s.options.get("memory_owner") == GROUP_OWNER
        )

    @model_validator(mode="before")
    @classmethod
    def _chunk_default_from_account(cls, raw: Any) -> Any:
        """An unset `chunk.max_tokens` defaults to what the account allows (at most 4000)."""
        if not isinstance(raw, dict):
            return raw
        account, chunk = raw.get("account"), raw.get("chunk")
        per_call = account.get("max_tokens_per_call") if isinstance(account, dict) else None
        if not isinstance(per_call, int) or isinstance(per_call, bool):
            return raw
        if chunk is None:
            chunk = {}
        if isinstance(chunk, dict) and "max_tokens" not in chunk:
            return {**raw, "chunk": {**chunk, "max_tokens": min(DEFAULT_BATCH_TOKENS, per_call)}}
        return raw

    @model_validator(mode="after")
    def _batches_fit_the_account(self) -> Config:
        if self.chunk.max_tokens > self.account.max_tokens_per_call:
            raise ValueError(
                f"chunk.max_tokens {self.chunk.max_tokens} is over the account's "
                f"max_tokens_per_call {self.account.max_tokens_per_call}"
            )
        return self

    @model_validator(mode="after")
    def _unique_source_names(self) -> Config:
        seen: set[str] = set()
        for source in self.sources:
            # casefold: on macOS and Windows `Slack` and `slack` are one staging folder
            if source.label.casefold() in seen:
                raise ValueError(f"two sources are named {source.label!r}; give each a `name`")
            seen.add(source.label.casefold())
        return self

    @field_validator("accounts")
    @classmethod
    def _account_names_are_identifiers(
        cls, accounts: dict[str, NamedAccountConfig]
    ) -> dict[str, NamedAccountConfig]:
        for name in accounts:
            check_account_name(name)
        return accounts

    @model_validator(mode="after")
    def _sources_name_known_accounts(self) -> Config:
        names = ", ".join(self.accounts)
        for source in self.sources:
            if not self.accounts and source.account is not None:
                raise ValueError(
                    f"source {source.label!r} names account {source.account!r} but the "
                    "config has no `accounts:` section"
                )
            if self.accounts and source.account is None:
                raise ValueError(
                    f"source {source.label!r} names no account: with `accounts:`, give each "
                    f"source `account: NAME` (one of {names})"
                )
            if self.accounts and source.account not in self.accounts:
                raise ValueError(
                    f"source {source.label!r}: unknown account {source.account!r} "
                    f"(accounts: {names})"
                )
        if self.accounts:
            if "account" in self.model_fields_set:
                raise ValueError(
                    "with `accounts:`, each account's budget goes in its own entry, "
                    "not in `account:`"
                )
            used = {s.account for s in self.sources}
            for account in self.accounts:
                if account not in used:
                    raise ValueError(f"account {account!r} has no sources")
        return self

    def for_account(self, name: str, load_overrides: Mapping[str, Any] | None = None) -> Config:
        """Account `name`'s own single-account pipeline: its sources only, its budget as
        `account:`, its target, and the workdir `<workdir>/accounts/<name>/`.

        `load_overrides` (flags, in the `load:` section's shape) beat the account's
        settings, as flags beat the file everywhere.
        """
        if not self.accounts:
            raise ConfigError(
                f"--account {name}: the config lists no accounts (no `accounts:` section)"
            )
        if name not in self.accounts:
            raise ConfigError(
                f"unknown account {name!r}: the config lists {', '.join(self.accounts)}"
            )
        entry = self.accounts[name]
        raw = self.model_dump(exclude_unset=True, exclude={"accounts", "account", "sources"})
        raw["workdir"] = account_workdir(self.workdir, name)
        raw["sources"] = [
            s.model_dump(exclude_unset=True, exclude={"account"})
            for s in self.sources
            if s.account == name
        ]
        raw["account"] = entry.budget().model_dump()
        load = dict(raw.get("load", {}))
        for key in ("target", "base_url", "allow_insecure_http"):
            if getattr(entry, key) is not None:
                load[key] = getattr(entry, key)
        raw["load"] = {**load, **_drop_none(load_overrides or {})}
        try:
            return Config.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, f"account {name!r}")) from None


def check_account_name(name: str) -> str:
    """`name` if it can name an account: like a source name, it becomes a folder
    (`<workdir>/accounts/<name>/`), so it is an identifier, never a path."""
    if not SOURCE_NAME_RE.fullmatch(name):
        raise ValueError(
            f"account {name!r}: an account name is 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def budget(
    load: LoadConfig, account: AccountConfig | None, *, embedded: bool = False
) -> tuple[float | None, int | None]:
    """(requests per second, input tokens per minute) a load keeps to; None is unlimited.

    `load.rate` overrides the account's request ceiling. The embedded local server has no
    limit to respect, so it gets none unless `load.rate` asks for one; so does a load
    without an account (library callers that pass only a `LoadConfig`).
    """
    if embedded or account is None:
        return load.rate, None
    rate = load.rate if load.rate is not None else account.requests_per_second
    return rate, account.tokens_per_minute


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """One line naming the first bad key, what is wrong with it, and where it came from."""
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        text = f"unknown key {key!r}"
    elif first["type"] == "missing":
        text = f"missing required key {key!r}"
    else:
        value = first.get("input")
        secret = bool(first["loc"]) and first["loc"][-1] == "api_key_env"
        shown = (
            f" (got {value!r})" if isinstance(value, (str, int, float, bool)) and not secret else ""
        )
        text = f"key {key!r}: {first['msg']}{shown}"
    more = len(exc.errors()) - 1
    suffix = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {text}{suffix}"


PATH_OPTIONS = frozenset({"user_map"})
"""Connector options that name files: resolved like the source's own `path`."""


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    def resolve_source(source: dict[str, Any]) -> dict[str, Any]:
        out = {**source, "path": resolve(source.get("path"))}
        options = source.get("options")
        if isinstance(options, dict):
            out["options"] = {k: resolve(v) if k in PATH_OPTIONS else v for k, v in options.items()}
        return out

    out = dict(raw)
    if "workdir" in out:
        out["workdir"] = resolve(out["workdir"])
    if isinstance(out.get("sources"), list):
        out["sources"] = [resolve_source(s) if isinstance(s, dict) else s for s in out["sources"]]
    if isinstance(out.get("load"), dict) and "local_db" in out["load"]:
        out["load"] = {**out["load"], "local_db": resolve(out["load"]["local_db"])}
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into a dict with paths resolved against its folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{place}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not a list or text")
    return _resolve_paths(raw, path.resolve().parent)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build a `Config` from file, then `MEMOS_ETL_*` environment, then flag overrides.

    `overrides` uses the file's shape (e.g. `{"chunk": {"max_tokens": 8000}}`); `None`
    values are ignored so unset flags never mask the file.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = read_config_file(path) if path is not None else {}
    where = str(path) if path is not None else "settings"
    from_env: dict[str, Any] = {}
    if env.get("MEMOS_ETL_WORKDIR"):
        from_env["workdir"] = env["MEMOS_ETL_WORKDIR"]
    if env.get("MEMOS_ETL_USER_ID"):
        from_env["user_id"] = env["MEMOS_ETL_USER_ID"]
    raw = _deep_merge(raw, from_env)
    raw = _deep_merge(raw, _drop_none(overrides or {}))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, where)) from None


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
