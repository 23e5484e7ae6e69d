"""Where the API key may go, and that no piece of it comes back in errors, logs or the ledger."""

from __future__ import annotations

import http.server
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.core.batches import write_batches
from pipeline.core.errors import ConfigError
from pipeline.load.policy import REDACT_MIN_PIECE, error_from_response, redact
from pipeline.load.targets import check_key_transport
from tests.loader_fakes import make_batches

LONG_KEY = "sk-test-SECRET123-abcdefghijklmnopqrstuvwxyz0123456789ABCD"


def pieces(secret: str, n: int = REDACT_MIN_PIECE) -> list[str]:
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def leaks(text: str, secret: str) -> bool:
    return any(p in text for p in pieces(secret))


class _Echo(http.server.BaseHTTPRequestHandler):
    """A hostile MemOS-like server: answers every POST with a non-JSON 500 page that echoes
    the Authorization header at character 160 (like a proxy's debug page)."""

    seen: list[str | None]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization")
        self.seen.append(auth)
        body = b"x" * 160 + (auth or "").encode()
        self.send_response(500)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def echo_server() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_Echo,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_cut_error_body_never_shows_a_key_prefix() -> None:
    response = httpx.Response(500, text="x" * 160 + "Token " + LONG_KEY + " tail")
    error = error_from_response(response, secret=LONG_KEY)
    assert error is not None
    assert not leaks(str(error), LONG_KEY), str(error)
    assert str(error).startswith("HTTP 500: xxx")


@settings(max_examples=200, deadline=None)
@given(
    before=st.integers(min_value=0, max_value=400),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=80),
    cut=st.integers(min_value=REDACT_MIN_PIECE, max_value=80),
)
def test_no_piece_of_the_key_survives_any_cut(before: int, key: str, cut: int) -> None:
    """The key anywhere in a non-JSON body, whole or cut short by the server."""
    body = "y" * before + key[:cut] + "\n"
    error = error_from_response(httpx.Response(502, text=body), secret=key)
    assert error is not None and not leaks(str(error), key)


def test_redact_hides_runs_of_the_key_and_keeps_the_rest() -> None:
    text = f"a {LONG_KEY} b {LONG_KEY[:20]} c {LONG_KEY[30:45]} d"
    assert redact(text, LONG_KEY) == "a *** b *** c *** d"
    assert redact("nothing secret here", LONG_KEY) == "nothing secret here"
    assert redact("short key abc", "abc") == "short key ***"


def test_load_against_an_echoing_server_leaks_no_key_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batches(tmp_path, make_batches({"a": 2}))
    config = tmp_path / "c.yaml"
    config.write_text(
        "load:\n  max_attempts: 2\n  backoff_initial: 0.01\n  backoff_max: 0.02\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MEMOS_API_KEY", LONG_KEY)
    with echo_server() as (url, seen):
        args = ["load", "--config", str(config), "--workdir", str(tmp_path)]
        result = CliRunner().invoke(
            main, [*args, "--target", "memos", "--base-url", url, "-vv", "--no-progress"]
        )
    assert result.exit_code == 4, result.output
    assert seen and all(auth == f"Token {LONG_KEY}" for auth in seen)
    assert "HTTP 500" in result.output
    assert not leaks(result.stdout, LONG_KEY) and not leaks(result.stderr, LONG_KEY)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        errors = [row[0] or "" for row in db.execute("select error_message from batches")]
    assert errors and not any(leaks(e, LONG_KEY) for e in errors)


def test_local_target_never_gets_the_memos_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batches(tmp_path, make_batches({"a": 1}))
    monkeypatch.setenv("MEMOS_API_KEY", LONG_KEY)
    monkeypatch.delenv("MEMOS_ETL_SERVE_TOKEN", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("load:\n  max_attempts: 1\n", encoding="utf-8")
    with echo_server() as (url, seen):
        args = ["load", "--config", str(config), "--workdir", str(tmp_path), "--target", "local"]
        CliRunner().invoke(main, [*args, "--base-url", url, "--no-progress"])
    # the preflight check and the add: neither carries the MemOS key
    assert seen and all(auth is None for auth in seen)


def test_local_target_sends_the_serve_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_batches(tmp_path, make_batches({"a": 1}))
    monkeypatch.setenv("MEMOS_API_KEY", LONG_KEY)
    monkeypatch.setenv("MEMOS_ETL_SERVE_TOKEN", "tok-serve")
    config = tmp_path / "c.yaml"
    config.write_text("load:\n  max_attempts: 1\n", encoding="utf-8")
    with echo_server() as (url, seen):
        args = ["load", "--config", str(config), "--workdir", str(tmp_path), "--target", "local"]
        CliRunner().invoke(main, [*args, "--base-url", url, "--no-progress"])
    assert seen and all(auth == "Token tok-serve" for auth in seen)


@pytest.mark.parametrize("url", ["http://memos.example.invalid/api", "HTTP://a.invalid:8000"])
def test_key_over_plain_http_to_another_host_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    write_batches(tmp_path, make_batches({"a": 1}))
    monkeypatch.setenv("MEMOS_API_KEY", LONG_KEY)
    args = ["load", "--workdir", str(tmp_path), "--target", "memos", "--base-url", url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to send MEMOS_API_KEY")
    assert "--allow-insecure-http" in lines[0] and LONG_KEY not in result.output


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://memos.memtensor.cn/api/openmem/v1", False),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000/v1", False),
        ("http://[::1]:8000", False),
        ("http://[::ffff:127.0.0.1]:8000", False),
        ("http://192.168.1.20:8000", True),
    ],
)
def test_key_transport_rules(url: str, allowed: bool) -> None:
    check_key_transport(url, "KEY", allow_insecure_http=allowed)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.7:8000", "http://127.0.0.1.nip.io", "http://[fe80::1]"]
)
def test_plain_http_to_a_non_loopback_address_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="plain http"):
        check_key_transport(url, "KEY", allow_insecure_http=False)


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "http://", "memos.cn"])
def test_non_http_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        check_key_transport(url, "KEY", allow_insecure_http=True)
