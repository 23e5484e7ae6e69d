"""`run` over several accounts counts each source's deliveries one staging bucket at a
time: the whole delivered map of a destination is never read into memory, and the counts
of a second run after an export grew are those of the new messages only."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import incremental
from tests.test_accounts_cli import (
    SIZES,
    assert_counts_add_up,
    run_json,
    write_config,
    write_source,
)


def test_per_source_counts_never_read_every_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def whole_map(*_: object, **__: object) -> dict[str, str]:
        raise AssertionError("every delivery read into memory")

    monkeypatch.setattr(incremental, "delivered_message_hashes", whole_map)
    config = write_config(tmp_path, {"acme": {"target": "local"}, "beta": {"target": "local"}})
    first = run_json(config)
    assert_counts_add_up(first)
    assert {name: row["sent"] for name, row in first["sources"].items()} == SIZES
    write_source(tmp_path / "exports" / "acme-sales.csv", "acme-sales", SIZES["acme-sales"] + 5)
    again = run_json(config)
    assert_counts_add_up(again)
    assert {name: row["sent"] for name, row in again["sources"].items()} == {
        **dict.fromkeys(SIZES, 0),
        "acme-sales": 5,
    }
    assert again["sources"]["acme-sales"]["delivered"] == SIZES["acme-sales"] + 5
    assert again["totals"]["delivered"] == sum(SIZES.values()) + 5
