"""The local MemOS-compatible server over real HTTP on 127.0.0.1: contract, errors, store.

Every response body is validated against the official spec's response schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from pipeline.core.errors import ConfigError
from pipeline.core.memos_api import load_spec
from pipeline.core.tokens import count_tokens
from pipeline.server import (
    ENDPOINTS,
    LocalServer,
    ServerConfig,
    start_server,
)
from pipeline.server.store import (
    NewMessage,
    Store,
    conversation_messages,
    message_counts,
    search_store,
)
from tests.conftest import response_validator

RESPONSE_SCHEMAS = {
    "/add/message": "AddMessageResponse",
    "/get/message": "GetMessageResponse",
    "/search/memory": "SearchMemoryResponse",
    "/get/status": "GetStatusResponse",
}


@pytest.fixture(scope="module")
def response_validators() -> dict[str, Draft202012Validator]:
    spec = load_spec()
    return {path: response_validator(spec, name) for path, name in RESPONSE_SCHEMAS.items()}


class Api:
    """Test client: posts, checks HTTP 200 + the spec's response schema, returns the body."""

    def __init__(
        self,
        server: LocalServer,
        validators: dict[str, Draft202012Validator],
        token: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Token {token}"} if token else {}
        self.http = httpx.Client(base_url=server.url, headers=headers, timeout=10)
        self.validators = validators

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if raw is not None:
            r = self.http.post(path, content=raw, headers=headers)
        else:
            r = self.http.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        self.validators[path].validate(data)
        return data

    def add(self, user_id: str, conversation_id: str, *contents: str, **extra: Any) -> str:
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": c}
            for i, c in enumerate(contents)
        ]
        body = {
            "user_id": user_id,
            "conversation_id": conversation_id,
            "messages": messages,
            **extra,
        }
        out = self.post("/add/message", body)
        assert out["code"] == 0, out
        task_id: str = out["data"]["task_id"]
        return task_id


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


@pytest.fixture
def server(db: Path) -> Iterator[LocalServer]:
    with start_server(ServerConfig(db_path=db, max_input_tokens=200)) as s:
        yield s


@pytest.fixture
def api(server: LocalServer, response_validators: dict[str, Draft202012Validator]) -> Iterator[Api]:
    with Api(server, response_validators) as client:
        yield client


def test_add_then_status_get_and_search(api: Api, db: Path) -> None:
    task_id = api.add("alice", "c1", "I want a refund for order 42", "Sure, refund started")
    status = api.post("/get/status", {"task_id": task_id})
    assert status == {"code": 0, "data": {"status": "completed"}, "message": "ok"}
    got = api.post("/get/message", {"user_id": "alice", "conversation_id": "c1"})
    assert [m["content"] for m in got["data"]["message_detail_list"]] == [
        "I want a refund for order 42",
        "Sure, refund started",
    ]
    found = api.post("/search/memory", {"user_id": "alice", "query": "refund order"})
    values = [m["memory_value"] for m in found["data"]["memory_detail_list"]]
    assert values[0] == "I want a refund for order 42"
    assert set(values) == {"I want a refund for order 42", "Sure, refund started"}
    assert message_counts(db) == {("alice", "c1"): 2}


def test_store_keeps_every_field_in_arrival_order(api: Api, db: Path) -> None:
    body = {
        "user_id": "u",
        "conversation_id": "c",
        "tags": ["slack", "support"],
        "info": {"source": "slack", "n": 3},
        "agent_id": "agent-1",
        "app_id": "app-1",
        "messages": [
            {"role": "system", "content": "be brief", "chat_time": "2025-01-02T03:04:05Z"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "http://x/i.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "t1"},
        ],
    }
    assert api.post("/add/message", body)["code"] == 0
    api.add("u", "c", "later message")
    rows = conversation_messages(db, "u", "c")
    assert [r["role"] for r in rows] == ["system", "user", "assistant", "tool", "user"]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert rows[0]["chat_time"] == "2025-01-02T03:04:05Z"
    assert rows[0]["tags"] == ["slack", "support"] and rows[0]["info"] == {
        "source": "slack",
        "n": 3,
    }
    assert rows[0]["agent_id"] == "agent-1" and rows[0]["app_id"] == "app-1"
    assert rows[1]["content"] == "look\n[image] http://x/i.png"
    assert rows[1]["extra"]["content"] == body["messages"][1]["content"]
    assert rows[2]["extra"]["tool_calls"][0]["id"] == "t1"
    assert rows[3]["extra"] == {"tool_call_id": "t1"}
    assert rows[4]["tags"] == []


def test_get_message_returns_latest_in_order_with_limits(api: Api) -> None:
    for i in range(60):
        api.add("u", "c", f"message number {i}")
    api.post(
        "/add/message",
        {
            "user_id": "u",
            "conversation_id": "c",
            "messages": [{"role": "system", "content": "hidden"}],
        },
    )
    default = api.post("/get/message", {"user_id": "u", "conversation_id": "c"})
    assert [m["content"] for m in default["data"]["message_detail_list"]] == [
        f"message number {i}" for i in range(54, 60)
    ]
    fifty = api.post(
        "/get/message", {"user_id": "u", "conversation_id": "c", "message_limit_number": 50}
    )
    assert len(fifty["data"]["message_detail_list"]) == 50
    other = api.post("/get/message", {"user_id": "u", "conversation_id": "nope"})
    assert other["data"]["message_detail_list"] == []


def test_search_is_per_user_ranked_and_prefers_the_conversation(api: Api) -> None:
    api.add("alice", "c1", "the blue kettle is broken")
    api.add("alice", "c2", "kettle")
    api.add("alice", "c3", "a blue kettle that is broken again and again")
    api.add("bob", "c1", "blue kettle broken")
    out = api.post("/search/memory", {"user_id": "alice", "query": "blue kettle broken"})
    hits = out["data"]["memory_detail_list"]
    assert {h["conversation_id"] for h in hits} == {"c1", "c2", "c3"}
    assert hits[-1]["memory_value"] == "kettle"  # matches one of three terms: last
    assert all(0 <= h["relativity"] <= 1 for h in hits)
    assert [h["relativity"] for h in hits] == sorted((h["relativity"] for h in hits), reverse=True)
    preferred = api.post(
        "/search/memory",
        {"user_id": "alice", "query": "blue kettle broken", "conversation_id": "c2"},
    )
    assert preferred["data"]["memory_detail_list"][0]["conversation_id"] == "c2"
    limited = api.post(
        "/search/memory", {"user_id": "alice", "query": "kettle", "memory_limit_number": 2}
    )
    assert len(limited["data"]["memory_detail_list"]) == 2
    nobody = api.post("/search/memory", {"user_id": "carol", "query": "kettle"})
    assert nobody["data"]["memory_detail_list"] == []


def test_search_finds_chinese_text(api: Api) -> None:
    api.add("u", "c", "我们国庆节想去北京旅游", "推荐故宫和长城")
    api.add("u", "c", "明天开会讨论预算")
    for query, expected in [
        ("北京旅游", "我们国庆节想去北京旅游"),
        ("长城", "推荐故宫和长城"),
        ("预算", "明天开会讨论预算"),
        ("国庆去哪里玩", "我们国庆节想去北京旅游"),
    ]:
        out = api.post("/search/memory", {"user_id": "u", "query": query})
        assert out["data"]["memory_detail_list"][0]["memory_value"] == expected, query


def test_search_survives_fts_syntax_in_queries(api: Api) -> None:
    api.add("u", "c", 'he said "hello" AND left (NEAR the door) * ^')
    for query in ['"', "AND", "NEAR(", "*", "^x", "a OR", "(", "-", "   ", ""]:
        out = api.post("/search/memory", {"user_id": "u", "query": query})
        assert out["code"] == 0, (query, out)


# --- error codes ------------------------------------------------------------------------

GOOD_ADD = {"user_id": "u", "conversation_id": "c", "messages": [{"role": "user", "content": "hi"}]}


def _with(**changes: Any) -> dict[str, Any]:
    body = {**GOOD_ADD, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()

INVALID = [
    # (path, body, expected code, text the message must contain)
    ("/add/message", b"{not json", 40000, "JSON"),
    ("/add/message", b"[1, 2]", 40000, "object"),
    ("/add/message", b"", 40000, "JSON"),
    ("/add/message", _with(user_id=_DROP), 40002, "'user_id'"),
    ("/add/message", _with(conversation_id=_DROP), 40002, "'conversation_id'"),
    ("/add/message", _with(messages=_DROP), 40002, "'messages'"),
    ("/add/message", _with(messages=[{"content": "x"}]), 40002, "'messages[0].role'"),
    ("/add/message", _with(messages=[{"role": "user"}]), 40002, "'messages[0].content'"),
    ("/get/message", {"user_id": "u"}, 40002, "'conversation_id'"),
    ("/search/memory", {"user_id": "u"}, 40002, "'query'"),
    ("/get/status", {}, 40002, "'task_id'"),
    ("/add/message", _with(user_id=7), 40003, "'user_id'"),
    ("/add/message", _with(messages="hi"), 40003, "'messages'"),
    (
        "/add/message",
        _with(messages=[{"role": "bot", "content": "x"}]),
        40003,
        "'messages[0].role'",
    ),
    (
        "/add/message",
        _with(messages=[{"role": "user", "content": 5}]),
        40003,
        "'messages[0].content'",
    ),
    ("/add/message", _with(tags=["ok", 3]), 40003, "'tags[1]'"),
    ("/add/message", _with(user_id=""), 40003, "'user_id'"),
    ("/add/message", _with(info={"ok": True}), 40003, "'info.ok'"),
    ("/add/message", _with(info={"n": None}), 40003, "'info.n'"),
    (
        "/get/message",
        {"user_id": "u", "conversation_id": "c", "message_limit_number": 51},
        40003,
        "'message_limit_number'",
    ),
    (
        "/get/message",
        {"user_id": "u", "conversation_id": "c", "message_limit_number": 0},
        40003,
        "'message_limit_number'",
    ),
    (
        "/search/memory",
        {"user_id": "u", "query": "q", "memory_limit_number": 26},
        40003,
        "'memory_limit_number'",
    ),
    ("/get/status", {"task_id": "never-issued"}, 40003, "task_id"),
    ("/add/message", _with(user_id="u" * 101), 40010, "user_id"),
    ("/get/message", {"user_id": "u" * 101, "conversation_id": "c"}, 40010, "user_id"),
    ("/search/memory", {"user_id": "u" * 101, "query": "q"}, 40010, "user_id"),
    ("/add/message", _with(conversation_id="c" * 101), 40011, "conversation_id"),
    ("/get/message", {"user_id": "u", "conversation_id": "c" * 101}, 40011, "conversation_id"),
]


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory,
    response_validators: dict[str, Draft202012Validator],
) -> Iterator[tuple[Api, Path]]:
    """One server for the many rejected-request cases (each start/stop costs ~0.25 s)."""
    db = tmp_path_factory.mktemp("shared") / "store.sqlite"
    with start_server(ServerConfig(db_path=db)) as server, Api(server, response_validators) as api:
        yield api, db


@pytest.mark.parametrize(("path", "body", "code", "text"), INVALID)
def test_invalid_requests_get_the_right_code(
    shared: tuple[Api, Path], path: str, body: Any, code: int, text: str
) -> None:
    api, db = shared
    raw = body if isinstance(body, bytes) else None
    out = api.post(path, None if raw is not None else body, raw=raw)
    assert out["code"] == code, out
    assert text in out["message"]
    assert "data" not in out
    assert message_counts(db) == {}


def test_ids_at_the_limit_are_accepted(api: Api, db: Path) -> None:
    api.add("u" * 100, "c" * 100, "fits")
    assert message_counts(db) == {("u" * 100, "c" * 100): 1}


def test_input_over_the_token_limit_gets_40305(api: Api, db: Path) -> None:
    limit = 200  # the fixture's max_input_tokens
    words = " ".join(f"word{i}" for i in range(400))
    assert count_tokens(words) > limit
    out = api.post("/add/message", _with(messages=[{"role": "user", "content": words}]))
    assert out["code"] == 40305 and str(limit) in out["message"]
    # the limit is on the sum over messages: two parts under it each still exceed it
    part = " ".join(["apple"] * 150)
    assert count_tokens(part) <= limit < 2 * count_tokens(part)
    out = api.post(
        "/add/message",
        _with(messages=[{"role": "user", "content": part}, {"role": "user", "content": part}]),
    )
    assert out["code"] == 40305
    assert message_counts(db) == {}
    # exactly at the limit is fine
    exact = " ".join(f"w{i}" for i in range(400))
    while count_tokens(exact) > limit:
        exact = exact[: exact.rfind(" ")]
    assert count_tokens(exact) <= limit
    assert (
        api.post("/add/message", _with(messages=[{"role": "user", "content": exact}]))["code"] == 0
    )


def test_auth_codes_when_a_token_is_configured(
    db: Path, response_validators: dict[str, Draft202012Validator]
) -> None:
    with start_server(ServerConfig(db_path=db, token="s3cret")) as server:
        anonymous = Api(server, response_validators)
        good = Api(server, response_validators, token="s3cret")
        for path in ENDPOINTS:
            assert anonymous.post(path, GOOD_ADD)["code"] == 40100
        wrong = anonymous.post("/add/message", GOOD_ADD, headers={"Authorization": "Token nope"})
        assert wrong["code"] == 40132
        bearer = anonymous.post(
            "/add/message", GOOD_ADD, headers={"Authorization": "Bearer s3cret"}
        )
        assert bearer["code"] == 40132
        assert "s3cret" not in repr(server.config)
        assert message_counts(db) == {}
        with anonymous, good:
            assert good.add("u", "c", "hello") and message_counts(db) == {("u", "c"): 1}


def test_no_token_configured_means_no_auth(api: Api) -> None:
    out = api.post("/add/message", GOOD_ADD, headers={"Authorization": "Token whatever"})
    assert out["code"] == 0


def test_a_success_is_durable_across_a_restart(
    db: Path, response_validators: dict[str, Draft202012Validator]
) -> None:
    with start_server(ServerConfig(db_path=db)) as first, Api(first, response_validators) as api:
        task_id = api.add("u", "c", "remember me", "I will")
    with start_server(ServerConfig(db_path=db)) as second, Api(second, response_validators) as api:
        got = api.post("/get/message", {"user_id": "u", "conversation_id": "c"})
        assert [m["content"] for m in got["data"]["message_detail_list"]] == [
            "remember me",
            "I will",
        ]
        assert api.post("/get/status", {"task_id": task_id})["data"]["status"] == "completed"
        hits = api.post("/search/memory", {"user_id": "u", "query": "remember"})
        assert hits["data"]["memory_detail_list"][0]["memory_value"] == "remember me"


def test_wrong_method_and_unknown_path_are_not_served(server: LocalServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/add/message").status_code == 405
        assert http.post("/chat", json={}).status_code == 404


def test_public_bind_requires_a_token(db: Path) -> None:
    with pytest.raises(ConfigError, match="token"):
        ServerConfig(db_path=db, host="0.0.0.0")
    assert ServerConfig(db_path=db, host="0.0.0.0", token="t").host == "0.0.0.0"
    assert ServerConfig(db_path=db, host="localhost").token is None


def test_stats_count_what_was_answered(api: Api, server: LocalServer) -> None:
    api.add("u", "c", "one", "two")
    api.post("/add/message", raw=b"nope")
    stats = server.stats
    assert stats.requests == 2 and stats.ok == 1 and stats.codes == {0: 1, 40000: 1}
    assert stats.messages_stored == 2 and stats.http_status == {200: 2}


def test_search_ranks_by_share_of_query_terms_on_a_tiny_store(api: Api) -> None:
    api.add(
        "u", "c", "We want a family trip to Beijing in October", "The Forbidden City suits all ages"
    )
    out = api.post("/search/memory", {"user_id": "u", "query": "a family trip to the city?"})
    hits = out["data"]["memory_detail_list"]
    assert [h["memory_value"] for h in hits] == [
        "We want a family trip to Beijing in October",
        "The Forbidden City suits all ages",
    ]
    assert hits[0]["relativity"] > hits[1]["relativity"] > 0
    only = api.post("/search/memory", {"user_id": "u", "query": "where should the family go?"})
    assert len(only["data"]["memory_detail_list"]) == 1  # stopwords do not match "The ..."
    exact = api.post("/search/memory", {"user_id": "u", "query": "Forbidden city"})
    assert exact["data"]["memory_detail_list"][0]["relativity"] == 1.0


def test_a_store_failure_is_a_transient_50000(
    db: Path, response_validators: dict[str, Draft202012Validator]
) -> None:
    with start_server(ServerConfig(db_path=db)) as server, Api(server, response_validators) as api:
        api.add("u", "c", "stored")
        server._store.close()  # the store's connection fails from now on
        r = api.http.post("/add/message", json=GOOD_ADD)
        assert r.status_code == 500
        body = r.json()
        response_validators["/add/message"].validate(body)
        assert body["code"] == 50000 and "store error" in body["message"]
    assert message_counts(db) == {("u", "c"): 1}


def _indexed_seq(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        (done,) = conn.execute("SELECT indexed_seq FROM fts_state").fetchone()
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()
    finally:
        conn.close()
    return done, last


def test_search_sees_every_committed_message_and_stop_completes_the_index(
    db: Path, response_validators: dict[str, Draft202012Validator]
) -> None:
    with start_server(ServerConfig(db_path=db)) as server, Api(server, response_validators) as api:
        for i in range(30):
            api.add("u", "c", f"note {i} about zebras")
        # no waiting for the background indexer: a search catches up first
        hits = api.post(
            "/search/memory", {"user_id": "u", "query": "zebras", "memory_limit_number": 25}
        )
        assert len(hits["data"]["memory_detail_list"]) == 25
        api.add("u", "c", "one more zebra note")
    done, last = _indexed_seq(db)
    assert done == last == 31


def test_messages_left_unindexed_by_a_crash_are_found_later(db: Path) -> None:
    store = Store(db)
    store.add_messages("u", "c", [NewMessage("user", "giraffes are tall")])
    store.close()  # as after a crash: committed, never indexed
    assert _indexed_seq(db) == (0, 1)
    assert [r["content"] for r in search_store(db, "u", "giraffes")] == ["giraffes are tall"]
    assert _indexed_seq(db) == (1, 1)


def test_a_version_1_store_is_migrated(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, task_id TEXT NOT NULL,"
        " user_id TEXT NOT NULL, conversation_id TEXT NOT NULL, role TEXT NOT NULL,"
        " content TEXT NOT NULL, chat_time TEXT, tags TEXT NOT NULL, info TEXT NOT NULL,"
        " agent_id TEXT, app_id TEXT, extra TEXT, created_at TEXT NOT NULL);"
        "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='',"
        " tokenize='unicode61 remove_diacritics 2');"
        "INSERT INTO messages VALUES (1, 't-0', 't', 'u', 'c', 'user', 'old okapi', NULL, '[]',"
        " '{}', NULL, NULL, NULL, '2026-01-01T00:00:00.000+00:00');"
        "INSERT INTO messages_fts (rowid, body) VALUES (1, 'old okapi');"
        "PRAGMA user_version = 1;"
    )
    conn.close()
    store = Store(db)
    store.add_messages("u", "c", [NewMessage("user", "new okapi")])
    assert [r["content"] for r in store.search("u", "okapi", 10)] == ["old okapi", "new okapi"]
    store.close()
    assert _indexed_seq(db) == (2, 2)
