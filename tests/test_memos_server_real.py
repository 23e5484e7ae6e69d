"""Opt-in contract test: our `/product/add` requests through the REAL MemOS server app.

Install the extra to run it (about 670 MB; CI does not):

    pip install -e '.[dev,memos-server-tests]'
    python -m pytest tests/test_memos_server_real.py

The app is the official `memos.api.server_api` (FastAPI routing, the `APIADDRequest`
pydantic model, its exception handlers and response envelope), booted with
`memos.api.handlers.init_server` patched to placeholder components, as MemOS's own API tests
do: a real server needs a graph database, an embedder and an LLM. Its add handler is
replaced by an in-memory one that records each validated request, so the test sees exactly
what the server understood of ours. It is served by uvicorn on 127.0.0.1 and loaded with
`memos-etl run`, like any self-hosted server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import Mock, patch

import httpx
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.errors import PermanentLoadError
from pipeline.core.memos_api import SERVER_ADD_PATH, SERVER_ADD_SCHEMA, server_validator
from pipeline.load.policy import error_from_response

if importlib.util.find_spec("memos") is None:  # imported by the fixture, after its settings
    pytest.skip(
        "the real MemOS server is not installed: pip install -e '.[dev,memos-server-tests]' "
        "(MemoryOS==2.0.33) to run this contract test",
        allow_module_level=True,
    )

pytestmark = [
    # MemOS and its dependencies warn on import and at run time; that is not ours to fail on
    pytest.mark.filterwarnings("ignore"),
]

COMPONENTS = (  # noqa: SIM905 - a word list reads better as text
    "graph_db mem_reader llm suggestion_llm scheduler_llm chat_llms playground_chat_llms "
    "embedder reranker internet_retriever memory_manager default_cube_config mem_scheduler "
    "naive_mem_cube searcher api_module text_mem feedback_server redis_client deepsearch_agent"
).split()
"""What `init_server` returns in MemoryOS 2.0.33 (`memos/api/handlers/component_init.py`)."""


class RecordingAddHandler:
    """Stands in for the server's AddHandler: keeps each validated `APIADDRequest`."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def handle_add_memories(self, request: Any) -> Any:
        from memos.api.product_models import MemoryResponse

        self.requests.append(request)
        return MemoryResponse(message="Memory added successfully", data=[])


@pytest.fixture(scope="module")
def real_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, RecordingAddHandler]]:
    import uvicorn

    files = tmp_path_factory.mktemp("memos-files")
    os.environ.setdefault("FILE_LOCAL_PATH", str(files))  # server_api mounts it at import
    os.environ.setdefault("MEMOS_BASE_PATH", str(files))  # its user database, not in the cwd
    components: dict[str, Any] = {name: Mock() for name in COMPONENTS}
    components["online_bot"] = None
    with patch("memos.api.handlers.init_server", return_value=components):
        from memos.api import server_api
        from memos.api.routers import server_router
    recorder = RecordingAddHandler()
    server_router.add_handler = recorder
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(server_api.app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "MemOS app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


CHAT = (
    "conversation_id,user_id,author_name,role,content,timestamp\n"
    "standup,u-ana,Ana,user,I finished the parser.,2025-05-01T09:00:00Z\n"
    "standup,u-ben,Ben,user,Reviewing it now.,2025-05-01T09:01:00Z\n"
    "standup,,Bot,assistant,Reminder: demo at 3.,2025-05-01T09:02:00Z\n"
    "retro,u-ana,Ana,user,What went well?,2025-05-02T16:00:00Z\n"
    "retro,,,tool,lint: 0 problems,2025-05-02T16:01:00Z\n"
)


def test_a_run_lands_every_conversation_in_its_own_session(
    tmp_path: Path, real_server: tuple[str, RecordingAddHandler]
) -> None:
    url, recorder = real_server
    recorder.requests.clear()
    (tmp_path / "chat.csv").write_text(CHAT, encoding="utf-8")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workdir: work\nuser_id: team\n"
        "sources:\n  - kind: csv\n    path: chat.csv\n    options:\n      memory_owner: group\n"
        f"load:\n  target: memos-server\n  base_url: {url}\n  cube: team-cube\n"
        "  server_mode: fast\n  rate: 100\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["run", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["load"]["complete"]
    by_session = {r.session_id: r for r in recorder.requests}
    # the silently-dropped-field guard: without session_id the server files everything
    # under one default session and this set would be {None}
    assert set(by_session) == {"standup", "retro"}
    standup = by_session["standup"]
    assert (standup.user_id, standup.writable_cube_ids) == ("team", ["team-cube"])
    assert (standup.async_mode, standup.mode) == ("sync", "fast")
    assert [(m["role"], m.get("name"), m["content"]) for m in standup.messages] == [
        ("user", "Ana", "I finished the parser."),
        ("user", "Ben", "Reviewing it now."),
        ("assistant", None, "Reminder: demo at 3."),  # assistant messages have no name
    ]
    assert standup.info["group_user_ids"] == ["u-ana", "u-ben"]
    tool = by_session["retro"].messages[-1]
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "unknown")


def test_the_server_silently_accepts_a_cloud_shaped_body_and_our_check_does_not(
    real_server: tuple[str, RecordingAddHandler],
) -> None:
    """Why `SERVER_ADD_SCHEMA` requires `session_id`: the real server takes a cloud-style
    body with HTTP 200 and loses its conversation key."""
    url, recorder = real_server
    cloud_shaped = {
        "user_id": "team",
        "conversation_id": "standup",
        "messages": [{"role": "user", "content": "hello"}],
    }
    answer = httpx.post(url + SERVER_ADD_PATH, json=cloud_shaped)
    assert (answer.status_code, answer.json()["code"]) == (200, 200)
    assert recorder.requests[-1].session_id is None  # conversation_id was dropped
    assert not server_validator().is_valid(cloud_shaped)


def test_the_servers_validation_errors_map_to_a_failed_batch(
    real_server: tuple[str, RecordingAddHandler],
) -> None:
    url, _ = real_server
    body = {
        "user_id": "team",
        "session_id": "s",
        "writable_cube_ids": ["team"],
        "async_mode": "later",
        "messages": [{"role": "user", "content": "x"}],
    }
    answer = httpx.post(url + SERVER_ADD_PATH, json=body)
    assert answer.status_code == 422
    error = error_from_response(answer, server=True)
    assert isinstance(error, PermanentLoadError) and "async_mode" in str(error)


def test_our_server_schema_uses_only_fields_the_real_model_has() -> None:
    """Drift check: every field we send exists in `APIADDRequest`, and our enums match."""
    from memos.api.product_models import APIADDRequest

    fields = APIADDRequest.model_fields
    assert set(SERVER_ADD_SCHEMA["properties"]) <= set(fields)
    for name in ("async_mode", "mode"):
        allowed = [
            arg
            for part in typing.get_args(fields[name].annotation) or [fields[name].annotation]
            for arg in typing.get_args(part) or [part]
            if isinstance(arg, str)
        ]
        assert sorted(SERVER_ADD_SCHEMA["properties"][name]["enum"]) == sorted(allowed)
