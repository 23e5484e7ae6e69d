"""Exactly once in every flow a user runs, through the CLI, against the real local server.

Each test drives `memos-etl` the way the README and the docs show (extract, chunk, load,
run, status, in the orders people use them) and then asks the server what it holds: every
message exactly once, and the documented exit code.
"""

from __future__ import annotations

import csv
import os
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.core.lock import workdir_lock
from pipeline.core.workdir import ledger_path
from pipeline.server import LocalServer, ServerConfig, start_server
from pipeline.server.faults import FaultConfig, ForcedAnswer
from pipeline.server.store import conversation_messages, message_counts

KEY = "sk-flows-0123456789abcdef"
CLI = [sys.executable, "-c", "from pipeline.cli import main; main()"]


def rows(n: int, start: int = 0, conversations: int = 4) -> list[dict[str, str]]:
    """`n` chat rows with explicit message ids, spread over a few conversations."""
    return [
        {
            "message_id": f"m{i:04d}",
            "conversation_id": f"conv-{i % conversations}",
            "user_id": "alice",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message number {i} " + "words " * (i % 7),
            "timestamp": f"2025-03-{1 + i // 100:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
        }
        for i in range(start, start + n)
    ]


def write_csv(path: Path, data: Sequence[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


@contextmanager
def server(tmp_path: Path, name: str = "server", **config: Any) -> Iterator[LocalServer]:
    with start_server(ServerConfig(db_path=tmp_path / f"{name}.sqlite", **config)) as srv:
        yield srv


def memos_env(srv: LocalServer, key: str = KEY) -> dict[str, str]:
    """The environment of a `--target memos` load into the local server."""
    return {"MEMOS_BASE_URL": srv.url, "MEMOS_API_KEY": key}


def held(db: Path) -> Counter[str]:
    """How many times the server holds each message content."""
    out: Counter[str] = Counter()
    if not db.exists():
        return out
    for user, conv in message_counts(db):
        out.update(m["content"] for m in conversation_messages(db, user, conv))
    return out


def assert_exactly_once(db: Path, data: Sequence[dict[str, str]]) -> None:
    got = held(db)
    want = Counter(r["content"] for r in data)
    assert got == want, f"missing {want - got}, duplicated {got - want}"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stderr
    return result


def extract(workdir: Path, path: Path, *extra: str) -> Result:
    return cli("extract", "--source", "csv", str(path), "--workdir", str(workdir), *extra)


# --- destinations -------------------------------------------------------------------------


def test_local_first_then_memos_sends_everything_to_memos(tmp_path: Path) -> None:
    """The README flow: load into the local store, then into MemOS from the same workdir."""
    data = rows(40)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w), "--max-messages", "5"))
    ok(cli("load", "--workdir", str(w), "--target", "local"))
    assert_exactly_once(w / "local-memos.sqlite", data)
    with server(tmp_path, token=KEY) as srv:
        result = ok(
            cli("load", "--workdir", str(w), "--target", "memos", "--json", env=memos_env(srv))
        )
        out = orjson.loads(result.stdout)
        assert out["sent"]["messages"] == 40 and out["already_delivered"]["messages"] == 0
        again = ok(
            cli("load", "--workdir", str(w), "--target", "memos", "--json", env=memos_env(srv))
        )
        assert orjson.loads(again.stdout)["sent"]["messages"] == 0
    assert_exactly_once(tmp_path / "server.sqlite", data)
    assert_exactly_once(w / "local-memos.sqlite", data)  # the local store was not touched again
    status = ok(cli("status", "--workdir", str(w), "--json"))
    dests = orjson.loads(status.stdout)["destinations"]
    assert sorted(d["kind"] for d in dests) == ["local", "memos"]
    assert all(d["delivered_messages"] == 40 for d in dests)
    assert KEY not in status.stdout and KEY not in (w / "ledger.sqlite").read_bytes().decode(
        "latin-1"
    )


def test_run_with_a_second_config_target_sends_everything(tmp_path: Path) -> None:
    data = rows(24)
    export = write_csv(tmp_path / "chats.csv", rows(16))
    w = tmp_path / "w"
    local = tmp_path / "local.yaml"
    local.write_text(f"workdir: {w}\nsources:\n  - kind: csv\n    path: {export}\n")
    ok(cli("run", str(local)))
    write_csv(export, data)  # the export grew: the batch file now holds only the new tail
    ok(cli("run", str(local)))
    with server(tmp_path, token=KEY) as srv:
        cloud = tmp_path / "cloud.yaml"
        cloud.write_text(local.read_text() + "load:\n  target: memos\n")
        result = ok(cli("run", str(cloud), "--json", env=memos_env(srv)))
        assert orjson.loads(result.stdout)["load"]["sent"]["messages"] == 24
    assert_exactly_once(tmp_path / "server.sqlite", data)
    assert_exactly_once(w / "local-memos.sqlite", data)


def test_load_refuses_a_batch_file_run_cut_for_another_destination(tmp_path: Path) -> None:
    """After `run` into the local store, the batch file holds only the new tail: loading
    it into MemOS would skip the rest, so `load` says to chunk first."""
    data = rows(20)
    export = write_csv(tmp_path / "chats.csv", rows(12))
    w = tmp_path / "w"
    config = tmp_path / "local.yaml"
    config.write_text(f"workdir: {w}\nsources:\n  - kind: csv\n    path: {export}\n")
    ok(cli("run", str(config)))
    write_csv(export, data)
    ok(cli("run", str(config)))
    with server(tmp_path, token=KEY) as srv:
        refused = cli("load", "--workdir", str(w), "--target", "memos", env=memos_env(srv))
        assert refused.exit_code == 3 and "memos-etl chunk" in refused.stderr
        ok(cli("chunk", "--workdir", str(w)))
        ok(cli("load", "--workdir", str(w), "--target", "memos", env=memos_env(srv)))
    assert_exactly_once(tmp_path / "server.sqlite", data)
    assert_exactly_once(w / "local-memos.sqlite", data)


# --- the batch file changes under a destination ------------------------------------------


def test_stepwise_grow_sends_only_the_new_messages(tmp_path: Path) -> None:
    """extract -> chunk -> load on an export, then again on a newer export of it."""
    first, newer = rows(30), rows(45)
    w = tmp_path / "w"
    with server(tmp_path) as srv:
        target = ("--target", "local", "--base-url", srv.url)
        ok(extract(w, write_csv(tmp_path / "v1.csv", first)))
        ok(cli("chunk", "--workdir", str(w)))
        ok(cli("load", "--workdir", str(w), *target))
        ok(extract(w, write_csv(tmp_path / "v2.csv", newer)))
        ok(cli("chunk", "--workdir", str(w)))
        result = ok(cli("load", "--workdir", str(w), *target, "--json"))
        out = orjson.loads(result.stdout)
        assert out["sent"]["messages"] == 15 and out["already_delivered"]["messages"] == 30
    assert_exactly_once(tmp_path / "server.sqlite", newer)


def test_rechunk_with_other_limits_resends_nothing(tmp_path: Path) -> None:
    data = rows(80)
    w = tmp_path / "w"
    with server(tmp_path) as srv:
        target = ("--target", "local", "--base-url", srv.url)
        ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
        ok(cli("chunk", "--workdir", str(w), "--max-messages", "50"))
        ok(cli("load", "--workdir", str(w), *target))
        ok(cli("chunk", "--workdir", str(w), "--max-messages", "3"))
        result = ok(cli("load", "--workdir", str(w), *target, "--json"))
        out = orjson.loads(result.stdout)
        assert out["sent"]["messages"] == 0 and out["already_delivered"]["messages"] == 80
        assert out["requests"] == 0  # (the preflight request is not the loader's)
    assert_exactly_once(tmp_path / "server.sqlite", data)


def test_rechunk_mid_way_sends_only_the_rest(tmp_path: Path) -> None:
    """Half delivered (quota), re-chunked with other limits, loaded again: the rest only."""
    data = rows(40, conversations=2)
    w = tmp_path / "w"
    quota = ForcedAnswer(code=40304, path="/add/message", conversation_id="conv-1")
    with server(tmp_path, faults=FaultConfig(forced=(quota,))) as srv:
        target = ("--target", "local", "--base-url", srv.url, "--max-in-flight", "1")
        ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
        ok(cli("chunk", "--workdir", str(w), "--max-messages", "4"))
        assert cli("load", "--workdir", str(w), *target).exit_code == 4
        srv.clear_forced()
        ok(cli("chunk", "--workdir", str(w), "--max-messages", "7"))
        ok(cli("load", "--workdir", str(w), *target))
    assert_exactly_once(tmp_path / "server.sqlite", data)


def test_two_overlapping_sources_deliver_each_message_once(tmp_path: Path) -> None:
    data = rows(20)
    export = write_csv(tmp_path / "chats.csv", data)
    w = tmp_path / "w"
    with server(tmp_path) as srv:
        ok(extract(w, export, "--name", "a"))
        ok(extract(w, export, "--name", "b"))
        chunked = ok(cli("chunk", "--workdir", str(w), "--json"))
        assert orjson.loads(chunked.stdout)["duplicates"] == 20
        ok(cli("load", "--workdir", str(w), "--target", "local", "--base-url", srv.url))
    assert_exactly_once(tmp_path / "server.sqlite", data)


def test_overlapping_sources_in_an_old_batch_file_are_sent_once(tmp_path: Path) -> None:
    """A batch file that carries a message twice (made before de-duplication) still
    delivers it once: the loader drops what an earlier batch carries."""
    from pipeline.core.batches import read_batches, write_batches

    data = rows(12)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w)))
    batches = list(read_batches(w))
    write_batches(w, batches + batches)
    with server(tmp_path) as srv:
        result = ok(cli("load", "--workdir", str(w), "--base-url", srv.url, "--json"))
        assert orjson.loads(result.stdout)["duplicates_skipped"] == 12
    assert_exactly_once(tmp_path / "server.sqlite", data)


# --- ledger integrity ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign", "garbage"])
def test_damaged_ledger_stops_with_exit_3_and_sends_nothing(tmp_path: Path, damage: str) -> None:
    data = rows(30)
    w = tmp_path / "w"
    with server(tmp_path) as srv:
        target = ("--target", "local", "--base-url", srv.url)
        ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
        ok(cli("chunk", "--workdir", str(w), "--max-messages", "2"))
        ok(cli("load", "--workdir", str(w), *target))
        path = ledger_path(w)
        size = path.stat().st_size
        if damage == "empty":
            path.write_bytes(b"")
        elif damage == "truncated":
            with path.open("r+b") as fh:
                fh.truncate(size // 2)
        elif damage == "foreign":
            path.unlink()
            import sqlite3

            conn = sqlite3.connect(path)
            conn.execute("create table notes (x text)")
            conn.commit()
            conn.close()
        else:
            path.write_bytes(b"not a database at all\n" * 100)
        result = cli("load", "--workdir", str(w), *target)
        assert result.exit_code == 3, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert str(path) in result.stderr
        assert cli("status", "--workdir", str(w)).exit_code == 3
    assert_exactly_once(tmp_path / "server.sqlite", data)


def test_version_1_ledger_keeps_its_deliveries_for_the_local_store(tmp_path: Path) -> None:
    """An old ledger (no destinations) is migrated: what it delivered to the workdir's
    local store is not sent there again, and a new destination still receives it all."""
    import sqlite3

    data = rows(16)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w)))
    ok(cli("load", "--workdir", str(w)))
    _downgrade_to_v1(ledger_path(w), sqlite3)
    result = ok(cli("load", "--workdir", str(w), "--json"))
    assert orjson.loads(result.stdout)["sent"]["messages"] == 0
    assert_exactly_once(w / "local-memos.sqlite", data)
    with server(tmp_path, token=KEY) as srv:
        ok(cli("load", "--workdir", str(w), "--target", "memos", env=memos_env(srv)))
    assert_exactly_once(tmp_path / "server.sqlite", data)


def _downgrade_to_v1(path: Path, sqlite3: Any) -> None:
    """Rewrite a ledger as the version-1 schema wrote it (one implicit destination)."""
    conn = sqlite3.connect(path)
    delivered = conn.execute(
        "select message_id, content_hash, batch_id, delivered_at from delivered_messages"
    ).fetchall()
    conn.close()
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "create table batches (batch_id text primary key, parent_id text, position integer,"
        " user_id text, conversation_id text, message_count integer, tokens integer,"
        " status text, uncertain integer, attempts integer, error_code integer,"
        " error_message text, task_id text, body text, completes text, created_at text,"
        " updated_at text, done_at text);"
        "create table delivered_messages (message_id text primary key, content_hash text,"
        " batch_id text, delivered_at text); pragma user_version=1;"
    )
    conn.executemany("insert into delivered_messages values (?, ?, ?, ?)", delivered)
    conn.commit()
    conn.close()


def test_reset_forgets_one_destination_only(tmp_path: Path) -> None:
    data = rows(10)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w)))
    with server(tmp_path) as srv:
        ok(cli("load", "--workdir", str(w), "--base-url", srv.url))
        ok(cli("load", "--workdir", str(w)))
        unknown = ok(
            cli("reset", "--workdir", str(w), "--target", "memos", "--json", env=memos_env(srv))
        )
        assert orjson.loads(unknown.stdout)["forgotten"] == 0
        refused = cli("reset", "--workdir", str(w), "--base-url", srv.url)
        assert refused.exit_code == 1  # asked, no answer: nothing forgotten
        result = ok(cli("reset", "--workdir", str(w), "--base-url", srv.url, "--yes", "--json"))
        assert orjson.loads(result.stdout)["forgotten"] == 10
        local = ok(cli("load", "--workdir", str(w), "--json"))
        assert orjson.loads(local.stdout)["sent"]["messages"] == 0
    history = ok(cli("history", "--workdir", str(w), "--json"))
    runs = orjson.loads(history.stdout)["runs"]
    assert [r["sent"] for r in runs] == [0, 10]  # newest first; the reset run is forgotten
    assert all(r["ended_at"] for r in runs) and runs[1]["requests"] >= 1


# --- locks --------------------------------------------------------------------------------


def test_every_writer_takes_the_lock(tmp_path: Path) -> None:
    w = tmp_path / "w"
    export = write_csv(tmp_path / "chats.csv", rows(6))
    ok(extract(w, export))
    ok(cli("chunk", "--workdir", str(w)))
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {w}\nsources:\n  - kind: csv\n    path: {export}\n")
    with workdir_lock(w):
        for args in (
            ["extract", "--source", "csv", str(export), "--workdir", str(w)],
            ["chunk", "--workdir", str(w)],
            ["load", "--workdir", str(w)],
            ["run", str(config)],
            ["validate", str(config)],
        ):
            result = cli(*args)
            assert result.exit_code == 5, (args, result.stderr)


def test_concurrent_extracts_leave_staging_whole(tmp_path: Path) -> None:
    """Two extracts of the same source started together: one wins (or they run one after
    the other), the other exits 5; staging is always one complete copy."""
    data = rows(3000)
    export = write_csv(tmp_path / "chats.csv", data)
    w = tmp_path / "w"
    args = [*CLI, "extract", "--source", "csv", str(export), "--workdir", str(w), "-q"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
    codes = sorted(code for _, code in results)
    assert set(codes) <= {0, 5} and 0 in codes, results
    assert all("another memos-etl run" in err for err, code in results if code == 5)
    from pipeline.core.staging import read_staging, staged_sources

    assert staged_sources(w) == ["csv"]
    assert read_staging(w, ["message_id"]).num_rows == 3000
    assert not [p for p in (w / "staging").iterdir() if p.name.startswith(".")]


# --- bad input ----------------------------------------------------------------------------


def test_wrong_kind_is_exit_3_with_a_hint(tmp_path: Path) -> None:
    from tests.conftest import SAMPLES

    w = tmp_path / "w"
    export = str(SAMPLES / "claude_export")
    result = cli("extract", "--source", "chatgpt", export, "--workdir", str(w), "--user-id", "u")
    assert result.exit_code == 3, result.stderr
    assert "nothing staged" in result.stderr and "--source claude" in result.stderr
    no_owner = cli("extract", "--source", "chatgpt", export, "--workdir", str(w))
    assert no_owner.exit_code == 2 and "try --source claude" in no_owner.stderr
    auto = cli("extract", "--source", "auto", str(SAMPLES / "claude_export"), "--workdir", str(w))
    assert auto.exit_code == 0, auto.stderr
    assert "detected a claude export" in auto.stderr
    assert (w / "staging" / "claude").is_dir()


def test_auto_detects_every_sample(tmp_path: Path) -> None:
    from connectors.detect import detect
    from tests.conftest import SAMPLES

    assert detect(SAMPLES / "support_chats.csv") == ["csv"]
    assert detect(SAMPLES / "slack_export") == ["slack"]
    assert detect(SAMPLES / "chatgpt_export") == ["chatgpt"]
    assert detect(SAMPLES / "chatgpt_export_2026") == ["chatgpt"]
    assert detect(SAMPLES / "claude_export") == ["claude"]
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    result = cli("extract", "--source", "auto", str(unknown), "--workdir", str(tmp_path / "w"))
    assert result.exit_code == 3 and "give --source" in result.stderr


def test_empty_export_is_exit_3(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("conversation_id,user_id,role,content,timestamp\n", encoding="utf-8")
    result = cli("extract", "--source", "csv", str(empty), "--workdir", str(tmp_path / "w"))
    assert result.exit_code == 3, result.stderr
    assert "nothing staged" in result.stderr


def test_non_utf8_csv_is_exit_3_and_encoding_reads_it(tmp_path: Path) -> None:
    data = [{**r, "content": f"Grüße aus Köln, ça va? ({i})"} for i, r in enumerate(rows(3))]
    path = tmp_path / "latin.csv"
    with path.open("w", encoding="cp1252", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    w = tmp_path / "w"
    result = extract(w, path)
    assert result.exit_code == 3, result.stderr
    assert result.stderr.startswith("error: ")
    assert "--encoding cp1252" in result.stderr  # the hint names the fix
    fixed = ok(extract(w, path, "--encoding", "cp1252", "--json"))
    assert orjson.loads(fixed.stdout)["staged"] == 3


def test_mostly_quarantined_export_fails_and_keeps_old_staging(tmp_path: Path) -> None:
    good = rows(5)
    w = tmp_path / "w"
    export = write_csv(tmp_path / "chats.csv", good)
    ok(extract(w, export))
    bad = [{**r, "timestamp": "not a time"} for r in rows(20)] + good[:1]
    write_csv(export, bad)
    result = extract(w, export)
    assert result.exit_code == 3 and "max_quarantined_share" in result.stderr
    from pipeline.core.staging import read_staging

    assert read_staging(w, ["message_id"]).num_rows == 5


# --- preflight ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_destination_fails_at_once_with_exit_3(tmp_path: Path) -> None:
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", rows(8))))
    ok(cli("chunk", "--workdir", str(w)))
    url = f"http://127.0.0.1:{_closed_port()}"
    result = cli(
        "load",
        "--workdir",
        str(w),
        "--target",
        "memos",
        env={"MEMOS_BASE_URL": url, "MEMOS_API_KEY": KEY},
    )
    assert result.exit_code == 3, result.stderr
    assert "cannot reach" in result.stderr and KEY not in result.stderr
    status = orjson.loads(ok(cli("status", "--workdir", str(w), "--json")).stdout)
    assert all(d["batches"]["failed"]["batches"] == 0 for d in status["destinations"])
    check = cli("check", "--workdir", str(w), "--base-url", url)
    assert check.exit_code == 3


def test_wrong_key_is_exit_6_before_any_batch(tmp_path: Path) -> None:
    data = rows(8)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w)))
    with server(tmp_path, token=KEY) as srv:
        wrong = memos_env(srv, key="sk-wrong-key-000000")
        check = cli("check", "--target", "memos", env=wrong)
        assert check.exit_code == 6 and "sk-wrong" not in check.output
        result = cli("load", "--workdir", str(w), "--target", "memos", env=wrong)
        assert result.exit_code == 6, result.stderr
        assert srv.stats.requests == 2  # one preflight each, no batch
        good = ok(cli("check", "--target", "memos", "--json", env=memos_env(srv)))
        assert orjson.loads(good.stdout)["key_accepted"] is True
        ok(cli("load", "--workdir", str(w), "--target", "memos", env=memos_env(srv)))
    assert_exactly_once(tmp_path / "server.sqlite", data)


# --- resume hints run verbatim ------------------------------------------------------------


def _run_hint(hint: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(hint)
    assert argv[0] == "memos-etl"
    return subprocess.run(
        [*CLI, *argv[1:]], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_printed_resume_hints_run_verbatim(tmp_path: Path) -> None:
    """A quota stop on the memos destination prints `resume with: ...`; status prints the
    same. Run as printed, each finishes the same destination, never the local store."""
    data = rows(30, conversations=3)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w), "--max-messages", "2"))
    quota = ForcedAnswer(code=40304, path="/add/message", conversation_id="conv-1")
    with server(tmp_path, token=KEY, faults=FaultConfig(forced=(quota,))) as srv:
        env = memos_env(srv)
        args = [
            "load",
            "--workdir",
            str(w),
            "--target",
            "memos",
            "--rate",
            "37",
            "--max-in-flight",
            "2",
        ]
        first = cli(*args, env=env)
        assert first.exit_code == 4, first.stderr
        hint = first.stderr.split("resume with: ", 1)[1].strip()
        assert "--target memos" in hint and "--rate 37" in hint and "--max-in-flight 2" in hint
        status = orjson.loads(ok(cli("status", "--workdir", str(w), "--json")).stdout)
        (dest,) = status["destinations"]
        assert dest["resume_command"] == hint
        srv.clear_forced()
        # the key comes from the environment, never from a flag; the URL is in the hint
        done = _run_hint(hint, {"MEMOS_API_KEY": KEY, "MEMOS_BASE_URL": ""})
        assert done.returncode == 0, done.stderr
    assert_exactly_once(tmp_path / "server.sqlite", data)
    assert not (w / "local-memos.sqlite").exists()


def test_ctrl_c_hint_keeps_rate_and_destination(tmp_path: Path) -> None:
    import signal

    data = rows(60, conversations=6)
    w = tmp_path / "w"
    ok(extract(w, write_csv(tmp_path / "chats.csv", data)))
    ok(cli("chunk", "--workdir", str(w), "--max-messages", "2"))
    with server(tmp_path, token=KEY, faults=FaultConfig(latency_ms=40)) as srv:
        env = {**os.environ, **memos_env(srv)}
        args = [
            *CLI,
            "load",
            "--workdir",
            str(w),
            "--target",
            "memos",
            "--rate",
            "40",
            "--max-in-flight",
            "3",
            "--no-progress",
        ]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 30
        while srv.stats.requests < 6 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        hint = err.split("resume with: ", 1)[1].strip()
        assert "--target memos" in hint and "--rate 40" in hint and "--max-in-flight 3" in hint
        done = _run_hint(hint, {"MEMOS_API_KEY": KEY})
        assert done.returncode == 0, done.stderr
    assert_exactly_once(tmp_path / "server.sqlite", data)


# --- the dry run --------------------------------------------------------------------------


def test_dry_run_shows_red_banners_for_quarantine_and_nothing_to_send(tmp_path: Path) -> None:
    from tests.conftest import SAMPLES

    w = tmp_path / "w"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"workdir: {w}\nuser_id: u\nsources:\n"
        f"  - kind: csv\n    path: {SAMPLES / 'broken_chats.csv'}\n"
    )
    ok(cli("validate", str(config)))
    report = orjson.loads((w / "report.json").read_bytes())
    assert len(report["alerts"]) == 1 and "quarantined" in report["alerts"][0]
    assert 'class="banner blocked alert"' in (w / "report.html").read_text(encoding="utf-8")
    ok(cli("run", str(config)))
    again = ok(cli("validate", str(config)))
    assert "attention: nothing would be sent" in again.stdout
    report = orjson.loads((w / "report.json").read_bytes())
    assert any("nothing would be sent" in a for a in report["alerts"])
