"""Fault injection for the local API server: the misbehaviour of a real cloud, on demand.

Every knob is off by default. `FaultConfig` is the immutable setting; `FaultInjector` is the
per-server state that turns it into one `Decision` per request (random draws, the QPS token
bucket, forced answers still owed). One injector belongs to one server; nothing is global.

Repeatability: with `seed` set, the injector draws the same five random numbers per request in
a fixed order whichever knobs are on, so the same request sequence meets the same faults.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

RateLimitStyle = Literal["http429", "code40300"]
ForcedAction = Literal["answer", "drop_before", "drop_after"]

TRANSIENT_FAILURES: tuple[tuple[int, int], ...] = (
    (500, 50000),
    (503, 50004),
    (200, 50000),
    (200, 50004),
)
"""(HTTP status, body code) pairs a transient failure is drawn from, with equal weight."""


@dataclass(frozen=True)
class ForcedAnswer:
    """Answer matching requests with a chosen outcome instead of handling them.

    `code` is the body code (e.g. 40304 quota exhausted, 40100 missing token, 40305 input
    too long, 40000 invalid); `http_status` stays 200 like the cloud unless set (429, 500...).
    `action` "drop_before" / "drop_after" drops the connection before or after storing
    instead (then `code` is ignored). `times` limits it to the next N matching requests
    (None: every one); `conversation_id` and `path` narrow which requests match.
    """

    code: int = 50000
    times: int | None = None
    conversation_id: str | None = None
    path: str | None = None
    http_status: int = 200
    action: ForcedAction = "answer"
    message: str | None = None
    retry_after: float | None = None
    """Seconds for a `Retry-After` header on the forced answer (None: no header)."""

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 1:
            raise ValueError("ForcedAnswer.times must be at least 1 (or None for always)")
        if self.action == "answer" and self.code == 0:
            raise ValueError("ForcedAnswer.code must be an error code, not 0")


@dataclass(frozen=True)
class FaultConfig:
    """What the server should get wrong, and how often. All off by default.

    Rates are probabilities per request in [0, 1]. `qps_limit` is a token bucket of
    `max(1, qps_limit)` requests refilled at `qps_limit` per second; above it the server
    answers rate-limited in `rate_limit_style`: HTTP 429 + `Retry-After`, or HTTP 200 with
    body code 40300 (also with `Retry-After`). `retry_after` None omits the header.
    """

    latency_ms: float = 0
    jitter_ms: float = 0
    qps_limit: float | None = None
    rate_limit_style: RateLimitStyle = "http429"
    retry_after: float | None = 1.0
    fail_rate: float = 0
    drop_before_rate: float = 0
    drop_after_rate: float = 0
    seed: int | None = None
    forced: tuple[ForcedAnswer, ...] = ()

    def __post_init__(self) -> None:
        for name in ("fail_rate", "drop_before_rate", "drop_after_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"FaultConfig.{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("FaultConfig latency_ms and jitter_ms must not be negative")
        if self.qps_limit is not None and self.qps_limit <= 0:
            raise ValueError("FaultConfig.qps_limit must be positive (or None for no limit)")
        if self.rate_limit_style not in ("http429", "code40300"):
            raise ValueError(f"unknown rate_limit_style {self.rate_limit_style!r}")

    @property
    def active(self) -> bool:
        """True when any knob is on."""
        return bool(
            self.latency_ms
            or self.jitter_ms
            or self.qps_limit
            or self.fail_rate
            or self.drop_before_rate
            or self.drop_after_rate
            or self.forced
        )


Kind = Literal["pass", "answer", "rate_limited", "fail", "drop_before", "drop_after"]


@dataclass(frozen=True)
class Decision:
    """What to do with one request. `kind` "pass" handles it normally (after `delay_s`)."""

    kind: Kind = "pass"
    delay_s: float = 0.0
    http_status: int = 200
    code: int = 0
    message: str | None = None
    retry_after: float | None = None


PASS = Decision()


@dataclass
class _Rule:
    answer: ForcedAnswer
    remaining: int | None = field(default=None)


class FaultInjector:
    """Turns a `FaultConfig` into per-request decisions; thread-safe.

    `clock` (seconds, monotonic) drives the QPS bucket; tests pass a fixed clock so the
    number of rate-limited answers is exact.
    """

    def __init__(self, config: FaultConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._rules = [_Rule(a, a.times) for a in config.forced]
        capacity = max(1.0, config.qps_limit) if config.qps_limit else 0.0
        self._capacity = capacity
        self._tokens = capacity
        self._last = clock()

    def force(self, answer: ForcedAnswer) -> None:
        """Add a forced answer at run time (checked after the ones already queued)."""
        with self._lock:
            self._rules.append(_Rule(answer, answer.times))

    def clear_forced(self) -> None:
        """Forget every forced answer still owed."""
        with self._lock:
            self._rules.clear()

    def decide(self, path: str, conversation_id: str | None) -> Decision:
        """The fate of one request to `path` (for `conversation_id`, when the body has one)."""
        cfg = self.config
        if not cfg.active and not self._rules:
            return PASS
        with self._lock:
            draws = [self._rng.random() for _ in range(5)]
            delay = (cfg.latency_ms + cfg.jitter_ms * draws[0]) / 1000.0
            forced = self._take_forced(path, conversation_id)
            if forced is not None:
                return _forced_decision(forced, delay)
            if cfg.qps_limit and not self._take_token():
                return self._rate_limited(delay)
        if draws[1] < cfg.fail_rate:
            status, code = TRANSIENT_FAILURES[int(draws[2] * len(TRANSIENT_FAILURES))]
            return Decision("fail", delay, status, code)
        if draws[3] < cfg.drop_before_rate:
            return Decision("drop_before", delay)
        if draws[4] < cfg.drop_after_rate:
            return Decision("drop_after", delay)
        return Decision("pass", delay)

    def _take_forced(self, path: str, conversation_id: str | None) -> ForcedAnswer | None:
        for i, rule in enumerate(self._rules):
            a = rule.answer
            if a.path is not None and a.path != path:
                continue
            if a.conversation_id is not None and a.conversation_id != conversation_id:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    del self._rules[i]
            return a
        return None

    def _take_token(self) -> bool:
        now = self._clock()
        rate = self.config.qps_limit or 0.0
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _rate_limited(self, delay: float) -> Decision:
        cfg = self.config
        status = 429 if cfg.rate_limit_style == "http429" else 200
        return Decision("rate_limited", delay, status, 40300, retry_after=cfg.retry_after)


def _forced_decision(answer: ForcedAnswer, delay: float) -> Decision:
    if answer.action != "answer":
        return Decision(answer.action, delay)
    return Decision(
        "answer", delay, answer.http_status, answer.code, answer.message, answer.retry_after
    )


def parse_forced(spec: str) -> ForcedAnswer:
    """Parse the CLI form `WHAT[xN][@CONVERSATION_ID]` into a `ForcedAnswer`.

    WHAT is a body code (`40304`), `CODE/STATUS` for another HTTP status (`50000/503`), or
    `drop-before` / `drop-after`. Examples: `40304x3` (next three requests), `40305@conv-7`
    (every request for conversation conv-7), `drop-afterx1@conv-7`.
    """
    text = spec.strip()
    conversation_id: str | None = None
    if "@" in text:
        text, conversation_id = text.split("@", 1)
        if not conversation_id:
            raise ValueError(f"--force {spec!r}: empty conversation id after '@'")
    times: int | None = None
    head, sep, count = text.rpartition("x")
    if sep and count.isdigit() and head:
        text, times = head, int(count)
    try:
        if text in ("drop-before", "drop-after"):
            action: ForcedAction = "drop_before" if text == "drop-before" else "drop_after"
            return ForcedAnswer(times=times, conversation_id=conversation_id, action=action)
        code_text, _, status_text = text.partition("/")
        return ForcedAnswer(
            code=int(code_text),
            times=times,
            conversation_id=conversation_id,
            http_status=int(status_text) if status_text else 200,
        )
    except ValueError as exc:
        raise ValueError(
            f"--force {spec!r}: expected CODE[/STATUS][xN][@CONVERSATION_ID] or "
            f"drop-before/drop-after ({exc})"
        ) from None
