"""The client side of an account's budget: requests per second and input tokens per minute.

MemOS Cloud limits an *account* (every project and key of it) on two budgets at once: about
50 requests per second (answer 40300 / HTTP 429 beyond it) and 400,000 input tokens per
minute (answer 40309). `AccountLimiter` hands out request start times that respect both:

- **Two schedules (GCRA).** Each budget is a "virtual scheduling" token bucket: a request of
  weight `requests=N, tokens=T` reserves `N / rate` seconds of the request schedule and
  `T / token_rate` seconds of the token schedule, and starts when both are free. Slots are
  reserved before sleeping, so callers queue fairly, and the spacing is even: a strict
  sliding-window server never sees a burst. `N` is the request's QPS weight (a group-chat
  request naming N users costs N); `T` its input tokens.
- **Learning the real ceiling.** A rate-limit answer means the server's ceiling is what we
  sent in the window before that request reached it: for requests, the accepted starts of
  the second before its estimated arrival (answer time less the fastest latency seen);
  for tokens, the accepted tokens of the minute before it. The limiter settles at
  `settle` (97%) of that, once per congestion event (answers to requests started before the
  cut are the same event), and then stays there: it probes upward by `probe_step` of the
  configured ceiling only after `probe_every` seconds without a rejection. The old limiter
  cut by 25% and climbed straight back within seconds, so against a strict sliding window it
  oscillated around 60-75% of the ceiling; this one holds ~97% and is rejected about once per
  `probe_every * (1 - settle) / probe_step` seconds. A request still waiting for a slot
  reserved at the old rate when the budget is lowered takes a new slot at the new rate.
- **Retry-After.** A rejection's own retry waits its Retry-After (the loader's backoff). The
  limiter additionally pauses *every* start when the server asks for longer than one
  `window` (a longer pause is a statement about the account, not about one request), capped
  at `max_pause`; for 40309 the token schedule is pushed back by the (capped) Retry-After.
- **A stepped start.** Until the first rejection the request budget climbs from half the
  configured rate in steps sized by the observed latency, each held until a token
  bucket's burst would have drained (`_climb`), up to 99% of it; right after the first
  rejection it holds the last level shown safe for one latency (`_confirm`). A first
  rejection at the top, with about the top counted, learns the configured rate itself.
  docs/loader.md has the figures.
- **Late wakes.** A request woken more than one interval after its slot (a busy event
  loop) takes a new slot instead of leaving with the others woken late.
- **Catch-up.** Slots missed while every worker was busy may be caught up within `catch_up`
  seconds, until the first rejection: a server that rejects has shown that it counts
  strictly, so from then on starts stay evenly spaced.

A budget given as None is unlimited (the embedded local server needs no client-side limit).
Clock and sleep are injected so tests run instantly; not thread-safe (one asyncio loop).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

REQUEST_WINDOW = 1.0
"""Seconds over which a requests-per-second limit is counted (MemOS: per second)."""
TOKEN_WINDOW = 60.0
"""Seconds over which a tokens-per-minute limit is counted."""
RAMP_FROM = 0.5
"""Until the first answer, the share of the configured request rate sent: the server's
ceiling is assumed to be at least this share of what the user configured."""
SNAP = 0.25
"""A climb's step also takes the rest of the way to the top when that rest is less than this
share of the step: a latency a little over 1 s (12 requests/s steps of 11.2) otherwise
left a third step of 1.3/s, held 4 s."""
REFINE_BY = 2.5
"""A later rejection of the same event lowers the learned ceiling when the server accepted
at least this many requests (per second) fewer than learned: counts, not shares, so a
request or two of jitter never ratchets the budget down."""


@dataclass
class Ticket:
    """One admitted request: when it started and what it reserved."""

    started: float
    requests: float
    tokens: float
    rejected: bool = False


@dataclass
class _Budget:
    """One schedule: its configured ceiling, current (learned) rate and next free time."""

    ceiling: float | None
    rate: float | None
    floor: float
    window: float
    tat: float = 0.0
    learned: float | None = None
    """The rate (per second) the server rejected at last; None until the first rejection."""
    last_cut: float = float("-inf")
    calm_since: float = 0.0
    rejections: int = 0
    low: float | None = None
    """A count below the learned ceiling not yet confirmed by the next rejection."""

    def interval(self, weight: float, share: float = 1.0) -> float:
        return 0.0 if self.rate is None or weight <= 0 else weight / (self.rate * share)


class AccountLimiter:
    """Hands out request start times within an account's request and token budgets."""

    def __init__(
        self,
        requests_per_second: float | None,
        tokens_per_minute: float | None = None,
        *,
        clock: Clock,
        sleep: Sleep,
        settle: float = 0.97,
        probe_every: float = 60.0,
        probe_step: float = 0.01,
        floor: float = 0.2,
        catch_up: float = 0.1,
        max_pause: float = 60.0,
        cut_every: float = 2.0,
        ramp_from: float = RAMP_FROM,
        overshoot: float = 12.0,
        ramp_to: float = 0.99,
        ramp: bool = True,
        late: float = 1.0,
    ) -> None:
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive (or None: unlimited)")
        if tokens_per_minute is not None and tokens_per_minute <= 0:
            raise ValueError("tokens_per_minute must be positive (or None: unlimited)")
        if not 0 < settle <= 1:
            raise ValueError("settle must be in (0, 1]")
        now = clock()
        rps = requests_per_second
        tps = tokens_per_minute / TOKEN_WINDOW if tokens_per_minute is not None else None
        # no catch-up at the start: nothing was missed yet, and a burst would break a strict window
        self._req = _Budget(
            rps, rps, min(floor, rps or floor), REQUEST_WINDOW, tat=now + catch_up, calm_since=now
        )
        self._tok = _Budget(tps, tps, (tps or 0.0) * 0.01, TOKEN_WINDOW, calm_since=now)
        self.settle = settle
        self.probe_every = probe_every
        self.probe_step = probe_step
        self.catch_up = catch_up
        self.max_pause = max_pause
        self.cut_every = cut_every
        self.ramp_from = ramp_from
        self.overshoot = overshoot
        self.ramp_to = ramp_to
        self.ramp = ramp and rps is not None
        self.late = late
        self._started = now
        self._latency: float | None = None
        """Smoothed seconds from a request's start to its answer (None: no answer yet)."""
        self._fastest = float("inf")
        """The shortest start-to-answer seconds seen: the part of a latency that is not delay
        on the way out (what estimates when a refused request reached the server)."""
        blind = (rps or 0.0) * ramp_from if self.ramp else (rps or 0.0)
        self._level = blind
        """Requests/s the ramp allows now (the whole budget once the ramp is over)."""
        self._proven = blind
        """The highest level held long enough to show it is below the server's ceiling."""
        self._level_since = now
        self._confirm_until = float("-inf")
        self._confirm_rate = float("inf")
        self._clock = clock
        self._sleep = sleep
        self._paused_until = float("-inf")
        self._recent: deque[Ticket] = deque()
        self._epoch = 0
        self._tok_epoch = 0
        """Bumped whenever the token budget is lowered or its schedule pushed back."""
        """Bumped whenever a budget is lowered or starts are paused."""

    # --- what callers and reports read ----------------------------------------------------

    @property
    def rate(self) -> float | None:
        """Current requests-per-second budget (None: unlimited)."""
        return self._req.rate

    @property
    def pace(self) -> float | None:
        """Requests/s allowed now: the ramp's level before the first rejection, the safe
        level while its answers are in flight, else the budget (None: unlimited). The
        in-flight gate is sized by it, so no more requests wait for a start than the pace
        needs (a waiting request holds a start time reserved at the pace it was taken)."""
        rate = self._req.rate
        return None if rate is None else rate * self._share(self._clock())

    @property
    def tokens_per_minute(self) -> float | None:
        """Current input-tokens-per-minute budget (None: unlimited)."""
        return None if self._tok.rate is None else self._tok.rate * TOKEN_WINDOW

    @property
    def learned_rate(self) -> float | None:
        """Requests/s the server last rejected at (None: never rejected)."""
        return self._req.learned

    @property
    def learned_tokens_per_minute(self) -> float | None:
        """Tokens/min the server last rejected at (None: never rejected)."""
        learned = self._tok.learned
        return None if learned is None else learned * TOKEN_WINDOW

    @property
    def rate_limited(self) -> int:
        """Requests answered "too many requests" (40300 / 429)."""
        return self._req.rejections

    @property
    def token_limited(self) -> int:
        """Requests answered "too many tokens this minute" (40309)."""
        return self._tok.rejections

    # --- admission ------------------------------------------------------------------------

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> Ticket:
        """Wait until a request of this weight may start within both budgets; returns its
        ticket (pass it to `on_success` / `on_rate_limited` / `on_token_limited`).

        Cancelled while waiting, it hands out no ticket: the request is not counted as
        sent, and its slot stays spent (later requests keep their spacing)."""
        req, tok = self._req, self._tok
        tok_slot: float | None = None
        """This request's token slot once reserved: taking a new request slot (the ramp
        stepped up, the request budget was cut) keeps it, so tokens are not reserved twice;
        only a change of the token budget itself takes a new one."""
        tok_epoch = self._tok_epoch
        retaken = False
        while True:
            now = self._clock()
            if req.learned is None and self.ramp:
                self._climb(now)
            if self._tok_epoch != tok_epoch:
                tok_slot, tok_epoch = None, self._tok_epoch
            early = self.catch_up if req.learned is None else 0.0
            tok_from = tok.tat if tok_slot is None else tok_slot
            start = max(now, req.tat - early, tok_from, self._paused_until)
            start = max(start, self._window_room(start))
            if req.rate is not None:
                req.tat = max(req.tat, start) + req.interval(requests, self._share(start))
            if tok.rate is not None and tok_slot is None:
                tok.tat = max(tok.tat, start) + tok.interval(tokens)
                tok_slot = start
            if start <= now:
                break
            epoch = self._epoch
            await self._sleep(start - now)
            if self._epoch == epoch:
                woke = self._clock()
                if retaken or woke - start <= self._tolerance(requests, start):
                    start = max(start, woke)  # a little late: count it when it leaves
                    break
                # woken late (a busy event loop): the requests due meanwhile leave now too,
                # and together they would crowd one second; this slot has gone by unused,
                # so take the next free one (once: a loop late on every wake must not
                # keep a request waiting for ever)
                retaken = True
                continue
            # the budget was lowered while this slot waited: a slot reserved at the old
            # rate would only meet the same rejection, so take one at the new rate
        ticket = Ticket(start, requests, tokens)
        self._remember(ticket)
        return ticket

    def _tolerance(self, requests: float, at: float) -> float:
        """How late after its slot a request may still leave: `late` of its own spacing.

        Slots are one interval apart, so sends at most one interval late put at most one
        request more in any window than the rate allows; a request woken later than that
        takes a new slot. That costs the slot it missed (a loop blocked for 0.1 s sends
        0.1 s less), which a strict window would take anyway: requests sent together
        after a stall are refused, and each refusal lowers the budget. Only the request
        schedule is spaced this finely (a token minute does not notice a few ms)."""
        req = self._req
        if req.rate is None or requests <= 0:
            return float("inf")
        return self.late * req.interval(requests, self._share(at))

    def _share(self, at: float) -> float:
        """The share of the request budget usable at `at`: the ramp's level before the
        first rejection, the confirmation rate just after it, else all of it."""
        req = self._req
        if req.rate is None:
            return 1.0
        if req.learned is None:
            if not self.ramp:
                return 1.0
            return min(1.0, self._level / req.rate)
        if at < self._confirm_until:
            return min(1.0, self._confirm_rate / req.rate)
        return 1.0

    def _climb(self, now: float) -> None:
        """Step the ramp up while nothing is learned.

        The configured rate may be above the server's ceiling (the user does not know it),
        and a rejection is heard one latency L after the server began refusing: everything
        sent meanwhile above the ceiling is refused. The ceiling is assumed to be at least
        `ramp_from` of the configured rate, so that is where sending starts; each step up
        from a level shown to be safe is at most `overshoot` / L requests/s (a sliding
        window then refuses at most `overshoot` requests before we hear), and at most
        `overshoot` requests/s unless the new level is itself at most `overshoot` / L (a
        fixed window refuses at most one latency of sends). A level counts as safe once it
        was held for `window x level / step` seconds plus one latency: long enough for a
        token bucket's burst (one window of its rate) to drain if its rate were a step
        below, so a burst cannot hide the ceiling for more than one step.
        """
        req = self._req
        ceiling = None if req.rate is None else req.rate * self.ramp_to
        latency = self._latency
        if ceiling is None or latency is None:
            return  # no answer yet: stay at the level assumed safe
        latency = max(latency, 1e-3)
        while self._level < ceiling:
            step = self._level - self._proven
            # a window must have turned over at this level before a step above it costs
            # only the step (until then the server's window holds less than the level)
            hold = req.window
            if step > 0:
                hold = max(hold, 1.1 * req.window * self._proven / step) + latency
            if now < self._level_since + hold:
                return
            self._level_since = now if step <= 0 else self._level_since + hold
            self._proven = self._level
            budget = self.overshoot / latency
            nxt = min(ceiling, self._level + budget, max(budget, self._level + self.overshoot))
            if ceiling - nxt < SNAP * (nxt - self._level):
                # a last step of a few requests/s would cost a whole hold (4 s at 1 s
                # latency) for almost nothing: take it with this one
                nxt = ceiling
            if nxt <= self._level:
                return
            # slots already reserved keep their times: the new level spaces the next ones
            self._level = nxt

    def _window_room(self, start: float) -> float:
        """The earliest time from `start` at which one more request keeps what was sent
        (and not rejected) in the last request window within the learned budget.

        Even spacing alone is not enough right after a rejection: the server's window still
        holds the requests that filled it, so requests sent at the new rate would meet the
        same full window for up to a second. Counting our own sends in the window (those
        still in flight included) waits exactly until it has room. Before the first
        rejection nothing is known, and nothing waits.
        """
        req = self._req
        if req.learned is None or req.rate is None:
            return start
        # what even spacing at the current rate puts in one window, never above the ceiling
        # learned: in the steady state the count never waits, only after a burst
        cap = max(1, min(math.ceil(req.rate * req.window), math.floor(req.learned * req.window)))
        horizon = start - req.window
        sent: list[float] = []
        for t in reversed(self._recent):
            if t.started <= horizon:
                break
            if not t.rejected:
                sent.append(t.started)
        if len(sent) + 1 <= cap:
            return start
        # sent is newest first: the oldest `excess` must leave the window first
        excess = len(sent) + 1 - cap
        return sent[-excess] + req.window + 1e-6

    def forget(self, ticket: Ticket) -> None:
        """A start handed out and then not used (its load stopped before the request left):
        no longer counted as sent, neither by a rejection's count nor by the window's room.
        Its slot stays spent, so the schedule never runs ahead of the budget. Only needed
        when `acquire` returned without waiting for the start (the Ray budget actor): a
        wait cancelled inside `acquire` reserves no ticket at all."""
        for i, t in enumerate(self._recent):
            if t is ticket:
                del self._recent[i]
                return

    def _remember(self, ticket: Ticket) -> None:
        """Keep the tickets of the last token window (what a rejection is measured against)."""
        if self._req.rate is None and self._tok.rate is None:
            return
        self._recent.append(ticket)
        horizon = ticket.started - TOKEN_WINDOW - self.max_pause
        while self._recent and self._recent[0].started < horizon:
            self._recent.popleft()

    def _arrival(self, started: float, now: float) -> float:
        """When a request answered `now` reached the server, estimated: its answer time less
        the shortest latency seen, never before it started.

        The server counts by arrival, the client by start: a refused request delayed on its
        way (a busy event loop) was counted by the server after requests that started
        later, and counting only those started before it undercounts what the server saw
        (a learned ceiling of 47 or 49 where the server allows 50)."""
        if self._fastest == float("inf"):
            return started
        return max(started, now - self._fastest)

    def _sent_before(self, started: float, window: float) -> tuple[float, float]:
        """(requests, tokens) of accepted tickets that started in `[started - window, started)`."""
        requests = tokens = 0.0
        for t in reversed(self._recent):
            if t.started >= started or t.rejected:
                continue
            if t.started < started - window:
                break
            requests += t.requests
            tokens += t.tokens
        return requests, tokens

    # --- feedback -------------------------------------------------------------------------

    def on_success(self, ticket: Ticket | None = None) -> None:
        """A confirmed request: after `probe_every` calm seconds, raise each budget a step."""
        now = self._clock()
        self._observe(ticket, now)
        for budget in (self._req, self._tok):
            if budget.rate is None or budget.ceiling is None or budget.rate >= budget.ceiling:
                continue
            if now - budget.calm_since >= self.probe_every:
                budget.rate = min(budget.ceiling, budget.rate + self.probe_step * budget.ceiling)
                budget.calm_since = now

    def _observe(self, ticket: Ticket | None, now: float) -> None:
        """Learn the latency (start to answer) that the ramp's steps are sized by."""
        if ticket is None:
            return
        seconds = max(0.0, now - ticket.started)
        self._fastest = min(self._fastest, seconds)
        if not self.ramp:
            return
        self._latency = seconds if self._latency is None else 0.8 * self._latency + 0.2 * seconds
        if self._req.learned is None:
            self._climb(now)

    def on_rate_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        """The server said too many requests: settle below what it accepted, maybe pause."""
        now = self._clock()
        self._observe(ticket, now)
        started = ticket.started if ticket is not None else now
        if ticket is not None:
            ticket.rejected = True
        budget = self._req
        budget.rejections += 1
        if budget.rate is not None:
            # counted up to its start and up to its estimated arrival, the larger: a window
            # moved past the last sends (an answer slow for another reason, the end of a
            # run) must not count the server's second as emptier than it was
            sent = max(
                self._sent_before(started, budget.window)[0],
                self._sent_before(self._arrival(started, now), budget.window)[0],
            )
            self._cut(
                budget, sent / budget.window, now, new_event=self._new_event(budget, started, now)
            )
        if retry_after is not None and retry_after > REQUEST_WINDOW:
            self._paused_until = max(self._paused_until, now + min(retry_after, self.max_pause))
            self._epoch += 1
        if budget.rate is not None:
            # slots already handed out keep their times; new ones are spaced at the new rate
            budget.tat = max(budget.tat, now + 1.0 / budget.rate)

    def on_token_limited(self, retry_after: float | None, ticket: Ticket | None = None) -> None:
        """The server said too many tokens this minute (40309): settle the token budget below
        what it accepted over the last minute, and push the token schedule past Retry-After."""
        now = self._clock()
        started = ticket.started if ticket is not None else now
        if ticket is not None:
            ticket.rejected = True
        budget = self._tok
        budget.rejections += 1
        if budget.rate is None:
            return
        _, sent = self._sent_before(started, budget.window)
        self._cut(
            budget, sent / budget.window, now, new_event=self._new_event(budget, started, now)
        )
        if retry_after is not None and retry_after > 0:
            budget.tat = max(budget.tat, now + min(retry_after, self.max_pause))
            self._epoch += 1
            self._tok_epoch += 1

    def _new_event(self, budget: _Budget, started: float, now: float) -> bool:
        """A rejection is a new congestion event when its request left after the last cut
        and at least `cut_every` seconds have passed: a server refusing a share of requests
        whatever the rate (noise, another client) then costs 3% per `cut_every`, not 3% per
        answer."""
        return started >= budget.last_cut and now - budget.last_cut >= self.cut_every

    def _cut(self, budget: _Budget, observed: float, now: float, *, new_event: bool) -> None:
        """Settle at `settle` x the rate the server rejected at: what it accepted over its
        window before the rejected request (the current rate when that is higher or unknown).

        A rejection of a request sent before the last cut belongs to the same event: it
        never cuts again, but may refine the estimate downward (a token-bucket server
        accepts a burst first, so the first window overstates its rate); only a clearly
        lower figure counts, so noise does not ratchet the budget down.
        """
        assert budget.rate is not None
        if new_event:
            # at most halved per event: a rejection early in a run, or one unrelated to
            # the rate, must not collapse the budget to the few requests sent so far
            cause = (
                budget.rate if observed <= 0 else max(min(budget.rate, observed), budget.rate / 2)
            )
            if budget is self._req and self._at_the_top(observed):
                cause = budget.rate  # the ceiling is the rate the user gave; a count a little
                # below it is the jitter that made a send at 99% of it meet a full window
            if budget is self._req and budget.learned is None and self.ramp:
                self._confirm(now, cause)
            budget.learned = cause
            budget.rate = max(budget.floor, cause * self.settle)
            budget.last_cut = now
            budget.calm_since = now
            budget.tat = now  # requests still waiting take new slots at the new rate
            self._epoch += 1
            self._tok_epoch += budget is self._tok
        elif (
            not budget.rate / 2
            < observed
            < (budget.learned or budget.rate) - REFINE_BY * (budget.window)
        ):
            budget.low = None  # a count at the learned ceiling: a lower one was jitter
        elif budget.low is None:
            budget.low = observed  # one low count may be jitter; two in a row are a trend
        else:
            observed, budget.low = max(observed, budget.low), None
            budget.learned = observed
            budget.rate = max(budget.floor, observed * self.settle)
            budget.calm_since = now
            budget.tat = now
            self._epoch += 1
            self._tok_epoch += budget is self._tok

    def _at_the_top(self, observed: float) -> bool:
        """A first rejection while the climb sends at the top (`ramp_to` of the configured
        rate), with about that much counted in the second before it."""
        req = self._req
        return (
            self.ramp
            and req.learned is None
            and req.rate is not None
            and self._level >= req.rate * self.ramp_to
            and observed >= self._level - REFINE_BY / req.window
        )

    def _confirm(self, now: float, cause: float) -> None:
        """The first rejection during the ramp: until the requests still in flight are
        answered, send no faster than the last level shown safe.

        What the server accepted in the second before the rejected request overstates a
        token bucket's rate (its burst was part of it); the answers still in flight tell
        (a bucket's count falls while a window's stays), and refine the estimate.
        """
        req = self._req
        if req.rate is not None and self._level >= req.rate * self.ramp_to:
            return  # refused at the configured rate itself: that is the ceiling, near enough
        latency = self._latency if self._latency is not None else req.window
        self._confirm_until = now + 1.1 * latency + 0.05
        self._confirm_rate = max(self._req.floor, min(cause, self._proven) * self.settle)


class InFlightGate:
    """How many requests may be in flight: rate x observed latency (Little's law).

    A fixed number of requests in flight caps throughput at in-flight / latency (16 at 1 s
    latency: 16 req/s, whatever the rate budget). With `fixed` None the gate follows
    `headroom x rate x latency` (latency a moving average of completed requests), within
    `[low, high]`, starting at `start`; with a `fixed` number it is that number.
    """

    def __init__(
        self,
        fixed: int | None,
        *,
        low: int = 4,
        high: int = 256,
        start: int = 16,
        headroom: float = 1.25,
        smoothing: float = 0.2,
    ) -> None:
        self.fixed = fixed
        self.low, self.high = low, max(low, high)
        self.headroom = headroom
        self.smoothing = smoothing
        self.latency: float | None = None
        self.limit = fixed if fixed is not None else min(max(start, low), self.high)
        self.in_flight = 0
        self.peak = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        """The most requests that can ever be in flight (the number of workers needed)."""
        return self.fixed if self.fixed is not None else self.high

    def observe(self, seconds: float, rate: float | None) -> None:
        """A request took `seconds`; resize for the current requests/s budget."""
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += self.smoothing * (seconds - self.latency)
        if self.fixed is not None:
            return
        if rate is None:
            return  # no budget to fill: stay at `start` (a local server gains nothing more)
        # the limiter's ramp keeps an unknown ceiling from being overrun; the gate only
        # has to leave room for the rate it allows
        self.limit = min(self.high, max(self.low, int(self.headroom * rate * self.latency) + 2))
        self._admit()

    async def enter(self) -> None:
        """Wait for room, then count one request in flight. Waiters are served in arrival
        order: a request that just finished and comes back for another never overtakes
        one already waiting, so no conversation stalls behind the others (a stalled one
        would finish alone at the end of the run, one latency per batch)."""
        if self.in_flight < self.limit and not self._waiting:
            self._take()
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._give_back()  # room was handed over just as it was cancelled
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            raise

    def _take(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def _give_back(self) -> None:
        self.in_flight -= 1
        self._admit()

    def _admit(self) -> None:
        """Hand free room to the longest-waiting requests."""
        while self._waiting and self.in_flight < self.limit:
            ticket = self._waiting.popleft()
            if not ticket.done():
                self._take()
                ticket.set_result(None)

    async def leave(self) -> None:
        """Count one request done and hand its room to the longest waiter."""
        self._give_back()
