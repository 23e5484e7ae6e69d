"""Fault injection for the local API server: the misbehaviour of a real cloud, on demand.

Every knob is off by default. `FaultConfig` is the immutable setting; `FaultInjector` is the
per-server state that turns it into one `Decision` per request (random draws, the request
and token windows, forced answers still owed). One injector belongs to one server; nothing
is global.

Limits are counted the way a real service may count them (`limit_mode`):
- `sliding`: at most N in any window ending now (a sliding log; the strictest);
- `fixed`: at most N per aligned window (1 s, 60 s): up to 2N across a boundary;
- `bucket`: a token bucket of N refilled at N per window (bursts of N, then the rate).
Requests per second are counted per user id named (a group-chat request for 3 users
costs 3); tokens per minute count each add/message call's input tokens (code 40309).

Repeatability: with `seed` set, the injector draws the same five random numbers per request in
a fixed order whichever knobs are on, so the same request sequence meets the same faults.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

RateLimitStyle = Literal["http429", "code40300"]
LimitMode = Literal["sliding", "fixed", "bucket"]
LIMIT_MODES: tuple[LimitMode, ...] = ("sliding", "fixed", "bucket")
TOKEN_LIMIT_CODE = 40309
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

    Rates are probabilities per request in [0, 1]. `qps_limit` allows that many requests
    per second, counted per `limit_mode` (`bucket`: a token bucket of `max(1, qps_limit)`);
    above it the server answers rate-limited in `rate_limit_style`: HTTP 429 +
    `Retry-After`, or HTTP 200 with body code 40300 (also with `Retry-After`).
    `retry_after` None omits the header. `tpm_limit` allows that many input tokens per
    minute of add/message calls (same mode); above it: code 40309 (same style), with a
    Retry-After of the seconds until the call would fit.
    """

    latency_ms: float = 0
    jitter_ms: float = 0
    qps_limit: float | None = None
    limit_mode: LimitMode = "bucket"
    tpm_limit: int | None = None
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
        if self.tpm_limit is not None and self.tpm_limit <= 0:
            raise ValueError("FaultConfig.tpm_limit must be positive (or None for no limit)")
        if self.limit_mode not in LIMIT_MODES:
            raise ValueError(f"unknown limit_mode {self.limit_mode!r}")
        if self.rate_limit_style not in ("http429", "code40300"):
            raise ValueError(f"unknown rate_limit_style {self.rate_limit_style!r}")

    @property
    def active(self) -> bool:
        """True when any knob is on."""
        return bool(
            self.latency_ms
            or self.jitter_ms
            or self.qps_limit
            or self.tpm_limit
            or self.fail_rate
            or self.drop_before_rate
            or self.drop_after_rate
            or self.forced
        )


Kind = Literal[
    "pass", "answer", "rate_limited", "token_limited", "fail", "drop_before", "drop_after"
]


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


class Window:
    """Admits amounts (requests, tokens) up to `limit` per `window` seconds, in one mode.

    An amount larger than the whole limit is admitted into an empty window (otherwise it
    could never pass; the per-call limit is a separate check).
    """

    def __init__(self, mode: LimitMode, limit: float, window: float, now: float) -> None:
        self.mode, self.limit, self.window = mode, limit, window
        self._log: deque[tuple[float, float]] = deque()
        self._total = 0.0
        self._slot = math.floor(now / window)
        self._capacity = max(1.0, limit)
        self._level = self._capacity
        self._last = now

    def admit(self, now: float, amount: float) -> float:
        """0.0 when `amount` fits now (and is counted), else seconds until it would fit."""
        if self.mode == "sliding":
            while self._log and self._log[0][0] <= now - self.window:
                self._total -= self._log.popleft()[1]
            if self._total + amount <= self.limit or not self._log:
                self._log.append((now, amount))
                self._total += amount
                return 0.0
            need, freed = self._total + amount - self.limit, 0.0
            for t, a in self._log:
                freed += a
                if freed >= need:
                    return max(t + self.window - now, 1e-3)
            return self.window
        if self.mode == "fixed":
            slot = math.floor(now / self.window)
            if slot != self._slot:
                self._slot, self._total = slot, 0.0
            if self._total + amount <= self.limit or self._total == 0:
                self._total += amount
                return 0.0
            return max((slot + 1) * self.window - now, 1e-3)
        rate = self.limit / self.window
        self._level = min(self._capacity, self._level + (now - self._last) * rate)
        self._last = now
        if self._level >= min(amount, self._capacity):
            self._level -= amount
            return 0.0
        return max((min(amount, self._capacity) - self._level) / rate, 1e-3)


class FaultInjector:
    """Turns a `FaultConfig` into per-request decisions; thread-safe.

    `clock` (seconds, monotonic) drives the request and token windows; tests pass a fixed
    clock so the number of rate-limited answers is exact.
    """

    def __init__(self, config: FaultConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._rules = [_Rule(a, a.times) for a in config.forced]
        now = clock()
        mode = config.limit_mode
        self._requests = Window(mode, config.qps_limit, 1.0, now) if config.qps_limit else None
        self._tokens = Window(mode, config.tpm_limit, 60.0, now) if config.tpm_limit else None

    def force(self, answer: ForcedAnswer) -> None:
        """Add a forced answer at run time (checked after the ones already queued)."""
        with self._lock:
            self._rules.append(_Rule(answer, answer.times))

    def clear_forced(self) -> None:
        """Forget every forced answer still owed."""
        with self._lock:
            self._rules.clear()

    def decide(
        self, path: str, conversation_id: str | None, *, weight: int = 1, tokens: int = 0
    ) -> Decision:
        """The fate of one request to `path` (for `conversation_id`, when the body has one),
        costing `weight` requests and `tokens` input tokens."""
        cfg = self.config
        if not cfg.active and not self._rules:
            return PASS
        with self._lock:
            draws = [self._rng.random() for _ in range(5)]
            delay = (cfg.latency_ms + cfg.jitter_ms * draws[0]) / 1000.0
            forced = self._take_forced(path, conversation_id)
            if forced is not None:
                return _forced_decision(forced, delay)
            now = self._clock()
            if self._requests is not None and self._requests.admit(now, weight):
                return self._rate_limited(delay)
            if self._tokens is not None and tokens:
                wait = self._tokens.admit(now, tokens)
                if wait:
                    return self._token_limited(delay, wait)
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

    def _rate_limited(self, delay: float) -> Decision:
        cfg = self.config
        status = 429 if cfg.rate_limit_style == "http429" else 200
        return Decision("rate_limited", delay, status, 40300, retry_after=cfg.retry_after)

    def _token_limited(self, delay: float, wait: float) -> Decision:
        status = 429 if self.config.rate_limit_style == "http429" else 200
        retry_after = math.ceil(wait * 10) / 10
        return Decision(
            "token_limited",
            delay,
            status,
            TOKEN_LIMIT_CODE,
            "too many input tokens this minute",
            retry_after=retry_after,
        )


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
