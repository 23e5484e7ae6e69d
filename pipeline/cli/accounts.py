"""`--account NAME`: the option, and choosing the account(s) of a config it names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.tenants import AccountPipeline

F = TypeVar("F", bound=Callable[..., Any])


def account_option(func: F) -> F:
    """`--account NAME`: act on one account of a multi-account config."""
    option = click.option(
        "--account",
        "account",
        metavar="NAME",
        help="Act on one account of the config's `accounts:` (its own workdir "
        "<workdir>/accounts/NAME/, key and budget); see docs/accounts.md.",
    )
    return option(func)


def select_account(
    cfg: Config, account: str | None, load_overrides: Mapping[str, Any] | None = None
) -> AccountPipeline:
    """The one pipeline a single-account command (load, status, history) acts on.

    A config without `accounts:` is itself that pipeline (`--account` is refused); a
    multi-account config needs `--account NAME`, unless it lists exactly one account.
    """
    from pipeline.tenants import DEFAULT_ACCOUNT, AccountPipeline, account_pipeline

    if not cfg.accounts:
        if account is not None:
            raise ConfigError(
                f"--account {account}: the config lists no accounts (no `accounts:` section)"
            )
        return AccountPipeline(DEFAULT_ACCOUNT, cfg)
    if account is None:
        if len(cfg.accounts) > 1:
            raise ConfigError(
                f"the config lists {len(cfg.accounts)} accounts ({', '.join(cfg.accounts)}): "
                "pass --account NAME"
            )
        account = next(iter(cfg.accounts))
    if account not in cfg.accounts:
        raise ConfigError(
            f"unknown account {account!r}: the config lists {', '.join(cfg.accounts)}"
        )
    return account_pipeline(cfg, account, load_overrides)
