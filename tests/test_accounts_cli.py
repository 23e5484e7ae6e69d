"""Many accounts in one config, through the CLI, against the real local server.

Two accounts with two sources each: every message reaches its own account's destination
exactly once, a re-run sends nothing, the summary counts per account and per source add
up, and a missing or wrong key stops with one line naming the account.
"""

from __future__ import annotations

import csv
import shlex
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.server import LocalServer, ServerConfig, start_server
from pipeline.server.faults import FaultConfig, ForcedAnswer
from pipeline.server.store import conversation_messages, message_counts

KEY_A = "sk-acme-0123456789abcdef"
KEY_B = "sk-beta-fedcba9876543210"
SOURCES = {"acme": ("acme-sales", "acme-support"), "beta": ("beta-eng", "beta-ops")}
SIZES = {"acme-sales": 12, "acme-support": 7, "beta-eng": 9, "beta-ops": 5}


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stderr
    return result


def write_source(path: Path, name: str, n: int, start: int = 0) -> None:
    """A CSV of `n` messages whose ids and contents name their source (unique everywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(
            fh, ["message_id", "conversation_id", "user_id", "role", "content", "timestamp"]
        )
        writer.writeheader()
        for i in range(start, start + n):
            writer.writerow(
                {
                    "message_id": f"{name}-{i:03d}",
                    "conversation_id": f"{name}-conv-{i % 3}",
                    "user_id": f"{name}-owner",
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"{name} says message {i}",
                    "timestamp": f"2025-04-01T10:{i:02d}:00Z",
                }
            )


def contents(name: str, n: int) -> Counter[str]:
    return Counter(f"{name} says message {i}" for i in range(n))


def held(db: Path) -> Counter[str]:
    """How many times a server's store holds each message content."""
    out: Counter[str] = Counter()
    if db.exists():
        for user, conv in message_counts(db):
            out.update(m["content"] for m in conversation_messages(db, user, conv))
    return out


def write_config(tmp_path: Path, accounts: dict[str, dict[str, Any]]) -> Path:
    for name, n in SIZES.items():
        write_source(tmp_path / "exports" / f"{name}.csv", name, n)
    sources = [
        {"kind": "csv", "name": name, "path": f"exports/{name}.csv", "account": account}
        for account, names in SOURCES.items()
        for name in names
    ]
    config = {
        "workdir": "w",
        "chunk": {"max_messages": 4},
        "accounts": accounts,
        "sources": sources,
    }
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_json(config: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = ok(cli("run", str(config), "--json", "--no-progress", *extra, env=env))
    out: dict[str, Any] = orjson.loads(result.stdout)
    return out


def assert_counts_add_up(out: dict[str, Any]) -> None:
    counted = ("staged", "quarantined", "sent", "delivered", "not_delivered")
    for name, account in out["accounts"].items():
        rows = [out["sources"][s] for s in account["sources"]]
        assert all(row["account"] == name for row in rows)
        for key in counted:
            assert account[key] == sum(row[key] for row in rows), (name, key)
    for key in counted:
        assert out["totals"][key] == sum(a[key] for a in out["accounts"].values()), key
    for row in out["sources"].values():
        assert row["staged"] == row["delivered"] + row["not_delivered"]


@contextmanager
def servers(
    tmp_path: Path, acme_faults: FaultConfig | None = None
) -> Iterator[tuple[LocalServer, LocalServer]]:
    """Two memos-compatible servers, one per account, each accepting only its own key."""
    acme = ServerConfig(
        db_path=tmp_path / "acme.sqlite", token=KEY_A, faults=acme_faults or FaultConfig()
    )
    with (
        start_server(acme) as a,
        start_server(ServerConfig(db_path=tmp_path / "beta.sqlite", token=KEY_B)) as b,
    ):
        yield a, b


def memos_accounts(a: LocalServer, b: LocalServer) -> dict[str, dict[str, Any]]:
    return {
        "acme": {"target": "memos", "base_url": a.url, "api_key_env": "ACME_MEMOS_KEY"},
        "beta": {
            "target": "memos",
            "base_url": b.url,
            "api_key_env": "BETA_MEMOS_KEY",
            "requests_per_second": 200,
        },
    }


# --- the local target --------------------------------------------------------------------


def test_two_accounts_into_the_local_target_exactly_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"acme": {"target": "local"}, "beta": {"target": "local"}})
    out = run_json(config)
    assert_counts_add_up(out)
    assert set(out["accounts"]) == {"acme", "beta"}
    for name, n in SIZES.items():
        assert out["sources"][name]["sent"] == n
        assert out["sources"][name]["delivered"] == n
    assert out["accounts"]["acme"]["sent"] == 19 and out["accounts"]["beta"]["sent"] == 14
    assert out["totals"] == {**out["totals"], "accounts": 2, "sources": 4, "sent": 33}
    for account, names in SOURCES.items():
        store = tmp_path / "w" / "accounts" / account / "local-memos.sqlite"
        assert held(store) == sum((contents(n, SIZES[n]) for n in names), Counter())
    assert not (tmp_path / "w" / "ledger.sqlite").exists()  # no ledger outside the accounts

    again = run_json(config)
    assert_counts_add_up(again)
    assert again["totals"]["sent"] == 0 and again["totals"]["delivered"] == 33
    assert all(a["load"]["requests"] == 0 for a in again["accounts"].values())


def test_text_summary_names_every_account_and_source(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"acme": {"target": "local"}, "beta": {"target": "local"}})
    text = ok(cli("run", str(config), "--no-progress")).stdout
    assert "account acme (local" in text and "account beta (local" in text
    assert "  source acme-sales: staged 12, sent 12, delivered 12" in text
    assert "  source beta-ops: staged 5, sent 5, delivered 5" in text
    assert "total: 2 accounts, 4 sources: staged 33, sent 33, delivered 33" in text


def test_a_grown_source_sends_only_its_new_messages(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"acme": {"target": "local"}, "beta": {"target": "local"}})
    run_json(config)
    write_source(tmp_path / "exports" / "beta-ops.csv", "beta-ops", 8)  # 3 new messages
    out = run_json(config)
    assert_counts_add_up(out)
    assert {name: row["sent"] for name, row in out["sources"].items()} == {
        "acme-sales": 0,
        "acme-support": 0,
        "beta-eng": 0,
        "beta-ops": 3,
    }
    store = tmp_path / "w" / "accounts" / "beta" / "local-memos.sqlite"
    assert held(store) == contents("beta-eng", 9) + contents("beta-ops", 8)


def test_account_flag_runs_one_account_and_status_history_load_follow(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"acme": {"target": "local"}, "beta": {"target": "local"}})
    out = run_json(config, "--account", "beta")
    assert set(out["accounts"]) == {"beta"} and set(out["sources"]) == {"beta-eng", "beta-ops"}
    assert not (tmp_path / "w" / "accounts" / "acme").exists()
    status = orjson.loads(
        ok(cli("status", "--config", str(config), "--account", "beta", "--json")).stdout
    )
    assert [d["delivered_messages"] for d in status["destinations"]] == [14]
    acme = ok(cli("status", "--config", str(config), "--account", "acme"))
    assert "nothing was loaded" in acme.stdout
    history = orjson.loads(
        ok(cli("history", "--config", str(config), "--account", "beta", "--json")).stdout
    )
    assert [r["sent"] for r in history["runs"]] == [14]
    loaded = ok(cli("load", "--config", str(config), "--account", "beta", "--json"))
    assert orjson.loads(loaded.stdout)["sent"]["messages"] == 0
    for command in ("status", "history", "load"):
        refused = cli(command, "--config", str(config))
        assert refused.exit_code == 2
        assert "2 accounts (acme, beta): pass --account NAME" in refused.stderr
    unknown = cli("run", str(config), "--account", "gamma")
    assert unknown.exit_code == 2 and "unknown account 'gamma'" in unknown.stderr


def test_account_flag_on_a_config_without_accounts_is_refused(tmp_path: Path) -> None:
    write_source(tmp_path / "one.csv", "one", 3)
    config = tmp_path / "single.yaml"
    config.write_text("workdir: w\nsources:\n  - {kind: csv, path: one.csv}\n", encoding="utf-8")
    refused = cli("run", str(config), "--account", "acme")
    assert refused.exit_code == 2 and "no `accounts:` section" in refused.stderr
    assert not (tmp_path / "w").exists()


# --- memos-compatible servers with keys --------------------------------------------------


def test_two_accounts_into_memos_servers_each_with_its_own_key(tmp_path: Path) -> None:
    with servers(tmp_path) as (a, b):
        config = write_config(tmp_path, memos_accounts(a, b))
        env = {"ACME_MEMOS_KEY": KEY_A, "BETA_MEMOS_KEY": KEY_B, "MEMOS_API_KEY": ""}
        result = ok(cli("run", str(config), "--json", "--no-progress", env=env))
        out = orjson.loads(result.stdout)
        assert_counts_add_up(out)
        assert {n: r["sent"] for n, r in out["sources"].items()} == SIZES
        again = run_json(config, env=env)
        assert again["totals"]["sent"] == 0 and again["totals"]["delivered"] == 33
    assert held(tmp_path / "acme.sqlite") == contents("acme-sales", 12) + contents(
        "acme-support", 7
    )
    assert held(tmp_path / "beta.sqlite") == contents("beta-eng", 9) + contents("beta-ops", 5)
    for account in SOURCES:
        ledger = (tmp_path / "w" / "accounts" / account / "ledger.sqlite").read_bytes()
        assert KEY_A.encode() not in ledger and KEY_B.encode() not in ledger
    assert KEY_A not in result.output and KEY_B not in result.output
    assert KEY_A not in config.read_text() and KEY_B not in config.read_text()


def test_an_unfinished_account_does_not_stop_the_next_and_its_hint_resumes_it(
    tmp_path: Path,
) -> None:
    quota = ForcedAnswer(code=40304, path="/add/message", conversation_id="acme-sales-conv-1")
    env = {"ACME_MEMOS_KEY": KEY_A, "BETA_MEMOS_KEY": KEY_B}
    with servers(tmp_path, FaultConfig(forced=(quota,))) as (a, b):
        config = write_config(tmp_path, memos_accounts(a, b))
        first = cli("run", str(config), "--json", "--no-progress", env=env)
        assert first.exit_code == 4, first.output
        out = orjson.loads(first.stdout)
        assert_counts_add_up(out)
        assert out["accounts"]["beta"]["complete"] and out["accounts"]["beta"]["sent"] == 14
        assert not out["accounts"]["acme"]["complete"]
        assert out["accounts"]["acme"]["not_delivered"] > 0
        assert "--account acme" in first.stderr.strip().splitlines()[-1]
        status = ok(cli("status", "--config", str(config), "--account", "acme", env=env))
        hint = next(x for x in status.stdout.splitlines() if "resume with: " in x)
        command = shlex.split(hint.split("resume with: ", 1)[1])
        assert command[:2] == ["memos-etl", "load"] and "--account" in command
        a.clear_forced()
        ok(cli(*command[1:], env=env))
        again = run_json(config, env=env)
        assert again["totals"]["sent"] == 0 and again["totals"]["not_delivered"] == 0
    assert held(tmp_path / "acme.sqlite") == contents("acme-sales", 12) + contents(
        "acme-support", 7
    )
    assert held(tmp_path / "beta.sqlite") == contents("beta-eng", 9) + contents("beta-ops", 5)


def test_missing_key_variable_is_one_line_naming_the_account(tmp_path: Path) -> None:
    with servers(tmp_path) as (a, b):
        config = write_config(tmp_path, memos_accounts(a, b))
        result = cli("run", str(config), "--no-progress", env={"ACME_MEMOS_KEY": KEY_A})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: account 'beta': BETA_MEMOS_KEY is not set; export the account's API key "
        "in it (accounts.<name>.api_key_env names the variable)"
    )
    assert held(tmp_path / "beta.sqlite") == Counter()


def test_wrong_key_is_one_line_naming_the_account_and_nothing_is_sent(tmp_path: Path) -> None:
    with servers(tmp_path) as (a, b):
        config = write_config(tmp_path, memos_accounts(a, b))
        env = {"ACME_MEMOS_KEY": KEY_B, "BETA_MEMOS_KEY": KEY_B}
        result = cli("run", str(config), "--no-progress", env=env)
        assert result.exit_code == 6, result.output
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: account 'acme': ") and KEY_B not in result.stderr
        assert "check ACME_MEMOS_KEY" in last and "MEMOS_API_KEY" not in last
        assert held(tmp_path / "acme.sqlite") == Counter()
        one = cli("load", "--config", str(config), "--account", "acme", env=env)
        assert one.exit_code == 2 and "no batches" in one.stderr  # nothing was chunked


def test_check_and_reset_act_on_one_account(tmp_path: Path) -> None:
    env = {"ACME_MEMOS_KEY": KEY_A, "BETA_MEMOS_KEY": KEY_A}  # beta's variable holds a bad key
    with servers(tmp_path) as (a, b):
        config = write_config(tmp_path, memos_accounts(a, b))
        checked = ok(cli("check", "--config", str(config), "--account", "acme", env=env))
        assert checked.stdout.startswith(f"OK: memos {a.url}")
        bad = cli("check", "--config", str(config), "--account", "beta", env=env)
        assert bad.exit_code == 6 and bad.stderr.startswith("error: account 'beta': ")
        assert "BETA_MEMOS_KEY" in bad.stderr and KEY_A not in bad.stderr
        env["BETA_MEMOS_KEY"] = KEY_B
        run_json(config, env=env)
        reset = ["reset", "--config", str(config), "--account", "beta", "--yes", "--json"]
        assert orjson.loads(ok(cli(*reset, env=env)).stdout)["forgotten"] == 14
        out = run_json(config, env=env)
        assert {n: r["sent"] for n, r in out["sources"].items()} == {
            "acme-sales": 0,
            "acme-support": 0,
            "beta-eng": 9,
            "beta-ops": 5,
        }
    assert held(tmp_path / "acme.sqlite") == contents("acme-sales", 12) + contents(
        "acme-support", 7
    )
    beta = contents("beta-eng", 9) + contents("beta-ops", 5)
    assert held(tmp_path / "beta.sqlite") == beta + beta  # reset: sent everything again


# --- the config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": [{"kind": "csv", "path": "x.csv"}]}, "source 'csv' names no account"),
        (
            {"sources": [{"kind": "csv", "path": "x.csv", "account": "nope"}]},
            "source 'csv': unknown account 'nope' (accounts: acme)",
        ),
        ({"account": {"requests_per_second": 5}}, "each account's budget goes in its own entry"),
        ({"accounts": {"acme": {}, "beta": {}}}, "account 'beta' has no sources"),
        ({"accounts": {"../x": {}}}, "an account name is 1-64 letters"),
        ({"accounts": {"acme": {"api_key_env": "sk-secret-123"}}}, "never the key itself"),
        ({"accounts": {"acme": {"max_tokens_per_call": 1000}}}, "over the account's"),
    ],
)
def test_bad_account_configs_are_one_line_errors(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    write_source(tmp_path / "x.csv", "x", 2)
    config: dict[str, Any] = {
        "workdir": "w",
        "chunk": {"max_tokens": 2000},
        "accounts": {"acme": {}},
        "sources": [{"kind": "csv", "path": "x.csv", "account": "acme"}],
        **change,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = cli("run", str(path), "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "sk-secret-123" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_a_source_naming_an_account_needs_the_accounts_section(tmp_path: Path) -> None:
    write_source(tmp_path / "x.csv", "x", 2)
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - {kind: csv, path: x.csv, account: acme}\n", encoding="utf-8")
    result = cli("run", str(path))
    assert result.exit_code == 2 and "no `accounts:` section" in result.stderr
