"""The embedded local target answers in this process: the same answers as the HTTP server,
the same fault semantics, and exactly once when the batch file goes in windows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config import LoadConfig
from pipeline.load import entry
from pipeline.load.ledger import Ledger
from pipeline.load.loader import load_batches
from pipeline.load.targets import Endpoint
from pipeline.server import EmbeddedServer, ServerConfig, start_server
from pipeline.server.app import FaultConfig, ForcedAnswer
from pipeline.server.embedded import Answer
from pipeline.server.store import conversation_messages, message_counts
from tests.loader_fakes import make_batches

VALID = {
    "user_id": "ann",
    "conversation_id": "c1",
    "messages": [{"role": "user", "content": "hello"}],
}
BODIES: list[tuple[str, Any]] = [
    ("/add/message", VALID),
    ("/add/message", {**VALID, "user_id": None}),
    ("/add/message", {k: v for k, v in VALID.items() if k != "messages"}),
    ("/add/message", {**VALID, "messages": [{"role": "robot", "content": "x"}]}),
    ("/add/message", {**VALID, "conversation_id": "x" * 101}),
    ("/add/message", [1, 2]),
    ("/get/message", {"user_id": "ann", "conversation_id": "c1", "message_limit_number": 2}),
    ("/get/message", {"user_id": "ann"}),
]


def _comparable(status: int, content: bytes) -> tuple[int, Any]:
    body = orjson.loads(content)
    data = body.get("data")
    if isinstance(data, dict):
        data.pop("task_id", None)  # a fresh id per request
        for m in data.get("message_detail_list") or []:
            m.pop("id", None)
            m.pop("create_time", None)
            m.pop("update_time", None)
    return status, body


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_embedded_answers_as_the_http_server_does(tmp_path: Path, path: str, body: Any) -> None:
    content = orjson.dumps(body)
    with (
        start_server(ServerConfig(db_path=tmp_path / "http.sqlite")) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        client.post("/add/message", content=orjson.dumps(VALID))
        over_http = client.post(path, content=content)
    with EmbeddedServer(ServerConfig(db_path=tmp_path / "embedded.sqlite")) as embedded:

        async def ask() -> Answer:
            await embedded.post("/add/message", content=orjson.dumps(VALID))
            return await embedded.post(path, content=content)

        in_process = asyncio.run(ask())
    assert _comparable(in_process.status_code, in_process.content) == _comparable(
        over_http.status_code, over_http.content
    )


def test_a_dropped_answer_breaks_like_a_connection_after_storing(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    drop = ForcedAnswer(action="drop_after", times=1)
    config = ServerConfig(db_path=db, faults=FaultConfig(forced=(drop,)))
    with EmbeddedServer(config) as server, pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(server.post("/add/message", content=orjson.dumps(VALID)))
    assert [m["content"] for m in conversation_messages(db, "ann", "c1")] == ["hello"]


def test_a_failed_batch_holds_its_conversation_back_in_later_windows(tmp_path: Path) -> None:
    batches = make_batches({"a": 4, "b": 4}, per_batch=2)  # a1 b1 a2 b2
    windows = [batches[:2], batches[2:]]
    db = tmp_path / "s.sqlite"
    invalid = ForcedAnswer(code=40003, times=1, conversation_id="a")
    config = ServerConfig(db_path=db, faults=FaultConfig(forced=(invalid,)))
    with EmbeddedServer(config) as server, Ledger.open(tmp_path) as ledger:
        endpoint = Endpoint(server.url, None, embedded=True, in_process=server)
        stats = asyncio.run(load_batches(iter(windows), ledger, endpoint, LoadConfig()))
    assert (stats.done, stats.failed, stats.pending, stats.blocked) == (2, 1, 1, 1)
    assert conversation_messages(db, "u1", "a") == []  # a's second batch waits for its first
    assert len(conversation_messages(db, "u1", "b")) == 4


def test_load_in_windows_sends_each_message_once_and_never_reads_every_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "export.csv"
    rows = [
        f"m{i},conv{i % 5},ann,user,message number {i},2025-01-01T10:{i:02d}:00Z" for i in range(40)
    ]
    header = "message_id,conversation_id,user_id,role,content,timestamp"
    export.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    runner = CliRunner()
    for args in (["extract", "--source", "csv", str(export)], ["chunk", "--max-messages", "3"]):
        result = runner.invoke(main, [*args, "--workdir", str(work)])
        assert result.exit_code == 0, result.output
    monkeypatch.setattr(entry, "WINDOW", 2)
    monkeypatch.setattr(Ledger, "delivered", None)  # the whole delivered set is never read
    sent = []
    for _ in range(2):
        result = runner.invoke(
            main, ["load", "--workdir", str(work), "--target", "local", "--json"]
        )
        assert result.exit_code == 0, result.output
        sent.append(json.loads(result.stdout)["sent"]["messages"])
    assert sent == [40, 0]
    assert sum(message_counts(work / "local-memos.sqlite").values()) == 40


def test_no_shipped_config_throttles_the_local_target() -> None:
    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("load") or {}
        if load.get("target", "local") == "local" and not load.get("base_url"):
            assert load.get("rate") is None, f"{path.name} sets a client rate for the local target"
