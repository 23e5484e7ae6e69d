"""Shared helpers for loader tests: a scripted in-memory MemOS for httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.core.batches import Batch
from pipeline.core.models import stable_id


def make_batches(
    conversations: dict[str, int], per_batch: int = 3, user: str = "u1", text: str = "msg"
) -> list[Batch]:
    """`{conversation_id: n_messages}` -> batches of `per_batch`, conversations interleaved."""
    out: list[Batch] = []
    lanes: list[list[Batch]] = []
    for conv, n in conversations.items():
        lane: list[Batch] = []
        for index, start in enumerate(range(0, n, per_batch)):
            ids = tuple(f"{conv}-m{i}" for i in range(start, min(n, start + per_batch)))
            contents = [f"{text} {conv} {i}" for i in range(start, min(n, start + per_batch))]
            body = {
                "user_id": user,
                "conversation_id": conv,
                "messages": [{"role": "user", "content": c} for c in contents],
            }
            lane.append(
                Batch(
                    batch_id=stable_id(conv, *ids),
                    user_id=user,
                    conversation_id=conv,
                    index=index,
                    message_ids=ids,
                    content_hashes=tuple(stable_id(c, length=16) for c in contents),
                    tokens=10 * len(ids),
                    body=body,
                )
            )
        lanes.append(lane)
    while any(lanes):
        for lane in lanes:
            if lane:
                out.append(lane.pop(0))
    return out


@dataclass
class Fake:
    """A MemOS stand-in. `script[conversation_id]` (or `"*"`) holds actions consumed by
    successive /add/message calls: ("answer", status, code, headers), "drop_before",
    "drop_after" (stored, answer lost)."""

    store: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    script: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    calls: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)
    max_messages: int | None = None
    echo_auth: bool = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        body = json.loads(request.content)
        self.headers.append(request.headers)
        key = (body["user_id"], body["conversation_id"])
        path = request.url.path.rsplit("/", 2)
        name = "/".join(path[-2:])
        self.calls.append((name, body["conversation_id"]))
        if name == "get/message":
            limit = body.get("message_limit_number", 6)
            found = self.store[key][-limit:]
            return httpx.Response(
                200,
                json={
                    "code": 0,
                    "message": "ok",
                    "data": {
                        "message_detail_list": [{"role": "user", "content": c} for c in found]
                    },
                },
            )
        self.bodies.append(body)
        queue = self.script[body["conversation_id"]] or self.script["*"]
        action = queue.popleft() if queue else None
        if action == "drop_before":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if action == "drop_after":
            self.store[key].extend(m["content"] for m in body["messages"])
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if isinstance(action, tuple):
            _, status, code, headers = action
            text = "rejected"
            if self.echo_auth:
                text += " " + request.headers.get("authorization", "")
            return httpx.Response(
                status, json={"code": code, "message": text}, headers=headers or {}
            )
        if self.max_messages is not None and len(body["messages"]) > self.max_messages:
            return httpx.Response(200, json={"code": 40305, "message": "input too long"})
        if any(len(m["content"]) > 60 for m in body["messages"]):
            return httpx.Response(200, json={"code": 40305, "message": "input too long"})
        self.store[key].extend(m["content"] for m in body["messages"])
        return httpx.Response(
            200, json={"code": 0, "message": "ok", "data": {"success": True, "task_id": "t1"}}
        )


class FakeTime:
    """Injected clock and sleep: sleeping advances the clock instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
