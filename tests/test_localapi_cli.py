"""`memos-etl serve` as a real process, and `memos-etl search` on the store it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.server.store import Store, conversation_messages, fts_query, message_counts

MEMOS_ETL = str(Path(sys.executable).with_name("memos-etl"))


@contextmanager
def serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `memos-etl serve --port 0 ...`; yield the process and its URL (first stdout line)."""
    proc = subprocess.Popen(
        [MEMOS_ETL, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + proc.stderr.read()
        yield proc, line.split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _add(url: str, user: str, conversation: str, text: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Token {token}"} if token else {}
    body = {
        "user_id": user,
        "conversation_id": conversation,
        "messages": [{"role": "user", "content": text}],
    }
    return httpx.post(f"{url}/add/message", json=body, headers=headers, timeout=10).json()


def test_serve_stores_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    with serve("--db", str(db), "-v") as (proc, url):
        assert _add(url, "alice", "c1", "the refund for order 42")["code"] == 0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert (
        "stopped: requests 1 (add 1; ok 1, rejected 0: rate limit 0, tokens per minute 0), "
        "messages stored 1" in out
    )
    assert "POST /add/message -> code=0" in err  # one line per request at -v
    assert message_counts(db) == {("alice", "c1"): 1}


def test_serve_stops_cleanly_on_sigint_with_json(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    proc = subprocess.Popen(
        [MEMOS_ETL, "serve", "--port", "0", "--db", str(db), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    assert ready["url"].startswith("http://127.0.0.1:") and ready["auth"] is False
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out) == {
        "messages_stored": 0,
        "ok": 0,
        "requests": 0,
        "add_requests": 0,
        "rejected": 0,
        "rate_limited": 0,
        "token_limited": 0,
    }


def test_an_acknowledged_add_survives_a_killed_server(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    with serve("--db", str(db)) as (proc, url):
        acks = [_add(url, "u", "c", f"message {i}")["code"] for i in range(20)]
        proc.kill()  # SIGKILL: no shutdown, no checkpoint
        proc.wait(timeout=30)
    assert acks == [0] * 20
    assert [m["content"] for m in conversation_messages(db, "u", "c")] == [
        f"message {i}" for i in range(20)
    ]


def test_serve_with_token_and_forced_answers(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    env_token = "tok-123"
    proc_env = {"MEMOS_ETL_SERVE_TOKEN": env_token, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.Popen(
        [MEMOS_ETL, "serve", "--port", "0", "--db", str(db), "--force", "40304x1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=proc_env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "auth on" in line
        url = line.split()[2]
        assert _add(url, "u", "c", "x")["code"] == 40100
        assert _add(url, "u", "c", "x", token="wrong")["code"] == 40132
        assert _add(url, "u", "c", "x", token=env_token)["code"] == 40304
        assert _add(url, "u", "c", "x", token=env_token)["code"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert env_token not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "without a token"),
        (["--force", "nonsense"], "--force"),
        (["--fail-rate", "2"], "fail-rate"),
    ],
)
def test_serve_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--db", str(tmp_path / "s.sqlite"), *args],
        env={"MEMOS_ETL_SERVE_TOKEN": ""},
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_search_command_shows_hits_and_counts(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = Store(db)
    from pipeline.server.store import NewMessage

    store.add_messages(
        "alice",
        "c1",
        [NewMessage("user", "my kettle is broken"), NewMessage("assistant", "send us a photo")],
    )
    store.add_messages("alice", "c2", [NewMessage("user", "the kettle works now")])
    store.add_messages("bob", "c9", [NewMessage("user", "kettle for bob")])
    store.close()
    runner = CliRunner()
    result = runner.invoke(
        main, ["search", "--db", str(db), "--user-id", "alice", "--json", "broken kettle"]
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [h["content"] for h in out["results"]][0] == "my kettle is broken"
    assert {h["conversation_id"] for h in out["results"]} == {"c1", "c2"}
    text = runner.invoke(main, ["search", "--db", str(db), "--user-id", "alice", "kettle"])
    assert "2 results for user alice" in text.stdout
    counts = runner.invoke(main, ["search", "--db", str(db), "--json"])
    assert json.loads(counts.stdout)["conversations"] == [
        {"conversation_id": "c1", "messages": 2, "user_id": "alice"},
        {"conversation_id": "c2", "messages": 1, "user_id": "alice"},
        {"conversation_id": "c9", "messages": 1, "user_id": "bob"},
    ]
    only_bob = runner.invoke(main, ["search", "--db", str(db), "--user-id", "bob"])
    assert "1 messages in 1 conversations" in only_bob.stdout


def test_search_command_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main, ["search", "--db", str(tmp_path / "none.sqlite"), "--user-id", "u", "q"]
    )
    assert missing.exit_code == 3 and "no local store" in missing.stderr
    Store(tmp_path / "s.sqlite").close()
    no_user = runner.invoke(main, ["search", "--db", str(tmp_path / "s.sqlite"), "q"])
    assert no_user.exit_code == 2 and "--user-id" in no_user.stderr


def test_commands_have_help() -> None:
    for command in ("serve", "search"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.stdout


def _matches(document: str, query: str) -> int | None:
    """How many of [document] the FTS query for `query` matches (None: nothing to search)."""
    import sqlite3

    from pipeline.server.store import fts_text

    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE f USING fts5(body, tokenize='unicode61 remove_diacritics 2')"
        )
        conn.execute("INSERT INTO f VALUES (?)", (fts_text(document),))
        match = fts_query(query)
        if match is None:
            return None
        return int(conn.execute("SELECT count(*) FROM f WHERE f MATCH ?", (match,)).fetchone()[0])
    finally:
        conn.close()


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_any_query_is_a_valid_fts_expression(document: str, query: str) -> None:
    assert _matches(document, query) in (None, 0, 1)  # never an FTS5 syntax error


WORDY = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éü 北京旅游长城预算会议の日本"
    ),
    min_size=1,
)


@settings(max_examples=200, deadline=None)
@given(WORDY)
def test_a_text_finds_itself(text: str) -> None:
    assert _matches(text, text) in (None, 1)
    assert _matches(f"before {text} after", text) in (None, 1)


def test_other_sqlite_files_are_refused_untouched(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE delivered (id TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    runner = CliRunner()
    searched = runner.invoke(main, ["search", "--db", str(other), "--user-id", "u", "q"])
    assert searched.exit_code == 3 and "not a memos-etl local store" in searched.stderr
    served = runner.invoke(main, ["serve", "--db", str(other), "--port", "0"])
    assert served.exit_code == 3 and "not a memos-etl local store" in served.stderr
    assert other.read_bytes() == before


def _csv_export(path: Path, messages: int) -> Path:
    lines = ["conversation_id,user_id,role,content,timestamp"]
    for i in range(messages):
        role = "user" if i % 2 == 0 else "assistant"
        lines.append(
            f"c{i % 7},alice,{role},message number {i},2024-05-0{1 + i % 9}T10:{i % 60:02d}:00Z"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_serve_and_the_loader_count_in_one_vocabulary(tmp_path: Path) -> None:
    """A run against `serve` under a tight request limit: the loader's requests are the
    server's add requests, its rejections the server's, and what it sent is what the server
    stored; a rerun reports the messages as already delivered, in one new history line."""
    export = _csv_export(tmp_path / "chats.csv", 56)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'w'}\nuser_id: alice\n"
        f"sources:\n  - kind: csv\n    path: {export}\n"
        "chunk:\n  max_messages: 2\n"
        "load:\n  target: memos\n  rate: 40\n",
        encoding="utf-8",
    )
    key = "k-vocabulary"
    args = ["--db", str(tmp_path / "store.sqlite"), "--token", key, "--json"]
    proc = subprocess.Popen(
        [MEMOS_ETL, "serve", "--port", "0", "--qps-limit", "5", "--retry-after", "0.2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        env = {
            "MEMOS_BASE_URL": url,
            "MEMOS_API_KEY": key,
            "PATH": str(Path(sys.executable).parent),
        }

        def run() -> dict:
            done = subprocess.run(
                [MEMOS_ETL, "run", str(config), "--json", "--no-progress"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        first = run()
        again = run()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    served = json.loads(out)
    load = first["load"]
    # one request to check the key before loading (preflight) is not an add request
    assert load["requests"] + again["load"]["requests"] == served["add_requests"], (load, served)
    assert load["sent"]["messages"] == served["messages_stored"] == 56
    assert load["retries"]["rate_limited"] == served["rate_limited"] > 0, (load, served)
    assert again["load"]["sent"]["messages"] == 0
    assert again["load"]["already_delivered"]["messages"] == 56
    history = subprocess.run(
        [MEMOS_ETL, "history", "--workdir", str(tmp_path / "w"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    runs = json.loads(history.stdout)["runs"]
    assert len(runs) == 2, runs  # one line per run, the rerun's included
    assert runs[0]["sent"] == 0 and runs[0]["already_delivered"] == 56, runs[0]
    assert runs[1]["sent"] == 56, runs[1]
