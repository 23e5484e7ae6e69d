"""The Ray budget hands back a reservation whose task stopped before its request left: the
actor's limiter stops counting it as sent (what the server accepted before a rejection is
measured from the starts counted). No Ray cluster is started: the actor class is used
directly and the task side talks to a stand-in actor. Skipped without the Ray extra."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -e '.[ray]'")

from pipeline.engines import ray_engine  # noqa: E402
from pipeline.load.ratelimit import AccountLimiter  # noqa: E402
from tests.loader_fakes import FakeTime  # noqa: E402


def test_the_actor_stops_counting_a_released_reservation() -> None:
    ft = FakeTime()
    actor = ray_engine.AccountBudget(100.0, None)
    actor.limiter = AccountLimiter(
        100.0, clock=ft.clock, sleep=ray_engine._no_sleep, ramp=False, catch_up=0.0
    )

    async def go() -> None:
        reservations = [await actor.reserve(1.0, 0.0) for _ in range(70)]
        for reservation in reservations[20:25]:
            await actor.release(reservation)
        await actor.release(reservations[20])  # twice: nothing more happens
        await actor.rate_limited(reservations[60][0], None)

    asyncio.run(go())
    assert actor.limiter.learned_rate == pytest.approx(55.0)  # 60 reserved before it, 5 unused


class _Method:
    def __init__(self, calls: list[tuple[str, tuple[Any, ...]]], name: str, answer: Any) -> None:
        self.calls, self.name, self.answer = calls, name, answer

    def remote(self, *args: Any) -> Any:
        self.calls.append((self.name, args))
        return self.answer


class _Actor:
    """Answers `reserve` with a start 60 s away; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.reservation = asyncio.get_running_loop().create_future()
        self.reservation.set_result((7, 60.0, {}))
        self.reserve = _Method(self.calls, "reserve", self.reservation)
        self.release = _Method(self.calls, "release", None)


def test_a_task_that_gives_up_its_wait_hands_the_reservation_back() -> None:
    async def go() -> list[tuple[str, tuple[Any, ...]]]:
        actor = _Actor()
        budget = ray_engine.ActorBudget(actor)
        waiting = asyncio.ensure_future(budget.acquire())
        for _ in range(3):
            await asyncio.sleep(0)  # reserved, now waiting for its start
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert actor.calls[-1][1] == (actor.reservation,)
        return actor.calls

    calls = asyncio.run(go())
    assert [name for name, _ in calls] == ["reserve", "release"]
