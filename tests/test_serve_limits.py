"""What one client can cost `serve`: bodies read only after auth and up to a size, headers
and bodies within a time, a bounded number of connections. Real server on 127.0.0.1:0, raw
sockets; the limits are set small in each test, the socket timeouts only stop a broken test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from pipeline.core.errors import ConfigError
from pipeline.server import LocalServer, ServerConfig, ServerLimits, start_server

TOKEN = "tok-SECRET"
GUARD = 10.0
"""Socket timeout: only reached when the server fails to close or answer (a failing test)."""
MEMOS_ETL = str(Path(sys.executable).with_name("memos-etl"))


@contextmanager
def server(tmp_path: Path, token: str | None = None, **limits: object) -> Iterator[LocalServer]:
    config = ServerConfig(
        db_path=tmp_path / "s.sqlite",
        token=token,
        limits=ServerLimits(**limits),  # type: ignore[arg-type]
    )
    with start_server(config) as srv:
        yield srv


def connect(srv: LocalServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=GUARD)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def status_and_body(raw: bytes) -> tuple[int, dict[str, object] | bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def post_head(length: int | None, token: str | None = None, chunked: bool = False) -> bytes:
    lines = [b"POST /add/message HTTP/1.1", b"Host: x", b"Content-Type: application/json"]
    if token:
        lines.append(b"Authorization: Token " + token.encode())
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_an_unauthenticated_body_is_never_read(tmp_path: Path) -> None:
    with server(tmp_path, token=TOKEN) as srv:
        sock = connect(srv)
        sock.sendall(post_head(500_000_000) + b"{" + b" " * 30_000)  # promises 500 MB
        status, body = status_and_body(read_all(sock))  # answered and closed, not buffered
        sock.close()
        stats = srv.stats
    assert status == 200 and isinstance(body, dict) and body["code"] == 40100
    assert stats.body_bytes_read == 0


def test_a_declared_body_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    with server(tmp_path, token=TOKEN, max_body_bytes=1024) as srv:
        sock = connect(srv)
        sock.sendall(post_head(10_000_000, TOKEN) + b"{")
        status, body = status_and_body(read_all(sock))
        sock.close()
        stats = srv.stats
    assert status == 413 and isinstance(body, dict) and body["code"] == 40305
    assert "1024 bytes" in str(body["message"])
    assert stats.body_bytes_read == 0 and stats.bodies_too_large == 1


def test_a_chunked_body_is_cut_at_the_limit(tmp_path: Path) -> None:
    """No Content-Length: the body is counted as it comes and refused past the limit. The
    server reads at most uvicorn's read-ahead beyond it (a 64 KiB buffer filled by reads of
    up to 256 KiB), not the 4 MiB the client offers."""
    chunk = b"x" * 16384
    sent = 0
    with server(tmp_path, max_body_bytes=4096) as srv:
        sock = connect(srv)
        sock.sendall(post_head(None, chunked=True))
        try:
            for _ in range(256):  # 4 MiB offered
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed
        try:
            raw = read_all(sock)
        except ConnectionResetError:
            raw = b""
        sock.close()
        stats = srv.stats
    assert stats.bodies_too_large == 1 and stats.codes == {40305: 1}
    assert stats.body_bytes_read <= 4096 + 64 * 1024 + 256 * 1024
    assert raw == b"" or status_and_body(raw)[0] == 413


def test_a_body_within_the_limit_is_stored(tmp_path: Path) -> None:
    message = {
        "user_id": "u",
        "conversation_id": "c",
        "messages": [{"role": "user", "content": "hi"}],
    }
    with server(tmp_path, max_body_bytes=4096) as srv:
        answer = httpx.post(f"{srv.url}/add/message", json=message, timeout=GUARD).json()
        big = {**message, "messages": [{"role": "user", "content": "y" * 5000}]}
        refused = httpx.post(f"{srv.url}/add/message", json=big, timeout=GUARD)
        stats = srv.stats
    assert answer["code"] == 0 and stats.messages_stored == 1
    assert refused.status_code == 413 and refused.json()["code"] == 40305


@pytest.mark.parametrize("sent", [b"", b"POST /add/message HTTP/1.1\r\nHost: x\r\n"])
def test_slow_headers_are_cut_off(tmp_path: Path, sent: bytes) -> None:
    with server(tmp_path, header_timeout=0.3) as srv:
        sock = connect(srv)
        sock.sendall(sent)
        raw = read_all(sock)  # the server closes; a broken guard hits GUARD instead
        sock.close()
        probe = httpx.post(f"{srv.url}/get/message", json={"user_id": "u", "conversation_id": "c"})
        stats = srv.stats
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert stats.header_timeouts == 1 and probe.json()["code"] == 0


def test_a_trickled_body_is_cut_off(tmp_path: Path) -> None:
    with server(tmp_path, body_timeout=0.3) as srv:
        sock = connect(srv)
        sock.sendall(post_head(10_000) + b"{")
        status, body = status_and_body(read_all(sock))
        sock.close()
        stats = srv.stats
    assert status == 408 and isinstance(body, dict) and body["code"] == 40000
    assert stats.body_timeouts == 1


def test_headers_over_the_limit_are_refused(tmp_path: Path) -> None:
    with server(tmp_path, max_header_bytes=2048) as srv:
        sock = connect(srv)
        sock.sendall(b"POST /add/message HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(200):
                sock.sendall(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server while we were still sending
        try:
            raw = read_all(sock)
        except ConnectionResetError:
            raw = b""
        sock.close()
        stats = srv.stats
    assert stats.headers_too_large == 1
    assert raw == b"" or raw.startswith(b"HTTP/1.1 431 ")


def test_connections_over_the_limit_are_refused_and_the_server_recovers(tmp_path: Path) -> None:
    query = {"user_id": "u", "conversation_id": "c"}
    with server(tmp_path, max_connections=3, header_timeout=60) as srv, ExitStack() as held:
        idle = [held.enter_context(connect(srv)) for _ in range(3)]
        for sock in idle:
            sock.sendall(b"POST /get/message HTTP/1.1\r\n")  # holds its slot
        extra = connect(srv)
        refused = read_all(extra)
        extra.close()
        for sock in idle:
            sock.close()
        held.close()
        answer = httpx.post(f"{srv.url}/get/message", json=query, timeout=GUARD).json()
        stats = srv.stats
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert stats.connections_refused >= 1 and answer["code"] == 0


def test_keep_alive_still_works(tmp_path: Path) -> None:
    query = {"user_id": "u", "conversation_id": "c"}
    with server(tmp_path, max_connections=1) as srv, httpx.Client(base_url=srv.url) as client:
        codes = [client.post("/get/message", json=query).json()["code"] for _ in range(5)]
        stats = srv.stats
    assert codes == [0] * 5 and stats.connections_refused == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        ServerLimits(max_body_bytes=0)
    with pytest.raises(ConfigError):
        ServerLimits(header_timeout=0)
    assert ServerLimits().max_body_bytes == 16 * 1024 * 1024


def test_serve_cli_passes_the_limits(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [MEMOS_ETL, "serve", "--port", "0", "--db", str(tmp_path / "s.sqlite")]
        + ["--max-body-bytes", "100", "--header-timeout", "5", "--body-timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        body = {
            "user_id": "u",
            "conversation_id": "c",
            "messages": [{"role": "user", "content": "z" * 200}],
        }
        answer = httpx.post(f"{url}/add/message", json=body, timeout=GUARD)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert answer.status_code == 413 and answer.json()["code"] == 40305
