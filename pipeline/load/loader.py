"""Load stage: deliver batches to `POST /add/message` exactly once, in order, quickly.

(`target: memos-server` sends the same batches to a self-hosted server's `/product/add`;
there an uncertain batch cannot be verified and is resent: see `_Loader._landed`.)

Guarantees:
- A conversation's batches go strictly in order, one at a time; different conversations
  go concurrently, within the account's budget (`pipeline.load.ratelimit`: requests per
  second and input tokens per minute, learned down to what the server accepts) and with
  as many requests in flight as rate x latency needs (or `max_in_flight`).
- A batch is `done` in the ledger only after the API answered code 0. It is marked
  `sending` when its request is about to leave (admitted by the in-flight gate and the
  budget, never before its bytes can reach the server); a batch found `sending` (a crash,
  a lost answer) is checked with `POST /get/message` — its messages are then the newest of
  the conversation — and only resent when they are not there. So a crash or kill at any
  moment costs only a re-run.
- A stop (Ctrl-C, SIGTERM, auth, quota, a fatal error) sends nothing more: a request still
  waiting for the gate, the budget or a retry's backoff gives up at once and its batch is
  left as it was before (pending; `sending` only when an earlier request of it may have
  landed). Requests already sent are awaited (`_Loader.stop`).
- Errors follow `pipeline.load.policy.ERROR_TABLE`: transient ones are retried with
  exponential backoff and full jitter, too-large batches are split in two (a single
  message into token parts), invalid batches fail and block the rest of their
  conversation (order), an auth error stops the run at once, quota exhaustion stops it
  cleanly. Failed and unsent batches stay in the ledger for the next run.

Longer than most modules because the delivery state machine (`_Loader`: scheduling,
sending, read-back checks, splits, retries, budgets) is one piece whose parts share its
state; entry points, counts and the split rule live in entry.py, stats.py and split.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from pipeline.core.batches import Batch
from pipeline.core.config import AccountConfig, LoadConfig, budget
from pipeline.core.errors import (
    AuthError,
    LoadError,
    PermanentLoadError,
    QuotaExhaustedError,
    TooLargeError,
    TransientLoadError,
)
from pipeline.core.memos_api import (
    CLOUD_GET_MESSAGE_PATH,
    GET_MESSAGE_LIMIT,
    TOKEN_LIMIT_CODE,
    VISIBLE_ROLES,
    id_count,
)
from pipeline.core.progress import NullProgress, Progress
from pipeline.core.tokens import messages_tokens
from pipeline.load.budget import Budget
from pipeline.load.ledger import Ledger, Row
from pipeline.load.policy import (
    AmbiguousDeliveryError,
    cap_retry_after,
    error_from_exception,
    error_from_response,
)
from pipeline.load.ratelimit import RAMP_FROM, AccountLimiter, Clock, InFlightGate, Sleep
from pipeline.load.split import split_body
from pipeline.load.stats import LoadStats
from pipeline.load.targets import Endpoint, Poster

log = logging.getLogger("memos_etl.loader")
progress_log = logging.getLogger("memos_etl.progress")

POOL_SHARD = 8
"""Connections per httpx client; more in flight are spread over several clients."""
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish after the first Ctrl-C."""
HOLD = 2000
"""Batches read and not yet delivered before the next window of the batch file is read."""
SUMMARIZE_EVERY = 500
"""Settled batches whose end state is read back from the ledger at once (`_summarize`)."""
LONG_WAIT = 60.0
"""A server-imposed wait at least this long is logged as a warning (shorter ones at -v)."""


class _Unsent(Exception):
    """A request given up before it left because the run is stopping (`_Loader._queued`)."""


class _Outcome(Enum):
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class _Unit:
    """What is being delivered: a ledger row plus its request body."""

    row: Row
    body: dict[str, Any]
    client: Poster
    counted: int | None = None
    """The body's exact input tokens, once counted (see `_Loader._charge`)."""
    marked: bool = False
    """This run marked the batch `sending` (a request of it left)."""


@dataclass
class _Lane:
    """One conversation's batches read and not yet delivered, in order (`_Loader.run`)."""

    order: int
    """When the lane was opened: ties on the heap go to the conversation met first."""
    batches: deque[tuple[Batch, Row]] = field(default_factory=deque)


class _Loader:
    """One load run over an open client and ledger (single asyncio loop)."""

    def __init__(
        self,
        clients: Sequence[Poster],
        ledger: Ledger,
        cfg: LoadConfig,
        *,
        secret: str | None,
        clock: Clock,
        sleep: Sleep,
        rng: random.Random,
        progress: Progress,
        heartbeat: float | None,
        requests_per_second: float | None,
        tokens_per_minute: float | None,
        shared_budget: Budget | None = None,
    ) -> None:
        self.clients = clients
        self.ledger = ledger
        self.cfg = cfg
        self.secret = secret
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.progress = progress
        self.heartbeat = heartbeat
        self.limiter: Budget = shared_budget or AccountLimiter(
            requests_per_second, tokens_per_minute, clock=clock, sleep=sleep
        )
        self.gate = InFlightGate(cfg.max_in_flight, start=_blind_in_flight(self.limiter.rate))
        self.stats = LoadStats()
        self.stopping = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self._waiting_to_send: set[asyncio.Task[Any]] = set()
        """Workers whose request has not left yet (in the gate, the budget or a backoff)."""
        self._given_up: set[asyncio.Task[Any]] = set()
        """Of those, the ones a stop cancelled (their cancellation becomes `_Unsent`)."""
        self._last_beat = clock()
        self._messages_todo = 0
        self._verified: set[str] = set()
        self.blocked: set[tuple[str, str]] = set()
        """Conversations a failed or stopped batch holds back (kept across windows)."""
        self.windowed = False
        """The batch file comes in windows read as the load goes (`expected` gives the
        bar its total before the file is read)."""
        self.expected: int | None = None
        """Messages the batch file carries (its manifest's count), when known."""
        self.left_out: Callable[[], int] = lambda: 0
        """Messages of the windows read so far that the filter left out (delivered or
        duplicates; `pipeline.incremental.filter_windows`)."""
        self.on_settled: Callable[[str], None] | None = None
        """Told each batch id that leaves the run (`pipeline.incremental.Unsettled`)."""
        # the rolling scheduler (`run`): lanes by conversation, the heap of waiting lanes
        self.lanes: dict[tuple[str, str], _Lane] = {}
        self.flying: dict[tuple[str, str], Batch] = {}
        """Each lane's batch in flight (a stop that abandons it leaves it pending)."""
        self.heap: list[tuple[int, int, tuple[str, str]]] = []
        self.source: Iterator[Sequence[Batch]] = iter(())
        self.hold = 0
        self.held = 0
        """Batches read and not yet delivered (waiting in lanes or in flight)."""
        self.position = 0
        self._order = 0
        self._exhausted = False
        self._settled: list[Batch] = []
        self._wake = asyncio.Event()
        self._waiting = 0
        self._passed = 0
        """Messages of batches read that this run will not send (done or held back)."""
        self._shown_total: int | None = None
        self._bar_open = False

    # --- stopping -------------------------------------------------------------------

    def stop(self, reason: str, message: str | None = None, *, now: bool = False) -> None:
        """Take no new batches and send no request that has not left yet; with `now`, also
        abandon the requests in flight (the ledger stays valid either way).

        A worker waiting for the in-flight gate, the budget or a retry's backoff is
        cancelled there (`_queued`): at a low rate a queued request may be seconds from its
        start, and letting it leave after a Ctrl-C sent requests for seconds more. Its batch
        was not marked `sending` yet, so it stays as it was (`deliver`)."""
        if self.stats.stopped is None:
            self.stats.stopped, self.stats.stop_message = reason, message
        self.stopping.set()
        self._wake.set()  # workers waiting for room leave
        current = asyncio.current_task()
        for task in self._waiting_to_send - self._given_up:
            if task is not current:
                self._given_up.add(task)
                task.cancel()
        if now:
            for task in self.workers:
                if task is not asyncio.current_task():
                    task.cancel()

    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """Around a wait before a request leaves: a stop cancels the wait (`stop`), which
        raises `_Unsent` here; after a stop nothing is waited for at all.

        The budget's `acquire` gives back what a cancelled wait reserved (`Budget`); the
        gate hands its room on. Nothing awaits between the end of this block and the send,
        so a request admitted before the stop leaves and one not admitted never does."""
        if self.stopping.is_set():
            raise _Unsent
        task = asyncio.current_task()
        assert task is not None
        self._waiting_to_send.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._given_up:
                raise  # cancelled for another reason (`stop(now=True)` alone, the loop closing)
            if hasattr(task, "uncancel"):  # Python >= 3.11: the cancel was handled here
                task.uncancel()
            raise _Unsent from None
        finally:
            self._waiting_to_send.discard(task)
            self._given_up.discard(task)

    async def _backoff(self, seconds: float) -> None:
        """The wait before a retry: given up on a stop, like a wait for the budget."""
        with self._queued():
            await self.sleep(seconds)

    # --- HTTP -----------------------------------------------------------------------

    async def _post(
        self,
        client: Poster,
        path: str,
        body: dict[str, Any],
        tokens: int = 0,
        leaving: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One request within the budget (`tokens` input tokens); returns the JSON answer
        or raises a LoadError (`_Unsent` when a stop came before it left). `leaving` is
        called once the gate and the budget admitted it, right before it is sent."""
        with self._queued():
            await self.gate.enter()
            try:
                ticket = await self.limiter.acquire(requests=id_count(body), tokens=tokens)
                if self.stopping.is_set():  # a budget that swallowed the cancel: not sent
                    raise _Unsent
            except BaseException:
                await self.gate.leave()
                raise
        try:
            if leaving is not None:
                leaving()
            self.stats.requests += 1
            sent = self.clock()
            try:
                response = await client.post(
                    path, content=orjson.dumps(body), headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                raise error_from_exception(exc, secret=self.secret) from None
            # a shared budget without a pace of its own is sized by its rate
            self.gate.observe(self.clock() - sent, getattr(self.limiter, "pace", self.limiter.rate))
        finally:
            await self.gate.leave()
        error = error_from_response(response, secret=self.secret, server=self.cfg.server)
        if error is None:
            self.limiter.on_success(ticket)
            data = orjson.loads(response.content)
            return data if isinstance(data, dict) else {}
        if isinstance(error, TransientLoadError) and error.retry_after is not None:
            error.retry_after = self._capped_retry_after(error.retry_after, path)
        if isinstance(error, TransientLoadError) and error.rate_limited:
            if error.code == TOKEN_LIMIT_CODE:
                self.limiter.on_token_limited(error.retry_after, ticket)
            else:
                self.limiter.on_rate_limited(error.retry_after, ticket)
        raise error

    def _charge(self, unit: _Unit) -> int:
        """The input tokens a request costs against a token budget.

        A batch's `tokens` may be only a byte bound (the chunker counts exactly only where a
        cut depends on it), several times the real count on chat text: a budget charged the
        bound would use a fraction of the account's tokens per minute. With a token budget
        the body is counted exactly, once per request; without one nothing is counted.
        """
        if self.limiter.tokens_per_minute is None:
            return unit.row.tokens
        if unit.counted is None:
            unit.counted = messages_tokens(unit.body["messages"])
        return unit.counted

    def _capped_retry_after(self, asked: float, path: str) -> float:
        """The server's Retry-After, at most `load.max_retry_after`; the wait is logged
        (a warning when long or cut) so a loader holding the lock is never silently idle."""
        wait = cap_retry_after(asked, self.cfg.max_retry_after)
        if wait < asked:
            log.warning(
                "%s: the server asked to wait %.0f s (Retry-After); waiting %.0f s "
                "(load.max_retry_after)",
                path,
                asked,
                wait,
            )
        else:
            level = logging.WARNING if wait >= LONG_WAIT else logging.INFO
            log.log(level, "%s: the server asked to wait %.1f s (Retry-After)", path, wait)
        return wait

    async def _landed(self, unit: _Unit) -> bool:
        """Whether the unit's messages are already the newest of its conversation.

        `/get/message` lists only user and assistant messages, so only those are compared;
        a batch holding neither cannot be checked and counts as not landed. A group chat
        is read back under its first (most active) participant, who received it too.

        The self-hosted server has no read-back of raw messages (its documented
        `/product/get/message` route does not exist; `/product/get_memory` returns
        extracted memories, not the messages sent), so there an uncertain batch cannot
        be verified and is resent (docs/memos-targets.md).
        """
        if self.cfg.server:
            log.warning(
                "cannot verify batch %s on a self-hosted MemOS server; resending it",
                unit.row.batch_id,
            )
            return False
        visible = [m for m in unit.body["messages"] if m.get("role") in VISIBLE_ROLES]
        k = min(len(visible), GET_MESSAGE_LIMIT)
        if k == 0:
            return False
        users = unit.body.get("user_id")
        query = {
            "user_id": users[0] if isinstance(users, list) and users else unit.row.user_id,
            "conversation_id": unit.row.conversation_id,
            "message_limit_number": k,
        }
        try:
            answer = await self._post(unit.client, CLOUD_GET_MESSAGE_PATH, query)
        except PermanentLoadError as exc:
            log.warning("cannot check batch %s (%s); sending it", unit.row.batch_id, exc)
            return False
        data = answer.get("data")
        found = data.get("message_detail_list") if isinstance(data, dict) else None
        got = [str(m.get("content")) for m in found or [] if isinstance(m, dict)]
        want = [str(m.get("content")) for m in visible[-k:]]
        return got[-k:] == want or list(reversed(got))[-k:] == want

    # --- retries --------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientLoadError) and exc.retry_after:
            return min(exc.retry_after, self.cfg.max_retry_after)
        high = min(self.cfg.backoff_max, self.cfg.backoff_initial * 2 ** (state.attempt_number - 1))
        return self.rng.uniform(0, high)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AmbiguousDeliveryError):
            reason = "lost_answer"
        elif isinstance(exc, TransientLoadError) and exc.code == TOKEN_LIMIT_CODE:
            reason = "token_limited"
        elif isinstance(exc, TransientLoadError) and exc.rate_limited:
            reason = "rate_limited"
        elif isinstance(exc, TransientLoadError) and (exc.status or exc.code):
            reason = "server_error"
        else:
            reason = "network"
        self.stats.retries[reason] += 1
        log.debug("retrying (%s): %s", reason, exc)

    async def _send(self, unit: _Unit, uncertain: list[bool]) -> tuple[bool, str | None]:
        """Send with retries; `(landed_before, task_id)`. `uncertain[0]` tracks maybe-landed."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientLoadError),
            sleep=self._backoff,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        batch_id = unit.row.batch_id
        async for attempt in retrying:
            with attempt:
                if uncertain[0]:
                    if await self._landed(unit):
                        return True, None
                    uncertain[0] = False

                def leaving() -> None:  # committed before the request can reach the server
                    self.ledger.mark_sending(batch_id)
                    unit.marked = uncertain[0] = True

                try:
                    answer = await self._post(
                        unit.client, self.cfg.add_path, unit.body, self._charge(unit), leaving
                    )
                except AmbiguousDeliveryError as exc:
                    self.ledger.note_error(batch_id, exc.code, str(exc), True)
                    raise
                except LoadError as exc:
                    uncertain[0] = False
                    self.ledger.note_error(batch_id, exc.code, str(exc), False)
                    raise
                data = answer.get("data")
                task_id = data.get("task_id") if isinstance(data, dict) else None
                return False, str(task_id) if task_id is not None else None
        raise AssertionError("unreachable: tenacity reraises the last error")

    # --- delivery -------------------------------------------------------------------

    async def deliver(self, unit: _Unit) -> _Outcome:
        """Deliver one unit (recursing into split pieces); the ledger records the result."""
        row = unit.row
        if row.status == "done":
            return _Outcome.DONE
        if row.status == "split":
            for child in self.ledger.children(row.batch_id):
                assert child.body is not None
                outcome = await self.deliver(_Unit(child, child.body, unit.client))
                if outcome is not _Outcome.DONE:
                    return outcome
            self.ledger.mark_done(row.batch_id, None, row.completes)
            return _Outcome.DONE
        if row.status == "failed":
            return _Outcome.FAILED
        uncertain = [row.uncertain or row.status == "sending"]
        try:
            landed, task_id = await self._send(unit, uncertain)
        except TooLargeError:
            self.stats.split += 1
            try:
                pieces = split_body(unit.body, row.completes)
            except PermanentLoadError as exc:
                return self._fail(row, exc, uncertain=False)
            log.info("batch %s too large: split into %d", row.batch_id, len(pieces))
            self.ledger.mark_split(row, pieces)
            split_row = self.ledger.get(row.batch_id)
            assert split_row is not None
            return await self.deliver(_Unit(split_row, unit.body, unit.client))
        except (AuthError, QuotaExhaustedError) as exc:
            self.ledger.mark_pending(row.batch_id, exc.code, str(exc), uncertain=uncertain[0])
            reason = "auth" if isinstance(exc, AuthError) else "quota"
            self.stop(reason, str(exc), now=reason == "auth")
            return _Outcome.STOPPED
        except LoadError as exc:
            return self._fail(row, exc, uncertain=uncertain[0])
        except _Unsent:
            # stopped before this request left: the ledger keeps what an earlier request
            # left (`sending`: maybe landed); one that certainly did not land is pending
            if not uncertain[0] and (unit.marked or row.status == "sending"):
                self.ledger.mark_unsent(row.batch_id)
            return _Outcome.STOPPED
        if landed:
            self.stats.verified_landed += 1
            self._verified.add(row.batch_id)
        self.ledger.mark_done(row.batch_id, task_id, row.completes)
        return _Outcome.DONE

    def _fail(self, row: Row, exc: LoadError, *, uncertain: bool) -> _Outcome:
        self.ledger.mark_failed(row.batch_id, exc.code, str(exc), uncertain=uncertain)
        log.warning(
            "batch %s of conversation %s failed: %s", row.batch_id, row.conversation_id, exc
        )
        return _Outcome.FAILED

    async def deliver_next(self, lane: deque[tuple[Batch, Row]], client: Poster) -> bool:
        """Deliver the next batch of one conversation; False when the lane must stop here
        (a failed batch blocks the rest of its conversation, to keep order)."""
        batch, row = lane.popleft()
        if row.status == "failed":
            self.blocked.add((batch.user_id, batch.conversation_id))
            return False
        was_done = row.status == "done"
        body = self.cfg.request_body(batch.body, batch.user_id)
        outcome = await self.deliver(_Unit(row, body, client))
        if outcome is not _Outcome.DONE:
            self.blocked.add((batch.user_id, batch.conversation_id))
            return False
        if not was_done:
            if batch.batch_id in self._verified:  # found landed: not sent by this run
                self.stats.verified_messages += batch.message_count
            else:
                self.stats.sent_batches += 1
                self.stats.sent_messages += batch.message_count
                self.stats.redacted.update(batch.redacted)
            self.progress.advance(_finishes(batch))
            self._beat()
        return True

    def _beat(self) -> None:
        if self.heartbeat is None:
            return
        now = self.clock()
        if now - self._last_beat >= self.heartbeat:
            self._last_beat = now
            rate = self.limiter.rate
            progress_log.info(
                "sent %d/%s messages (%d batches), %d requests, rate limit %s, %d in flight",
                self.stats.sent_messages,
                # without a manifest, windows give no total until the file is read
                "?" if (total := self._total()) is None else total,
                self.stats.sent_batches,
                self.stats.requests,
                "none" if rate is None else f"{rate:.1f}/s",
                self.gate.in_flight,
            )

    def limits_json(self) -> dict[str, Any]:
        """The budget the load kept to and what it learned (the `limits` of `load --json`)."""
        lim = self.limiter

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "requests_per_second": rounded(lim.rate),
            "tokens_per_minute": rounded(lim.tokens_per_minute),
            "learned_requests_per_second": rounded(lim.learned_rate),
            "learned_tokens_per_minute": rounded(lim.learned_tokens_per_minute),
            "rate_limited": lim.rate_limited,
            "token_limited": lim.token_limited,
            "in_flight_limit": self.gate.limit,
            "latency_s": rounded(self.gate.latency),
        }

    # --- scheduling -----------------------------------------------------------------

    def _admit(self) -> bool:
        """Read windows of the batch file into lanes while fewer than `hold` batches are
        waiting or in flight; False when nothing more can come (the source is exhausted).

        Synchronous, so it runs between two awaits of one worker: lanes and the heap never
        change under it. A conversation already in a lane (waiting or in flight) gets its
        new batches appended to that lane, so its order holds across windows."""
        while self.held < self.hold and not self._exhausted and not self.stopping.is_set():
            window = next(self.source, None)
            if window is None:
                self._exhausted = True
                if self._bar_open:
                    self._show_total()
                break
            self._take(window, deliver=True)
        return not self._exhausted

    def _take(self, window: Sequence[Batch], *, deliver: bool) -> None:
        """Record one window in the ledger (positions continue the previous window's) and
        queue its batches on their conversations' lanes (with `deliver`; after a stop the
        rest of the batch file is only recorded, pending, for the next run)."""
        self.ledger.sync(window, self.position)
        self.position += len(window)
        self.stats.batches += len(window)
        self.stats.messages += sum(b.message_count for b in window)
        rows = self.ledger.rows(b.batch_id for b in window) if deliver else {}
        new: list[tuple[str, str]] = []
        for batch in window:
            row = rows.get(batch.batch_id)
            key = (batch.user_id, batch.conversation_id)
            if row is None or key in self.blocked:
                # after a stop, or an earlier batch of the conversation failed: keep order
                self._passed += _finishes(batch)
                self._settle(batch)
                continue
            if row.status == "done":
                self.stats.already_batches += 1
                self.stats.already_messages += batch.message_count
                self._passed += _finishes(batch)
                self._settle(batch)
                continue
            self._messages_todo += _finishes(batch)
            self.held += 1
            lane = self.lanes.get(key)
            if lane is None:
                self._order += 1
                lane = self.lanes[key] = _Lane(self._order)
                new.append(key)
            lane.batches.append((batch, row))
        for key in new:  # on the heap once whole: the longest go first
            self._push(key)
        if self._bar_open:
            self._show_total()

    def _total(self) -> int | None:
        """The messages this run delivers if nothing fails: exact once the batch file is
        read; before, the manifest's count less what the windows read so far showed is
        delivered, duplicated or held back (None without a manifest)."""
        if not self.windowed or self._exhausted:
            return self._messages_todo
        if self.expected is None:
            return None
        return max(self._messages_todo, self.expected - self.left_out() - self._passed)

    def _show_total(self) -> None:
        """Give the bar the current `_total` (when it changed)."""
        total = self._total()
        if total != self._shown_total:
            self._shown_total = total
            self.progress.set_total(total)

    def _push(self, key: tuple[str, str]) -> None:
        """Put a lane (back) on the heap: the one with the most batches waiting goes first
        (then the one met first in the batch file)."""
        lane = self.lanes[key]
        heapq.heappush(self.heap, (-len(lane.batches), lane.order, key))

    def _settle(self, batch: Batch) -> None:
        """A batch leaves the run (delivered, failed, held back or never sent): its end
        state is counted from the ledger a few hundred at a time (`_summarize`)."""
        self._settled.append(batch)
        if self.on_settled is not None:
            self.on_settled(batch.batch_id)
        if len(self._settled) >= SUMMARIZE_EVERY:
            self.flush_summary()

    def flush_summary(self) -> None:
        """Count the settled batches' end states (see `_settle`)."""
        if self._settled:
            _summarize(self.stats, self.ledger, self._settled, self.blocked)
            self._settled = []

    def _wake_all(self) -> None:
        """Wake the workers waiting for room (a lane came back, batches left, or a stop)."""
        if self._waiting:
            self._wake.set()
            self._wake = asyncio.Event()

    async def run(self, windows: Iterator[Sequence[Batch]], hold: int) -> None:
        """Deliver every conversation's batches in order with `max_in_flight` workers.

        The batch file comes in windows; at most about `hold` batches (plus one window) are
        read and not yet delivered at any time. Admission rolls: whenever fewer than `hold`
        are waiting, the next window is read (`_admit`), so new conversations join while
        slow ones are still going, and no window waits for the previous one to finish. A
        conversation's batches form one lane and go strictly one after the other, also
        when the conversation spans windows; one blocked by a failure stays blocked.
        Windows a stop leaves unread are left unread (`finish`)."""
        self.source, self.hold = windows, max(1, hold)
        self._admit()
        # A conversation goes one batch at a time, so each worker takes the conversation
        # with the most batches left, sends its next batch and puts it back: all
        # conversations drain together instead of the last few trickling out one by one.
        # A conversation is out of the heap while its batch is in flight, so it never has
        # two. A worker with nothing to take reads the next window, or waits when memory
        # holds `hold` batches already; it leaves once the batch file is read and every
        # remaining conversation is held by another worker.
        self._shown_total = self._total()
        desc = (
            "load"
            if self.windowed
            else f"load {self.held} batches of {len(self.lanes)} conversations"
        )
        self.progress.start(desc, total=self._shown_total, unit="msg")
        self._bar_open = True

        async def worker(client: Poster) -> None:
            try:
                while not self.stopping.is_set():
                    if not self.heap:
                        more = self._admit()
                        if self.heap:
                            continue
                        if not more:
                            return  # every remaining conversation is held by another worker
                        self._waiting += 1  # memory holds `hold` batches: wait for room
                        try:
                            await self._wake.wait()
                        finally:
                            self._waiting -= 1
                        continue
                    _, _, key = heapq.heappop(self.heap)
                    lane = self.lanes[key].batches
                    batch = self.flying[key] = lane[0][0]
                    ok = await self.deliver_next(lane, client)
                    del self.flying[key]
                    self.held -= 1
                    self._settle(batch)
                    if not ok:  # held back: the rest of its conversation waits too
                        for rest, _ in lane:
                            self._settle(rest)
                        self.held -= len(lane)
                        lane.clear()
                    if lane:
                        self._push(key)
                    else:
                        del self.lanes[key]
                    self._admit()
                    self._wake_all()
            except Exception as exc:
                # e.g. the ledger cannot be written (disk full): stop every worker now;
                # the error is raised below, never left for a misleading "N pending"
                self.stop("error", f"{type(exc).__name__}: {exc}", now=True)
                raise

        n = self.gate.capacity if not self._exhausted else min(self.gate.capacity, len(self.heap))
        self.workers = [
            asyncio.create_task(worker(self.clients[i % len(self.clients)])) for i in range(n)
        ]
        results = await asyncio.gather(*self.workers, return_exceptions=True)
        self.progress.close()
        self._bar_open = False
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    def finish(self) -> None:
        """After the workers: what a stop left in lanes stays pending (recorded when its
        window was read); every batch read is counted.

        The windows a stop leaves unread stay unread: nothing of them was sent, so the
        ledger needs no row for them to resume exactly once (the next run reads the file
        from the start, skips what is delivered, reads back what is `sending`, and records
        the rest as it reads it). Reading them only to record them pending took ~20 s at
        1M messages. One exception keeps `status` honest: when a stop leaves no batch read
        and unsent (a window smaller than the requests in flight), the next window holding
        one is recorded, so the ledger shows the load unfinished."""
        left = len(self.flying) + sum(len(lane.batches) for lane in self.lanes.values())
        for batch in self.flying.values():
            self._settle(batch)
        for lane in self.lanes.values():
            for batch, _ in lane.batches:
                self._settle(batch)
        self.flying.clear()
        self.lanes.clear()
        self.heap.clear()
        self.held = 0
        if not left:
            for window in self.source:
                self._take(window, deliver=False)
                if window:
                    break
        self.flush_summary()


def _finishes(batch: Batch) -> int:
    """The messages whose delivery `batch` completes: all of its own, except a part of a
    split message before its last (the message counts once, with its last part)."""
    if batch.part is not None and batch.part[0] != batch.part[1]:
        return 0
    return batch.message_count


def _blind_in_flight(rate: float | None) -> int:
    """Requests in flight before the first answer shows the latency: 16, or the limiter's
    first second of requests (it sends `RAMP_FROM` of the budget until then) when that is
    more. A fixed 16 capped a 50/s budget at 16/s while the first answers of a 1 s latency
    were on their way; more would only reserve start times far ahead at the first rate."""
    return 16 if rate is None else max(16, math.ceil(rate * RAMP_FROM) + 2)


def _pool_sizes(max_in_flight: int, *, shared: bool) -> list[int]:
    """Connection pools of at most `POOL_SHARD` connections, `max_in_flight` in all.

    httpcore's pool does work proportional to requests x connections on every request
    event, so one pool of 50 connections costs several ms of CPU per request; shards of 8
    keep it well under one. An injected transport (tests) gets a single client.
    """
    if shared:
        return [max_in_flight]
    n = math.ceil(max_in_flight / POOL_SHARD)
    base, extra = divmod(max_in_flight, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _http_clients(
    endpoint: Endpoint,
    cfg: LoadConfig,
    capacity: int,
    transport: httpx.AsyncBaseTransport | None,
) -> list[httpx.AsyncClient]:
    """HTTP clients for `capacity` requests in flight (pool shards, see `_pool_sizes`)."""
    headers = {"user-agent": "memos-etl"}
    if endpoint.api_key:
        headers["authorization"] = f"{cfg.auth_scheme} {endpoint.api_key}"
    # one TLS context for every pool shard: loading the CA bundle costs ~60 ms of CPU each
    tls = httpx.create_ssl_context()
    return [
        httpx.AsyncClient(
            base_url=endpoint.base_url,
            headers=headers,
            timeout=cfg.timeout,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            transport=transport,
            verify=tls,
        )
        for size in _pool_sizes(capacity, shared=transport is not None)
    ]


def _summarize(
    stats: LoadStats,
    ledger: Ledger,
    batches: Sequence[Batch],
    blocked: set[tuple[str, str]] | None = None,
) -> None:
    """Add the end-state counts of `batches` from the ledger (the source of truth);
    `blocked` names conversations an earlier window's failure holds back."""
    rows = ledger.rows(b.batch_id for b in batches)
    by_conv: dict[tuple[str, str], bool] = dict.fromkeys(blocked or (), True)
    for batch in batches:
        row = rows[batch.batch_id]
        key = (batch.user_id, batch.conversation_id)
        if row.status == "split":
            row = _failed_piece(ledger, row) or row
        if row.status == "done":
            stats.done += 1
        elif row.status == "failed":
            stats.failed += 1
            by_conv[key] = True
            if len(stats.failures) < 20:
                stats.failures.append(
                    {
                        "batch_id": row.batch_id,
                        "conversation_id": row.conversation_id,
                        "code": row.error_code,
                        "error": row.error_message,
                    }
                )
        else:
            stats.pending += 1
            if by_conv.get(key):
                stats.blocked += 1


def _failed_piece(ledger: Ledger, row: Row) -> Row | None:
    """The failed piece of a split batch, if one failed (its error is the batch's error)."""
    for child in ledger.children(row.batch_id):
        if child.status == "failed":
            return child
        if child.status == "split":
            found = _failed_piece(ledger, child)
            if found is not None:
                return found
    return None


async def load_batches(
    batches: Sequence[Batch] | Iterable[Sequence[Batch]],
    ledger: Ledger,
    endpoint: Endpoint,
    cfg: LoadConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    progress: Progress | None = None,
    retry_failed: bool = False,
    handle_signals: bool = False,
    heartbeat: float | None = None,
    account: AccountConfig | None = None,
    shared_budget: Budget | None = None,
    hold: int = HOLD,
    on_settled: Callable[[str], None] | None = None,
    expected_messages: int | None = None,
    left_out: Callable[[], int] | None = None,
) -> LoadStats:
    """Deliver `batches` (in the batch file's order) and return what happened.

    `batches` is a list, or an iterable of windows (lists) of the batch file: windows are
    read as the load goes, the next one whenever fewer than `hold` batches are waiting or
    in flight, so memory holds about `hold` batches plus a window, never the file, while
    conversations keep overlapping (`_Loader.run`). `on_settled` is told every batch id
    that leaves the run (delivered, failed, held back or left pending).
    `expected_messages` (the batch file's count, from its manifest) gives windows a
    progress total before the file is read; `left_out` tells how many messages of the
    windows read so far were filtered out before they reached the loader. Never raises
    for API errors: failures, auth and quota stops are in the returned stats (`stopped`
    is "auth", "quota" or "interrupted"); the ledger records every batch read (a stop
    leaves the rest of the windows unread: the next run reads them, `_Loader.finish`).
    The budget is `account`'s (with `cfg.rate` overriding its requests per second); no
    account, or the embedded local server: `cfg.rate` alone (None: unlimited).
    `shared_budget`, when given, is used instead: one account's budget shared by several
    loads at once (`pipeline.engines`).
    """
    windows: Iterable[Sequence[Batch]]
    windows = [batches] if isinstance(batches, Sequence) else batches
    rps, tpm = budget(cfg, account, embedded=endpoint.embedded)
    gate_capacity = InFlightGate(cfg.max_in_flight).capacity
    if retry_failed:
        n = ledger.retry_failed()
        if n:
            log.info("re-queued %d failed batches", n)
    started = clock()
    async with contextlib.AsyncExitStack() as stack:
        clients: list[Poster]
        if endpoint.in_process is not None and transport is None:
            clients = [endpoint.in_process]  # the embedded server: no HTTP at all
        else:
            clients = [
                await stack.enter_async_context(client)
                for client in _http_clients(endpoint, cfg, gate_capacity, transport)
            ]
        loader = _Loader(
            clients,
            ledger,
            cfg,
            secret=endpoint.api_key,
            clock=clock,
            sleep=sleep,
            rng=rng or random.Random(),
            progress=progress or NullProgress(),
            heartbeat=heartbeat,
            requests_per_second=rps,
            tokens_per_minute=tpm,
            shared_budget=shared_budget,
        )
        loader.windowed = not isinstance(batches, Sequence)
        loader.on_settled = on_settled
        loader.expected = expected_messages
        if left_out is not None:
            loader.left_out = left_out
        # in-process, a ledger commit costs as much as storing the batch: one per request
        ledger.defer_done = endpoint.in_process is not None and transport is None
        try:
            with _signals(loader, enabled=handle_signals):
                await loader.run(iter(windows), hold)
                loader.finish()
        finally:
            ledger.defer_done = False
            ledger.flush()
    stats = loader.stats
    stats.duration = clock() - started
    stats.peak_in_flight = loader.gate.peak
    stats.limits = loader.limits_json()
    return stats


@contextlib.contextmanager
def _signals(loader: _Loader, *, enabled: bool) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop taking batches, abandon in-flight ones after a grace
    period; second: abandon them at once. The ledger stays consistent either way."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if loader.stopping.is_set():
            loader.stop("interrupted", now=True)
            return
        log.warning("interrupted: finishing in-flight requests (Ctrl-C again to quit now)")
        loader.stop("interrupted")
        loop.call_later(SHUTDOWN_GRACE, lambda: loader.stop("interrupted", now=True))

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


__all__ = [
    "Endpoint",
    "LoadStats",
    "load_batches",
    "split_body",
]
