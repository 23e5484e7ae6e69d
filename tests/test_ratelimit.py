"""Adaptive rate limiter and error policy, with an injected clock (instant)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from pipeline.core.errors import (
    AuthError,
    PermanentLoadError,
    QuotaExhaustedError,
    TooLargeError,
    TransientLoadError,
)
from pipeline.load.policy import (
    ERROR_TABLE,
    AmbiguousDeliveryError,
    classify,
    error_from_exception,
    error_from_response,
    parse_retry_after,
    redact,
)
from pipeline.load.ratelimit import AdaptiveRateLimiter
from tests.loader_fakes import FakeTime


def starts(limiter: AdaptiveRateLimiter, ft: FakeTime, n: int) -> list[float]:
    async def go() -> list[float]:
        out = []
        for _ in range(n):
            await limiter.acquire()
            out.append(ft.now)
        return out

    return asyncio.run(go())


def test_slots_are_spaced_at_the_rate() -> None:
    ft = FakeTime()
    limiter = AdaptiveRateLimiter(20.0, clock=ft.clock, sleep=ft.sleep, catch_up=0.0)
    times = starts(limiter, ft, 41)
    assert times[-1] - times[0] == pytest.approx(2.0)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) == pytest.approx(0.05)


def test_concurrent_acquirers_share_the_rate() -> None:
    ft = FakeTime()
    limiter = AdaptiveRateLimiter(10.0, clock=ft.clock, sleep=ft.sleep, catch_up=0.0)
    got: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        got.append(ft.now)

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(10)))

    asyncio.run(main())
    assert max(got) - min(got) <= 0.9 + 1e-9
    assert len(ft.sleeps) == 9  # every caller but the first waited for its own slot


def test_catch_up_is_bounded_in_every_window() -> None:
    ft = FakeTime()
    limiter = AdaptiveRateLimiter(50.0, clock=ft.clock, sleep=ft.sleep, catch_up=0.1)
    times = starts(limiter, ft, 20)
    ft.now += 3.0  # idle (every worker busy, or the process descheduled)
    times += starts(limiter, ft, 200)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + 1.0)
        assert in_window <= 50 * (1.0 + 0.1) + 1
    assert sum(1 for u in times if u == times[20]) == 6  # caught up: 1 + 0.1 s * 50/s
    limiter.on_rate_limited(None)
    ft.now += 3.0
    after = starts(limiter, ft, 5)
    assert min(b - a for a, b in zip(after, after[1:], strict=False)) > 0  # no catch-up now


def test_rate_limited_cuts_rate_pauses_and_recovers_to_ceiling() -> None:
    ft = FakeTime()
    limiter = AdaptiveRateLimiter(40.0, clock=ft.clock, sleep=ft.sleep)
    limiter.on_rate_limited(3.0)
    assert limiter.rate == pytest.approx(30.0)
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(30.0)  # same congestion event: one cut only
    before = ft.now
    starts(limiter, ft, 1)
    assert ft.now - before >= 3.0  # honoured the Retry-After pause
    limiter.on_rate_limited(None)
    low = limiter.rate
    assert low < 30.0
    for _ in range(200):  # sustained success over simulated seconds climbs back
        ft.now += 0.25
        limiter.on_success()
    assert limiter.rate == pytest.approx(40.0)
    rates = []
    ft.now += 1.0
    limiter.on_rate_limited(None)
    for _ in range(8):
        ft.now += 1.0
        limiter.on_success()
        rates.append(limiter.rate)
    steps = {round(b - a, 6) for a, b in zip(rates, rates[1:], strict=False) if b < 40.0}
    assert steps == {2.0}  # additive increase


def test_rate_never_drops_below_floor() -> None:
    ft = FakeTime()
    limiter = AdaptiveRateLimiter(5.0, clock=ft.clock, sleep=ft.sleep, floor=0.5)
    for _ in range(50):
        ft.now += 1.0
        limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    "header,expected",
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("0", None),
        ("-2", None),
        ("soon", None),
        (None, None),
        ("", None),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) is None


def answer(status: int, code: int | None, **headers: str) -> httpx.Response:
    body = {"message": "server says no"} if code is None else {"code": code, "message": "no"}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    "status,code,kind",
    [
        (200, 0, "ok"),
        (429, None, "rate_limited"),
        (200, 40300, "rate_limited"),
        (500, None, "transient"),
        (503, None, "transient"),
        (599, None, "transient"),
        (200, 50000, "transient"),
        (200, 50002, "transient"),
        (200, 50004, "transient"),
        (200, 50143, "transient"),
        (200, 50144, "transient"),
        (413, None, "too_large"),
        (200, 40305, "too_large"),
        (401, None, "auth"),
        (403, None, "auth"),
        (200, 40100, "auth"),
        (200, 40130, "auth"),
        (200, 40132, "auth"),
        (200, 40304, "quota"),
        (200, 40000, "invalid"),
        (400, None, "invalid"),
        (404, None, "invalid"),
        (200, 12345, "invalid"),
        (200, 50001, "invalid"),
    ],
)
def test_classify_every_table_row(status: int, code: int | None, kind: str) -> None:
    assert classify(status, code).kind == kind


def test_error_table_codes_are_disjoint() -> None:
    codes = [c for rule in ERROR_TABLE for c in rule.codes]
    assert len(codes) == len(set(codes))


def test_response_mapping_types() -> None:
    assert error_from_response(answer(200, 0)) is None
    rl = error_from_response(answer(429, None, **{"Retry-After": "2"}))
    assert isinstance(rl, TransientLoadError) and rl.rate_limited and rl.retry_after == 2.0
    assert isinstance(error_from_response(answer(502, None)), TransientLoadError)
    assert isinstance(error_from_response(answer(200, 40305)), TooLargeError)
    assert isinstance(error_from_response(answer(401, None)), AuthError)
    assert isinstance(error_from_response(answer(200, 40304)), QuotaExhaustedError)
    bad = error_from_response(answer(200, 40001))
    assert isinstance(bad, PermanentLoadError) and "40001" in str(bad)
    no_code = error_from_response(httpx.Response(200, text="<html>ok</html>"))
    assert isinstance(no_code, AmbiguousDeliveryError)  # never success without code 0
    empty = error_from_response(httpx.Response(200, content=b""))
    assert isinstance(empty, AmbiguousDeliveryError)
    not_success = httpx.Response(200, json={"code": 0, "message": "ok", "data": {"success": False}})
    assert isinstance(error_from_response(not_success), PermanentLoadError)


def test_exception_mapping() -> None:
    req = httpx.Request("POST", "http://x/add/message")
    assert type(error_from_exception(httpx.ConnectError("refused", request=req))) is (
        TransientLoadError
    )
    for exc in (
        httpx.ReadTimeout("slow", request=req),
        httpx.RemoteProtocolError("closed", request=req),
        httpx.WriteError("broken", request=req),
    ):
        assert isinstance(error_from_exception(exc), AmbiguousDeliveryError)


def test_redact_hides_key_in_server_text() -> None:
    key = "sk-abc-123"
    response = httpx.Response(400, json={"code": 40000, "message": f"bad token Token {key}"})
    error = error_from_response(response, secret=key)
    assert error is not None and key not in str(error) and "***" in str(error)
    assert redact("no secret here", None) == "no secret here"
