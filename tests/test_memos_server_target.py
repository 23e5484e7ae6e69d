"""`target: memos-server`: batches go to a self-hosted MemOS server's `/product/add`.

The default tests run against the local server's emulation of that endpoint
(`pipeline/server/app.py`); tests/test_memos_server_real.py runs the same bodies through
the real MemOS app when the `memos-server-tests` extra is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.errors import PermanentLoadError, TransientLoadError
from pipeline.load.policy import AmbiguousDeliveryError, error_from_response
from pipeline.server import ForcedAnswer, LocalServer, ServerConfig, start_server
from pipeline.server.store import conversation_messages, message_counts

EXPORT = (
    "message_id,conversation_id,user_id,role,content,timestamp\n"
    "1,trip,ann,user,Where should we go in May?,2025-04-01T10:00:00Z\n"
    "2,trip,ann,assistant,Lisbon is lovely in May.,2025-04-01T10:01:00Z\n"
    "3,trip,ann,user,Book it.,2025-04-01T10:02:00Z\n"
    "4,work,ann,user,Remind me of the Q2 review.,2025-04-02T09:00:00Z\n"
)


def _response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, {"code": 200, "message": "Memory added successfully", "data": []}, None),
        (
            422,
            {"code": 422, "message": "Validation error", "detail": [{"loc": ["body"]}]},
            PermanentLoadError,
        ),
        (400, {"code": 400, "message": "bad cube", "data": None}, PermanentLoadError),
        (500, {"code": 500, "message": "graph db down", "data": None}, TransientLoadError),
        (429, {"code": 429, "message": "slow down", "data": None}, TransientLoadError),
        (200, {"code": 0, "data": {}}, AmbiguousDeliveryError),  # not this server's success
    ],
)
def test_server_errors_are_read_from_http_statuses(
    status: int, body: object, kind: type[Exception] | None
) -> None:
    error = error_from_response(_response(status, body), server=True)
    if kind is None:
        assert error is None
    else:
        assert type(error) is kind, error
    if status == 429:
        assert isinstance(error, TransientLoadError) and error.rate_limited


def test_a_cloud_success_is_not_a_server_success_and_vice_versa() -> None:
    server_ok = _response(200, {"code": 200, "message": "ok", "data": []})
    assert error_from_response(server_ok) is not None  # the cloud's success is code 0
    assert error_from_response(server_ok, server=True) is None


def _config(tmp_path: Path, url: str, *extra: str) -> Path:
    (tmp_path / "export.csv").write_text(EXPORT, encoding="utf-8")
    config = tmp_path / "pipeline.yaml"
    lines = [
        "workdir: work",
        "sources:\n  - kind: csv\n    path: export.csv",
        "load:",
        "  target: memos-server",
        f"  base_url: {url}",
        "  cube: ann-cube",
        "  rate: 500",
        *extra,
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


@pytest.fixture
def server(tmp_path: Path) -> LocalServer:
    with start_server(ServerConfig(db_path=tmp_path / "server.sqlite")) as srv:
        yield srv


def test_round_trip_files_each_conversation_under_its_session(
    tmp_path: Path, server: LocalServer
) -> None:
    config = _config(tmp_path, server.url)
    result = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["load"]["sent"]["messages"] == 4 and out["load"]["complete"]
    db = tmp_path / "server.sqlite"
    assert message_counts(db) == {("ann", "trip"): 3, ("ann", "work"): 1}
    stored = conversation_messages(db, "ann", "trip")
    assert [m["content"] for m in stored] == [
        "Where should we go in May?",
        "Lisbon is lovely in May.",
        "Book it.",
    ]
    assert stored[0]["info"]["writable_cube_ids"] == ["ann-cube"]
    # two adds (the preflight's GET /health is not an API request)
    assert server.stats.codes == {200: 2}
    again = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert json.loads(again.stdout)["load"]["sent"]["messages"] == 0


def test_the_emulated_server_refuses_a_body_without_session_id(server: LocalServer) -> None:
    """The silently-dropped-field guard: the real server would store such a body under
    `default_session`; ours answers 422, so a wrong body builder cannot pass the tests."""
    body = {
        "user_id": "ann",
        "writable_cube_ids": ["ann"],
        "async_mode": "sync",
        "messages": [{"role": "user", "content": "hello"}],
    }
    with httpx.Client(base_url=server.url) as http:
        ok = http.post("/product/add", json={**body, "session_id": "s1"})
        missing = http.post("/product/add", json=body)
        cloud_style = http.post("/product/add", json={**body, "conversation_id": "s1"})
    assert (ok.status_code, ok.json()["code"]) == (200, 200)
    assert ok.json()["data"][0]["memory"] == "hello"
    for answer in (missing, cloud_style):
        assert (answer.status_code, answer.json()["code"]) == (422, 422), answer.text
    assert "session_id" in missing.json()["message"]


def test_a_rejected_batch_fails_and_the_run_says_so(tmp_path: Path, server: LocalServer) -> None:
    server.force(ForcedAnswer(code=400, path="/product/add", message="unknown cube", times=1))
    config = _config(tmp_path, server.url, "  max_in_flight: 1")
    result = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert result.exit_code == 4, result.stderr
    failures = json.loads(result.stdout)["load"]["failures"]
    assert len(failures) == 1 and "HTTP 400: unknown cube" in failures[0]["error"]


def test_an_uncertain_batch_cannot_be_verified_and_is_resent(
    tmp_path: Path, server: LocalServer
) -> None:
    """Documented limitation: the server has no read-back of raw messages, so a batch whose
    answer was lost is sent again (here it had landed: the server now holds it twice)."""
    server.force(
        ForcedAnswer(action="drop_after", path="/product/add", times=1, conversation_id="work")
    )
    config = _config(tmp_path, server.url)
    result = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    load = json.loads(result.stdout)["load"]
    assert load["verified_landed"] == 0 and load["retries"] == {"lost_answer": 1}
    assert message_counts(tmp_path / "server.sqlite")[("ann", "work")] == 2
    assert "cannot verify batch" in result.stderr


def test_memos_server_needs_an_address(tmp_path: Path) -> None:
    (tmp_path / "export.csv").write_text(EXPORT, encoding="utf-8")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nsources:\n  - kind: csv\n    path: export.csv\n"
        "load:\n  target: memos-server\n",
        encoding="utf-8",
    )
    result = CliRunner(env={"MEMOS_BASE_URL": ""}).invoke(main, ["run", str(config)])
    assert result.exit_code == 2
    assert "memos-server needs the server's address" in result.stderr
