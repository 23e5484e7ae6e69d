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
from pipeline.load.ratelimit import AccountLimiter, InFlightGate, Ticket
from tests.limits_sim import VirtualLoop, run_virtual
from tests.loader_fakes import FakeTime


def starts(
    limiter: AccountLimiter, ft: FakeTime, n: int, *, requests: float = 1, tokens: float = 0
) -> list[float]:
    async def go() -> list[float]:
        out = []
        for _ in range(n):
            await limiter.acquire(requests=requests, tokens=tokens)
            out.append(ft.now)
        return out

    return asyncio.run(go())


def limiter_at(
    ft: FakeTime, rps: float | None, tpm: float | None = None, **kw: float
) -> AccountLimiter:
    """A limiter on the fake clock; without the start ramp unless a test asks for it."""
    kw.setdefault("ramp", False)
    return AccountLimiter(rps, tpm, clock=ft.clock, sleep=ft.sleep, **kw)


def test_slots_are_spaced_at_the_rate() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 20.0, catch_up=0.0)
    times = starts(limiter, ft, 41)
    assert times[-1] - times[0] == pytest.approx(2.0)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) == pytest.approx(0.05)


def test_a_weighted_request_costs_its_weight() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 10.0, catch_up=0.0)
    times = starts(limiter, ft, 4, requests=5)  # a group-chat call for 5 users
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {0.5}


def test_token_budget_spaces_calls_by_their_tokens() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, 60_000, catch_up=0.0)  # 1,000 tokens per second
    times = starts(limiter, ft, 11, tokens=2_000)
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {2.0}  # tokens bind: 0.5 calls/s, not 50
    small = starts(limiter, ft, 11, tokens=1)
    gaps = [b - a for a, b in zip(small, small[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.02)  # requests bind


def test_no_budget_means_no_waiting() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, None, None)
    times = starts(limiter, ft, 1000, tokens=40_000)
    assert times[0] == times[-1] and not ft.sleeps
    limiter.on_rate_limited(None)
    limiter.on_token_limited(None)
    assert limiter.rate is None and limiter.tokens_per_minute is None


def test_concurrent_acquirers_share_the_rate() -> None:
    """On an event loop's (virtual) clock: `FakeTime` moves the clock by each sleep in
    turn, so concurrent sleepers would seem to wake late."""
    got: list[float] = []
    sleeps: list[float] = []

    async def main(loop: VirtualLoop) -> None:
        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            await asyncio.sleep(seconds)

        limiter = AccountLimiter(10.0, clock=loop.time, sleep=sleep, catch_up=0.0, ramp=False)

        async def one() -> None:
            await limiter.acquire()
            got.append(loop.time())

        await asyncio.gather(*(one() for _ in range(10)))

    run_virtual(main)
    assert max(got) - min(got) == pytest.approx(0.9)
    assert len(sleeps) == 9  # every caller but the first waited for its own slot


def test_catch_up_is_bounded_and_ends_with_the_first_rejection() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.1)
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


def sent_at(
    limiter: AccountLimiter, ft: FakeTime, rate: float, n: int, tokens: float = 0
) -> list[Ticket]:
    """`n` tickets taken `1/rate` apart (the client sending faster than the budget)."""

    async def go() -> list[Ticket]:
        out = []
        for _ in range(n):
            out.append(await limiter.acquire(tokens=tokens))
            ft.now += 1.0 / rate
        return out

    return asyncio.run(go())


def test_rejection_settles_below_what_the_server_accepted_once_per_event() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0)
    tickets = sent_at(limiter, ft, 100.0, 70)
    # the server took 50 in its second, then refused; the answers come back later
    limiter.on_rate_limited(None, tickets[50])
    assert limiter.learned_rate == pytest.approx(50.0)
    assert limiter.rate == pytest.approx(48.5)  # 97% of what it accepted
    for t in tickets[51:]:  # sent before the cut: the same congestion event
        limiter.on_rate_limited(None, t)
    assert limiter.rate == pytest.approx(48.5)
    assert limiter.rate_limited == 20


def test_a_start_handed_out_and_given_up_is_not_counted_as_sent() -> None:
    """Five of the starts before a rejection were given up (their load stopped before the
    requests left): the server saw 55 in its second, not 60."""
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0)
    tickets = sent_at(limiter, ft, 100.0, 70)
    for t in tickets[20:25]:
        limiter.forget(t)
    limiter.on_rate_limited(None, tickets[60])
    assert limiter.learned_rate == pytest.approx(55.0)


def test_after_a_rejection_nothing_is_sent_into_the_still_full_window() -> None:
    """A burst filled the server's second; the budget is lowered, but the next start also
    waits until the burst's oldest requests have left the window (counted, not guessed)."""
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0)
    tickets = sent_at(limiter, ft, 100.0, 60)  # 0.6 s: 50 accepted, then refusals
    for t in tickets[50:]:
        t.rejected = True
    limiter.on_rate_limited(1.0, tickets[50])
    assert limiter.learned_rate == pytest.approx(50.0)
    nxt = starts(limiter, ft, 3)
    # at most 49 (48.5 a second, rounded up) may be in the window when the next one starts:
    # it waits for the two oldest to leave it
    assert nxt[0] == pytest.approx(tickets[1].started + 1.0, abs=1e-5)
    assert all(
        b - a == pytest.approx(1 / 48.5, rel=0.05) for a, b in zip(nxt[1:], nxt[2:], strict=False)
    )


def test_start_steps_up_from_half_the_budget_until_the_first_rejection() -> None:
    """Half the budget until an answer shows the latency, then steps of `overshoot` /
    latency (at most `overshoot` above the last safe level), each held until a token
    bucket's burst would have drained below it and the answers came back."""
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0, ramp=True, overshoot=12.0)
    tickets = sent_at(limiter, ft, 1000.0, 50)  # workers asking faster than allowed
    blind = [b.started - a.started for a, b in zip(tickets, tickets[1:], strict=False)]
    assert all(g == pytest.approx(1 / 50.0) for g in blind)  # half the budget, no answer yet
    ft.now = tickets[0].started + 1.0
    limiter.on_success(tickets[0])  # the first answer: 1 s latency
    stepped = ft.now
    times = starts(limiter, ft, 600)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    hold = 1.1 * 50 / 12 + 1.0  # 50 requests of burst drain at 12/s, plus one latency
    assert gaps[1] == pytest.approx(1 / 62.0)  # 50 + 12 / 1 s
    i = next(i for i, g in enumerate(gaps) if g < 0.99 / 62.0)
    assert times[i] - stepped == pytest.approx(hold, abs=0.05)  # held that long
    assert gaps[i] == pytest.approx(1 / 74.0)  # then one more step
    fresh = limiter_at(ft, 100.0, catch_up=0.0, ramp=True, overshoot=12.0)
    tickets = sent_at(fresh, ft, 50.0, 60)
    ft.now += 1.0
    fresh.on_rate_limited(1.0, tickets[-1])  # rejected at 50/s, the level shown safe
    assert fresh.learned_rate == pytest.approx(50.0)
    after = starts(fresh, ft, 3)
    assert after[2] - after[1] == pytest.approx(1 / fresh.rate)  # learned: no ramp left


def test_short_latency_reaches_the_budget_in_one_step() -> None:
    """At 0.2 s a step may be 60/s: after one window at half the budget (so a window
    counting from the start is full before anything steps above it), 99% of it at once."""
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.0, ramp=True, overshoot=12.0)
    tickets = sent_at(limiter, ft, 1000.0, 10)
    assert tickets[1].started - tickets[0].started == pytest.approx(1 / 25.0)
    ft.now = tickets[0].started + 0.2
    limiter.on_success(tickets[0])
    times = starts(limiter, ft, 40)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] == pytest.approx(1 / 25.0)  # the first window is not over
    i = next(i for i, g in enumerate(gaps) if g < 1 / 30.0)
    # (a start already reserved at 25/s keeps its time: up to two slots of 0.04 s late)
    assert times[i] == pytest.approx(tickets[0].started + 1.0, abs=0.09)
    assert gaps[i] == pytest.approx(1 / 49.5)  # then 99% of the budget


def test_a_last_step_of_a_few_requests_is_taken_with_the_one_before() -> None:
    """At 1.07 s latency steps are 11.2/s: 25 -> 36.2 -> 47.4 would leave 2.1/s to the top
    (99% of 50), a third step held another 4.6 s; the second step goes to the top."""
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.0, ramp=True, overshoot=12.0)
    tickets = sent_at(limiter, ft, 1000.0, 30)
    ft.now = tickets[0].started + 1.07
    limiter.on_success(tickets[0])
    times = starts(limiter, ft, 300)
    assert times[-1] - tickets[0].started < 9.0  # before a third step could be taken
    assert times[-1] - times[-2] == pytest.approx(1 / 49.5)


def test_first_rejection_holds_the_safe_level_while_answers_are_in_flight() -> None:
    """A token bucket's burst makes the second before the first rejection overstate its
    rate: until the requests in flight are answered, nothing goes faster than the last
    level shown safe."""
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0, ramp=True, overshoot=12.0)
    tickets = sent_at(limiter, ft, 1000.0, 5)
    ft.now = tickets[0].started + 1.0
    limiter.on_success(tickets[0])  # latency 1 s: the level steps from 50 to 62
    tickets = sent_at(limiter, ft, 1000.0, 200)  # 62/s for about 3 s, all accepted
    ft.now += 1.0
    limiter.on_rate_limited(1.0, tickets[-1])
    assert limiter.learned_rate == pytest.approx(62.0, abs=1)
    held = starts(limiter, ft, 20)
    assert held[-1] - held[-2] == pytest.approx(1 / (0.97 * 50.0))  # the safe level
    ft.now += 1.2
    later = starts(limiter, ft, 3)
    assert later[-1] - later[-2] == pytest.approx(1 / limiter.rate)  # then what it learned


def test_rejection_at_the_rate_itself_settles_below_it_and_stays() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.0, probe_every=60.0, probe_step=0.01)
    tickets = sent_at(limiter, ft, 50.0, 60)
    limiter.on_rate_limited(1.0, tickets[-1])
    assert limiter.rate == pytest.approx(0.97 * 50.0, rel=0.03)
    settled = limiter.rate
    for _ in range(59):  # a minute of success: no probing back toward the ceiling yet
        ft.now += 1.0
        limiter.on_success()
    assert limiter.rate == settled
    ft.now += 1.0
    limiter.on_success()
    assert limiter.rate == pytest.approx(settled + 0.5)  # one small step per calm minute


def test_long_retry_after_pauses_every_start_capped() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 10.0, catch_up=0.0, max_pause=30.0)
    limiter.on_rate_limited(1.0)  # one window: the rejected request waits, nobody else
    before = ft.now
    starts(limiter, ft, 1)
    assert ft.now - before < 0.2
    limiter.on_rate_limited(3600.0)  # "come back in an hour": capped
    before = ft.now
    starts(limiter, ft, 1)
    assert ft.now - before == pytest.approx(30.0)


def test_token_rejection_settles_the_token_budget_and_waits() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, 120_000, catch_up=0.0)  # 2,000 tokens/s
    tickets = sent_at(limiter, ft, 4.0, 40, tokens=500)  # 2,000 tokens/s for 10 s
    limiter.on_token_limited(5.0, tickets[-1])
    # 39 accepted calls of 500 tokens in the minute before: 19,500 tokens, but one event
    # at most halves the budget (a run's first minute is not a full window)
    assert limiter.learned_tokens_per_minute == pytest.approx(60_000)
    assert limiter.tokens_per_minute == pytest.approx(0.97 * 60_000)
    assert limiter.rate == pytest.approx(50.0)  # the request budget is untouched
    before = ft.now
    starts(limiter, ft, 1, tokens=500)
    assert ft.now - before >= 5.0  # Retry-After pushed the token schedule back
    assert limiter.token_limited == 1 and limiter.rate_limited == 0


def test_rate_never_drops_below_floor() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 5.0, floor=0.5)
    for _ in range(200):
        ft.now += 1.0
        limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(0.5)


def test_in_flight_follows_rate_times_latency() -> None:
    gate = InFlightGate(None, low=4, high=256, start=16)
    for _ in range(200):
        gate.observe(1.0, 50.0)
    assert gate.limit == int(1.25 * 50 * 1.0) + 2  # Little's law with headroom
    for _ in range(200):
        gate.observe(0.05, 50.0)
    assert gate.limit == 5  # shrinks at once
    fixed = InFlightGate(8)
    fixed.observe(1.0, 50.0)
    assert fixed.limit == 8 and fixed.capacity == 8


def test_in_flight_follows_the_rate_at_once() -> None:
    """No slow start: the limiter's ramp keeps an unknown ceiling from being overrun, and
    a gate growing one per answer would cap a 1 s latency at 16, then 32 requests/s."""
    gate = InFlightGate(None, start=16)
    gate.observe(1.0, 100.0)
    assert gate.limit == 127


def test_gate_waits_for_room() -> None:
    gate = InFlightGate(2)
    order: list[str] = []

    async def main() -> None:
        await gate.enter()
        await gate.enter()
        third = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        order.append("blocked" if not third.done() else "ran")
        await gate.leave()
        await third
        order.append(f"in flight {gate.in_flight}")

    asyncio.run(main())
    assert order == ["blocked", "in flight 2"]


def test_gate_admits_in_arrival_order() -> None:
    """A request that just left and comes straight back never overtakes one waiting: a
    barging worker would stall the waiter's conversation until the end of the run."""
    gate = InFlightGate(1)
    order: list[str] = []

    async def request(name: str) -> None:
        await gate.enter()
        order.append(name)
        await asyncio.sleep(0)
        await gate.leave()

    async def main() -> None:
        await gate.enter()
        waiting = asyncio.create_task(request("waiting"))
        await asyncio.sleep(0)
        await gate.leave()  # and straight back for the next batch, like a worker
        await request("newcomer")
        await waiting

    asyncio.run(asyncio.wait_for(main(), 5.0))
    assert order == ["waiting", "newcomer"]


def test_gate_cancelled_waiter_gives_its_room_on() -> None:
    gate = InFlightGate(1)

    async def main() -> None:
        await gate.enter()
        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        first.cancel()
        await gate.leave()
        await second
        assert gate.in_flight == 1
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())


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


def test_a_waiting_slot_is_retaken_at_the_lowered_rate() -> None:
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0)
    order: list[tuple[str, float]] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append((name, ft.now))

    async def main() -> None:
        first = asyncio.create_task(waiter("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter("second"))  # reserved a slot 10 ms out
        await asyncio.sleep(0)
        limiter.on_rate_limited(None)  # lowered while it waits
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert len(ft.sleeps) >= 2  # the second one slept again for a slot at the new rate
    assert order[1][1] - order[0][1] > 0.01


def test_a_step_up_keeps_the_token_slots_already_reserved() -> None:
    """Requests waiting on the token schedule take new request slots when the ramp steps
    up, but keep their token slots: reserving tokens again would push every later call
    back (a token-bound run sent 3 calls/s instead of 9 for its first seconds)."""

    async def main(loop: VirtualLoop) -> list[float]:
        limiter = AccountLimiter(50.0, 60_000, clock=loop.time, sleep=asyncio.sleep)
        tickets = [asyncio.ensure_future(limiter.acquire(tokens=100)) for _ in range(30)]
        await asyncio.sleep(1.05)
        limiter.on_success(tickets[0].result())  # latency known after a window: a step up
        return sorted(t.started for t in await asyncio.gather(*tickets))

    starts = run_virtual(main)
    # 30 calls of 100 tokens at 1,000 tokens/s: 2.9 s from the first to the last
    assert starts[-1] - starts[0] == pytest.approx(2.9, abs=0.05)


def test_one_low_count_is_jitter_two_in_a_row_refine() -> None:
    """After the first rejection, a later one of the same event whose second held clearly
    fewer requests lowers the learned ceiling only when the next one agrees: a token
    bucket's counts fall one after the other, a window's jitter is one count here and
    there (a single low count in real time halved the margin of a sliding window)."""
    ft = FakeTime()
    limiter = limiter_at(ft, 100.0, catch_up=0.0)
    tickets = sent_at(limiter, ft, 60.0, 200)  # 60/s for over 3 s, all accepted
    limiter.on_rate_limited(1.0, tickets[120])
    assert limiter.learned_rate == pytest.approx(60.0, abs=1)
    for t in tickets[121:123]:
        t.rejected = True  # the server refused these too
    tickets[124].rejected = True
    tickets[126].rejected = True
    # one count well below (9 of the second before refused): not yet
    late = tickets[140]
    for t in tickets[81:140:5]:
        t.rejected = True
    limiter.on_rate_limited(1.0, late)
    assert limiter.learned_rate == pytest.approx(60.0, abs=1)
    limiter.on_rate_limited(1.0, tickets[141])  # the next agrees: refined
    assert limiter.learned_rate is not None and limiter.learned_rate < 55.0


def test_refused_at_the_configured_rate_settles_without_a_hold() -> None:
    """Once the ramp has reached the configured rate, a rejection there says the ceiling
    is about that rate: the limiter settles at 97% of it at once."""
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.0, ramp=True, overshoot=12.0)
    first = sent_at(limiter, ft, 1000.0, 2)
    ft.now = first[0].started + 1.0
    limiter.on_success(Ticket(ft.now - 0.2, 1.0, 0.0))  # 0.2 s: straight to 99%, 49.5/s
    tickets = sent_at(limiter, ft, 1000.0, 100)
    ft.now += 0.2
    limiter.on_rate_limited(1.0, tickets[-1])
    times = starts(limiter, ft, 5)
    assert times[-1] - times[-2] == pytest.approx(1 / limiter.rate)
    # the second before held 49 sends (jitter met a full window): the ceiling is the
    # configured 50, not 49 (97% of 49 lost 2% of a real-time run at 1 s latency)
    assert limiter.learned_rate == 50.0
    assert limiter.rate == pytest.approx(0.97 * 50.0)


def test_refused_at_the_top_with_fewer_sent_learns_the_count() -> None:
    """At the top of the climb, a rejection whose second held clearly fewer sends than
    the level (others of it were refused) learns that count, not the configured rate."""
    ft = FakeTime()
    limiter = limiter_at(ft, 50.0, catch_up=0.0, ramp=True, overshoot=12.0)
    first = sent_at(limiter, ft, 1000.0, 2)
    ft.now = first[0].started + 1.0
    limiter.on_success(Ticket(ft.now - 0.2, 1.0, 0.0))
    tickets = sent_at(limiter, ft, 1000.0, 100)
    for t in tickets[-40:-1:4]:
        t.rejected = True  # 10 of the last second refused: the server allows about 40
    ft.now += 0.2
    limiter.on_rate_limited(1.0, tickets[-1])
    assert limiter.learned_rate == pytest.approx(39.0, abs=1.0)


def test_a_refusal_counts_sends_up_to_its_estimated_arrival() -> None:
    """The server counts by arrival: a refused request held up on its way (answered 0.3 s
    later than the fastest answer) was counted after the requests that started meanwhile.
    Counting only those started before it learned 35 where the server counted 50."""
    ft = FakeTime()
    limiter = limiter_at(ft, 60.0, catch_up=0.0)
    sent_at(limiter, ft, 50.0, 1)
    limiter.on_success(Ticket(ft.now - 0.2, 1.0, 0.0))  # the fastest answer: 0.2 s
    ft.now += 2.0  # nothing to send for a while
    sent_at(limiter, ft, 50.0, 35)  # 0.7 s at 50/s
    refused = sent_at(limiter, ft, 50.0, 1)[0]
    sent_at(limiter, ft, 50.0, 15)  # started after it, arrived before it (held up 0.3 s)
    ft.now = refused.started + 0.2 + 0.3
    limiter.on_rate_limited(1.0, refused)
    assert limiter.learned_rate == pytest.approx(50.0, abs=1.0)


def test_a_refusal_answered_late_after_the_last_sends_keeps_their_count() -> None:
    """An answer slow for another reason (the server, the way back) puts the estimated
    arrival after the last sends: that second is emptier than the one the server counted,
    so the count up to the request's start is kept when it is larger."""
    ft = FakeTime()
    limiter = limiter_at(ft, 60.0, catch_up=0.0)
    sent_at(limiter, ft, 50.0, 1)
    limiter.on_success(Ticket(ft.now - 0.2, 1.0, 0.0))  # the fastest answer: 0.2 s
    tickets = sent_at(limiter, ft, 50.0, 100)  # 2 s at 50/s, then nothing more to send
    refused = tickets[-1]
    ft.now = refused.started + 0.2 + 0.8
    limiter.on_rate_limited(1.0, refused)
    assert limiter.learned_rate == pytest.approx(50.0, abs=1.0)  # not the 10 after it
