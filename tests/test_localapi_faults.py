"""Each fault knob of the local server measurably takes effect (counted outcomes, seeded)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.core.memos_api import load_spec
from pipeline.server import (
    LocalServer,
    ServerConfig,
    start_server,
)
from pipeline.server.faults import FaultConfig, FaultInjector, ForcedAnswer, parse_forced
from pipeline.server.store import message_counts
from tests.conftest import response_validator


class FixedClock:
    """A clock that only moves when told, so the QPS bucket refills exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body(conversation_id: str = "c", content: str = "hello") -> dict[str, object]:
    return {
        "user_id": "u",
        "conversation_id": conversation_id,
        "messages": [{"role": "user", "content": content}],
    }


ADD_RESPONSE = response_validator(load_spec(), "AddMessageResponse")


def _outcome(http: httpx.Client, body: dict[str, object] | None = None) -> str:
    """One addMessage, summarized as 'http<status>/code<code>' or the transport error.

    Every answer, injected or not, must still match the spec's response schema.
    """
    try:
        r = http.post("/add/message", json=body or _body())
    except httpx.TransportError as exc:
        return type(exc).__name__
    ADD_RESPONSE.validate(r.json())
    return f"http{r.status_code}/code{r.json()['code']}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


def _serve(db: Path, faults: FaultConfig, clock: FixedClock | None = None) -> LocalServer:
    config = ServerConfig(db_path=db, faults=faults)
    return start_server(config, clock=clock) if clock else start_server(config)


MakeClient = Callable[[LocalServer], httpx.Client]


@pytest.fixture
def client() -> Iterator[MakeClient]:
    clients: list[httpx.Client] = []

    def make(server: LocalServer) -> httpx.Client:
        c = httpx.Client(base_url=server.url, timeout=10)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def _stored(db: Path) -> int:
    return sum(message_counts(db).values())


def test_no_faults_by_default(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig()) as server:
        http = client(server)
        outcomes = Counter(_outcome(http) for _ in range(30))
    assert outcomes == {"http200/code0": 30}
    assert not FaultConfig().active


def test_latency_with_jitter_delays_every_request(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig(latency_ms=20, jitter_ms=30, seed=1)) as server:
        http = client(server)
        started = time.monotonic()
        outcomes = Counter(_outcome(http) for _ in range(10))
        elapsed_ms = (time.monotonic() - started) * 1000
        stats = server.stats
    assert outcomes == {"http200/code0": 10}
    assert 10 * 20 <= stats.injected_latency_ms <= 10 * 50
    assert stats.injected_latency_ms > 10 * 20  # the jitter added something
    assert elapsed_ms >= stats.injected_latency_ms * 0.9  # the server really waited


@pytest.mark.parametrize(("style", "status"), [("http429", 429), ("code40300", 200)])
def test_qps_limit_rate_limits_above_the_ceiling(
    db: Path, client: MakeClient, style: str, status: int
) -> None:
    clock = FixedClock()
    faults = FaultConfig(qps_limit=3, rate_limit_style=style, retry_after=2.5)  # type: ignore[arg-type]
    with _serve(db, faults, clock) as server:
        http = client(server)
        responses = [http.post("/add/message", json=_body()) for _ in range(10)]
        clock.now += 1.0  # one second refills 3 requests
        later = Counter(_outcome(http) for _ in range(5))
        stats = server.stats
    codes = Counter(r.json()["code"] for r in responses)
    assert codes == {0: 3, 40300: 7}
    limited = [r for r in responses if r.json()["code"] == 40300]
    assert {r.status_code for r in limited} == {status}
    assert {r.headers["retry-after"] for r in limited} == {"2.5"}
    assert later == {"http200/code0": 3, f"http{status}/code40300": 2}
    assert stats.rate_limited == 9 and _stored(db) == 6


def test_retry_after_can_be_omitted(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig(qps_limit=1, retry_after=None), FixedClock()) as server:
        http = client(server)
        http.post("/add/message", json=_body())
        r = http.post("/add/message", json=_body())
    assert r.status_code == 429 and "retry-after" not in r.headers


def _fail_run(db: Path, client: MakeClient, seed: int) -> list[str]:
    with _serve(db, FaultConfig(fail_rate=0.3, seed=seed)) as server:
        http = client(server)
        outcomes = [_outcome(http) for _ in range(200)]
        stats = server.stats
    counts = Counter(outcomes)
    failures = 200 - counts["http200/code0"]
    assert failures == stats.injected_failures
    assert 30 <= failures <= 90  # 60 expected; binomial sd ~6.5
    assert set(counts) == {
        "http200/code0",
        "http500/code50000",
        "http503/code50004",
        "http200/code50000",
        "http200/code50004",
    }
    assert _stored(db) == counts["http200/code0"]
    return outcomes


def test_fail_rate_injects_transient_failures_repeatably(
    tmp_path: Path, client: MakeClient
) -> None:
    first = _fail_run(tmp_path / "a.sqlite", client, seed=11)
    again = _fail_run(tmp_path / "b.sqlite", client, seed=11)
    other = _fail_run(tmp_path / "c.sqlite", client, seed=12)
    assert first == again
    assert first != other


def test_drop_before_storing_loses_the_request(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig(drop_before_rate=0.5, seed=3)) as server:
        http = client(server)
        outcomes = Counter(_outcome(http, _body(content=f"m{i}")) for i in range(60))
        stats = server.stats
    assert set(outcomes) == {"http200/code0", "RemoteProtocolError"}
    assert outcomes["RemoteProtocolError"] == stats.dropped_before
    assert 15 <= stats.dropped_before <= 45
    assert _stored(db) == outcomes["http200/code0"]


def test_drop_after_storing_commits_but_loses_the_answer(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig(drop_after_rate=0.5, seed=4)) as server:
        http = client(server)
        outcomes = Counter(_outcome(http, _body(content=f"m{i}")) for i in range(60))
        stats = server.stats
    assert set(outcomes) == {"http200/code0", "RemoteProtocolError"}
    assert outcomes["RemoteProtocolError"] == stats.dropped_after
    assert 15 <= stats.dropped_after <= 45
    assert _stored(db) == 60  # every request was committed, answered or not
    assert stats.messages_stored == 60


def test_forced_answers_for_the_next_n_requests(db: Path, client: MakeClient) -> None:
    forced = (ForcedAnswer(code=40304, times=2),)
    with _serve(db, FaultConfig(forced=forced)) as server:
        http = client(server)
        outcomes = [_outcome(http) for _ in range(4)]
        server.force(ForcedAnswer(code=40100, times=1))
        server.force(ForcedAnswer(code=50004, http_status=503, times=1))
        outcomes += [_outcome(http) for _ in range(3)]
        stats = server.stats
    assert outcomes == [
        "http200/code40304",
        "http200/code40304",
        "http200/code0",
        "http200/code0",
        "http200/code40100",
        "http503/code50004",
        "http200/code0",
    ]
    assert stats.forced == 4 and _stored(db) == 3


def test_forced_answers_for_one_conversation(db: Path, client: MakeClient) -> None:
    forced = (
        ForcedAnswer(code=40305, conversation_id="big"),
        ForcedAnswer(action="drop_after", conversation_id="flaky", times=1),
    )
    with _serve(db, FaultConfig(forced=forced)) as server:
        http = client(server)
        outcomes = [
            _outcome(http, _body(conv)) for conv in ["big", "ok", "big", "flaky", "flaky", "ok"]
        ]
        server.clear_forced()
        after_clear = _outcome(http, _body("big"))
    assert outcomes == [
        "http200/code40305",
        "http200/code0",
        "http200/code40305",
        "RemoteProtocolError",
        "http200/code0",
        "http200/code0",
    ]
    assert after_clear == "http200/code0"
    assert message_counts(db) == {("u", "ok"): 2, ("u", "flaky"): 2, ("u", "big"): 1}


def test_forced_answers_can_target_one_path(db: Path, client: MakeClient) -> None:
    with _serve(db, FaultConfig(forced=(ForcedAnswer(code=50000, path="/get/status"),))) as s:
        http = client(s)
        add = http.post("/add/message", json=_body()).json()
        status = http.post("/get/status", json={"task_id": add["data"]["task_id"]}).json()
    assert add["code"] == 0 and status["code"] == 50000


def test_injector_is_repeatable_without_a_server() -> None:
    cfg = FaultConfig(
        fail_rate=0.2, drop_before_rate=0.1, drop_after_rate=0.1, jitter_ms=5, seed=99
    )
    one = FaultInjector(cfg, lambda: 0.0)
    two = FaultInjector(cfg, lambda: 0.0)
    a = [one.decide("/add/message", "c") for _ in range(300)]
    b = [two.decide("/add/message", "c") for _ in range(300)]
    assert a == b
    kinds = Counter(d.kind for d in a)
    assert set(kinds) == {"pass", "fail", "drop_before", "drop_after"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("40304", ForcedAnswer(code=40304)),
        ("40304x3", ForcedAnswer(code=40304, times=3)),
        ("50004/503@conv-7", ForcedAnswer(code=50004, http_status=503, conversation_id="conv-7")),
        ("drop-afterx1@c1", ForcedAnswer(action="drop_after", times=1, conversation_id="c1")),
        ("drop-before", ForcedAnswer(action="drop_before")),
    ],
)
def test_parse_forced(spec: str, expected: ForcedAnswer) -> None:
    assert parse_forced(spec) == expected


@pytest.mark.parametrize("spec", ["", "abc", "40304x0", "0", "40304@", "x3"])
def test_parse_forced_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ValueError, match="--force"):
        parse_forced(spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": 1.5},
        {"drop_after_rate": -0.1},
        {"latency_ms": -1},
        {"qps_limit": 0},
        {"rate_limit_style": "http418"},
    ],
)
def test_fault_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


def test_forcing_at_run_time_works_on_a_server_started_without_faults(
    db: Path, client: MakeClient
) -> None:
    with _serve(db, FaultConfig()) as server:
        http = client(server)
        before = _outcome(http)
        server.force(ForcedAnswer(code=40304, times=1))
        outcomes = [before, _outcome(http), _outcome(http)]
    assert outcomes == ["http200/code0", "http200/code40304", "http200/code0"]


def test_a_forced_answer_can_carry_retry_after(db: Path, client: MakeClient) -> None:
    forced = (ForcedAnswer(code=40300, http_status=429, retry_after=0.25, times=1),)
    with _serve(db, FaultConfig(forced=forced)) as server:
        http = client(server)
        limited = http.post("/add/message", json=_body())
        ok = http.post("/add/message", json=_body())
    assert (limited.status_code, limited.json()["code"]) == (429, 40300)
    assert limited.headers["retry-after"] == "0.25"
    assert ok.json()["code"] == 0 and "retry-after" not in ok.headers
