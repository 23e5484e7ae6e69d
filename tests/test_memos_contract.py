"""The wire contract: the newest official spec, our documented extensions, group chats, and
the self-hosted server's `/product/add` body."""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest

from pipeline.chunk import ChunkLimits, ChunkStats, chunk_table
from pipeline.core import memos_api
from pipeline.core.config import Config, LoadConfig
from pipeline.core.memos_api import (
    EXTENSIONS,
    GROUP_CHAT_PAGE,
    MAX_GROUP_IDS,
    RequestValidator,
    group_participants,
    id_count,
    load_spec,
    schema_validator,
    server_request_body,
    server_validator,
)
from pipeline.core.models import STAGING_SCHEMA, Message
from pipeline.load.ratelimit import AccountLimiter
from tests.conftest import openapi_spec

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)

GROUP_BODY: dict[str, Any] = {
    "user_id": ["U1", "U2"],
    "conversation_id": "C1",
    "messages": [
        {"role": "user", "role_id": "U1", "role_name": "Alex", "content": "Tuesday?"},
        {"role": "user", "role_id": "U2", "role_name": "Jordan", "content": "2pm works."},
        {"role": "assistant", "role_name": "helper-bot", "content": "Noted."},
    ],
    "async_mode": True,
}


# --- the newest official document and our extensions ------------------------------------


def test_the_newest_official_document_is_the_one_we_validate_against() -> None:
    assert memos_api.SPEC_RESOURCE.endswith("memos-openapi-2026.json")
    assert load_spec() == openapi_spec()
    older = load_spec(memos_api.OLDER_SPEC_RESOURCE)
    assert set(older["paths"]) < set(load_spec()["paths"])  # 2026 adds extract/rerank


def test_group_bodies_pass_our_schema_and_fail_the_plain_official_one() -> None:
    """The extension is deliberate: the official document alone rejects a group chat."""
    assert RequestValidator().is_valid(GROUP_BODY)
    assert schema_validator("AddMessageRequest").is_valid(GROUP_BODY)
    official = schema_validator("AddMessageRequest", official=True)
    errors = [".".join(map(str, e.absolute_path)) for e in official.iter_errors(GROUP_BODY)]
    assert errors == ["user_id"]


def test_the_id_list_limit_is_enforced_by_our_schema() -> None:
    validator = RequestValidator()
    for n, ok in ((1, True), (MAX_GROUP_IDS, True), (MAX_GROUP_IDS + 1, False), (0, False)):
        body = {**GROUP_BODY, "user_id": [f"U{i}" for i in range(n)]}
        assert validator.is_valid(body) is ok, n
    assert not validator.is_valid(
        {**GROUP_BODY, "messages": [{"role": "user", "content": "x", "role_id": 7}]}
    )


@pytest.mark.parametrize("ext", EXTENSIONS, ids=lambda e: f"{e.schema}.{e.field}")
def test_each_extension_is_pinned_to_its_documentation_page(ext: memos_api.Extension) -> None:
    """Every deviation from the official document names the page that documents it, and
    the official document indeed lacks it (remove the extension once it catches up)."""
    assert ext.page == GROUP_CHAT_PAGE
    official = load_spec()["components"]["schemas"][ext.schema]["properties"]
    ours = memos_api.extended_spec()["components"]["schemas"][ext.schema]["properties"]
    assert official.get(ext.field) != ours[ext.field]
    if ext.field in official:  # widened: still accepts what the official one accepts
        assert {"type": official[ext.field]["type"]} in ours[ext.field]["anyOf"]


def test_token_limit_deviates_from_the_official_document_as_the_limits_page_says() -> None:
    """The 2026 document still says 20k per call; the newest limits page says 40,000."""
    described = load_spec()["components"]["schemas"]["AddMessageRequest"]["properties"]
    text = described["messages"]["description"]
    assert re.search(r"\b20k\b", text)
    assert memos_api.MAX_CALL_TOKENS == 40_000
    assert memos_api.LIMITS_PAGE.endswith("/memos_cloud/limit")


# --- the participant rule and the QPS charge ---------------------------------------------


def test_participants_are_the_20_most_active_ties_by_first_to_speak() -> None:
    speakers = [f"p{i:02d}" for i in range(25)]  # 25 speakers, one message each
    speakers += ["p24", "p24", "p03"]  # p24 most active, then p03
    listed, left_out = group_participants(speakers)
    assert listed[:2] == ["p24", "p03"]
    assert listed[2:] == [f"p{i:02d}" for i in range(25) if i not in (3, 24)][:18]
    assert (len(listed), left_out) == (MAX_GROUP_IDS, 5)
    assert group_participants(reversed(speakers))[0] != listed  # order matters, deterministic
    assert group_participants(speakers) == (listed, left_out)


def test_a_request_costs_one_per_listed_id() -> None:
    assert id_count({"user_id": "u"}) == 1
    assert id_count(GROUP_BODY) == 2
    assert id_count({"user_id": ["a", "b", "c"], "agent_id": ["x", "y"]}) == 4


def test_the_limiter_charges_a_weighted_request_n_slots() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = AccountLimiter(10.0, clock=lambda: now[0], sleep=sleep, catch_up=0.0, ramp=False)

    async def two_requests() -> None:
        await limiter.acquire(requests=20)  # a 20-participant group chat: two seconds of budget
        await limiter.acquire()

    asyncio.run(two_requests())
    assert slept == [pytest.approx(2.0)]


# --- the chunker in group mode ------------------------------------------------------------


def _rows(speakers: list[tuple[str, str | None, str]]) -> pa.Table:
    """One conversation owned by "team"; each row (author_id, author_name, role)."""
    messages = [
        Message(
            source="slack",
            source_file="f",
            source_position=str(i),
            message_id=f"m{i}",
            conversation_id="C1",
            user_id="team",
            role=role,
            content=f"message {i}",
            seq=i,
            created_at=T0 + timedelta(minutes=i),
            author_id=author,
            author_name=name,
        )
        for i, (author, name, role) in enumerate(
            (a, n, r) for a, n, r in ((s[0], s[1], s[2]) for s in speakers)
        )
    ]
    table = pa.Table.from_pylist([asdict(m) for m in messages], schema=STAGING_SCHEMA)
    return table.append_column("label", pa.array(["chat"] * len(messages)))


def test_group_mode_lists_participants_and_tags_each_speaker() -> None:
    table = _rows(
        [
            ("U1", "Alex", "user"),
            ("U2", "Jordan", "user"),
            ("B1", "helper-bot", "assistant"),
            ("U2", "Jordan", "user"),
        ]
    )
    stats = ChunkStats()
    (batch,) = chunk_table(table, ChunkLimits(), stats, group={"chat"})
    body = batch.body
    assert body["user_id"] == ["U2", "U1"]  # most active first
    assert batch.user_id == "team"  # the ledger still keys on the owner
    assert [(m.get("role_id"), m.get("role_name")) for m in body["messages"]] == [
        ("U1", "Alex"),
        ("U2", "Jordan"),
        (None, "helper-bot"),  # a bot answers as assistant, not a listed participant
        ("U2", "Jordan"),
    ]
    assert all(not m["content"].startswith(("Alex:", "Jordan:")) for m in body["messages"])
    assert (stats.group_conversations, stats.request_weight) == (1, 2)
    assert RequestValidator().is_valid(LoadConfig().request_body(body))
    plain = list(chunk_table(table, ChunkLimits(), ChunkStats()))
    assert plain[0].body["user_id"] == "team" and plain[0].batch_id != batch.batch_id


def test_group_mode_beyond_20_speakers_keeps_names_and_counts_the_rest() -> None:
    speakers = [(f"U{i:02d}", f"Person {i}", "user") for i in range(23)]
    stats = ChunkStats()
    batches = list(
        chunk_table(_rows(speakers), ChunkLimits(max_messages=10), stats, group={"chat"})
    )
    assert len(batches) == 3
    assert all(b.body["user_id"] == [f"U{i:02d}" for i in range(20)] for b in batches)
    last = batches[-1].body["messages"][-1]
    assert last == {**last, "role_name": "Person 22"} and "role_id" not in last
    assert (stats.group_left_out, stats.request_weight) == (3, 60)


def test_config_names_the_sources_in_group_mode() -> None:
    cfg = Config.model_validate(
        {
            "sources": [
                {"kind": "slack", "path": "a", "options": {"memory_owner": "group"}},
                {"kind": "slack", "name": "b", "path": "b", "options": {"memory_owner": "author"}},
                {"kind": "csv", "path": "c.csv"},
            ]
        }
    )
    assert cfg.group_sources() == frozenset({"slack"})


# --- the self-hosted server's body -------------------------------------------------------


def test_server_body_maps_conversation_to_session_and_passes_its_own_schema() -> None:
    cfg = LoadConfig(target="memos-server", cube="team-cube", async_mode=False, server_mode="fast")
    batch_body = {**GROUP_BODY, "tags": ["slack"], "info": {"batch_id": "b1"}}
    del batch_body["async_mode"]
    body = cfg.request_body(batch_body, "team")
    assert body["session_id"] == "C1" and "conversation_id" not in body
    assert body["user_id"] == "team" and body["writable_cube_ids"] == ["team-cube"]
    assert (body["async_mode"], body["mode"], body["custom_tags"]) == ("sync", "fast", ["slack"])
    assert body["info"] == {"batch_id": "b1", "group_user_ids": ["U1", "U2"]}
    assert [m.get("name") for m in body["messages"]] == ["Alex", "Jordan", None]
    assert list(server_validator().iter_errors(body)) == []


def test_a_body_without_session_id_fails_our_server_check() -> None:
    """The silently-dropped-field guard: the real server would file such a body under
    `default_session`; our check refuses it (and a cloud-style `conversation_id`)."""
    body = server_request_body(
        {"user_id": "u", "conversation_id": "c", "messages": [{"role": "user", "content": "x"}]},
        owner="u",
    )
    validator = server_validator()
    assert validator.is_valid(body)
    cloud_style = {**body, "conversation_id": body.pop("session_id")}
    assert not validator.is_valid(body)
    assert not validator.is_valid(cloud_style)
    assert not validator.is_valid({**body, "session_id": "c", "async_mode": True})
