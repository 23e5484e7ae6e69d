"""The loader at an account's limits: share of the server's ceiling used, rejections.

Run: .venv/bin/python tests/bench/bench_limits.py [--seconds S] [--only NAME]

Each scenario starts `memos-etl serve` in its own process with a request ceiling counted in
one `--limit-mode` (sliding, fixed, bucket) and a latency (200 ms, 1 s), and loads about
`--seconds` of work at that ceiling, with the client's `--rate` equal to the ceiling and
twice it (the user does not know the limit). Then a token-bound run: the server allows
`--tpm` input tokens per minute and the batches are large enough that tokens bind, with the
account's tokens_per_minute equal to the server's and twice it. The limiter this replaced
(fixed 16 in flight, cut by 25% and climb back each second) runs side by side against the
strict sliding window.

Printed per run: accepted requests/s and share of the ceiling, tokens/min and share of the
TPM, rejected requests (40300/429 and 40309) as a share of all sent, whether every message
was stored exactly once, and a per-5-second series of accepted req/s, tokens/min, rejections
and the limiter's budget (the learned ceiling) over time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.core.batches import Batch  # noqa: E402
from pipeline.core.config import AccountConfig, LoadConfig  # noqa: E402
from pipeline.core.tokens import MESSAGE_OVERHEAD, count_tokens  # noqa: E402
from pipeline.load import loader as loader_module  # noqa: E402
from pipeline.load.ledger import Ledger  # noqa: E402
from pipeline.load.loader import load_batches  # noqa: E402
from pipeline.load.targets import Endpoint  # noqa: E402
from pipeline.server.store import message_counts  # noqa: E402
from tests.bench.bench_loader import start_server, stop_server  # noqa: E402
from tests.loader_fakes import make_batches  # noqa: E402
from tests.ratelimit_reference import OldAimd  # noqa: E402

CEILING = 50.0
EVENTS: list[tuple[float, int, int]] = []  # (answer time, body code, input tokens)
_post = httpx.AsyncClient.post


async def _recorded_post(self: httpx.AsyncClient, url: Any, **kwargs: Any) -> httpx.Response:
    response = await _post(self, url, **kwargs)
    if str(url).endswith("/add/message"):
        body = orjson.loads(kwargs["content"])
        tokens = sum(count_tokens(m["content"]) for m in body["messages"])
        try:
            code = int(orjson.loads(response.content).get("code", -1))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            code = -1
        EVENTS.append((time.perf_counter(), code, tokens))
    return response


httpx.AsyncClient.post = _recorded_post  # type: ignore[method-assign]


class _Budgets(logging.Handler):
    """Collects the limiter's budget from the loader's heartbeat lines."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 5:
            self.points.append((time.perf_counter(), str(args[4])))


class _OldAdapter(OldAimd):
    """The old limiter behind the new interface (its ceiling is the request rate)."""

    def __init__(self, rps: float | None, tpm: float | None, **kw: Any) -> None:
        super().__init__(rps or 1000.0, clock=kw["clock"], sleep=kw["sleep"])

    @property
    def tokens_per_minute(self) -> None:
        return None

    learned_rate = None
    learned_tokens_per_minute = None
    rate_limited = 0
    token_limited = 0


def batches_for(n: int, conversations: int, words: int) -> list[Batch]:
    per_conv = max(1, n // conversations)
    text = " ".join(["benchmark"] * words)
    out = make_batches(
        {f"conv-{i:03d}": per_conv * 2 for i in range(conversations)}, per_batch=2, text=text
    )
    # what the chunker records when nothing needed counting: the byte bound (here about ten
    # times the real count); the loader charges a token budget the exact count itself
    return [
        dataclasses.replace(
            b,
            tokens=sum(len(m["content"].encode()) + MESSAGE_OVERHEAD for m in b.body["messages"]),
        )
        for b in out
    ]


def run(
    url: str,
    db: Path,
    batches: list[Batch],
    *,
    rate: float,
    tpm: int | None,
    old: bool = False,
    max_in_flight: int | None = None,
) -> dict[str, Any]:
    settings = LoadConfig.model_validate(
        {"max_attempts": 30, "timeout": 60.0, "max_in_flight": max_in_flight}
    )
    account = AccountConfig(requests_per_second=rate, tokens_per_minute=tpm)
    EVENTS.clear()
    budgets = _Budgets()
    progress = logging.getLogger("memos_etl.progress")
    progress.addHandler(budgets)
    progress.setLevel(logging.INFO)
    real = loader_module.AccountLimiter
    if old:
        loader_module.AccountLimiter = _OldAdapter  # type: ignore[misc,assignment]
    before = sum(message_counts(db).values()) if db.exists() else 0
    try:
        with tempfile.TemporaryDirectory() as tmp, Ledger.open(Path(tmp)) as ledger:
            t0 = time.perf_counter()
            stats = asyncio.run(
                load_batches(
                    batches, ledger, Endpoint(url), settings, account=account, heartbeat=1.0
                )
            )
            wall = time.perf_counter() - t0
    finally:
        loader_module.AccountLimiter = real  # type: ignore[misc]
        progress.removeHandler(budgets)
    stored = sum(message_counts(db).values()) - before
    expected = sum(b.message_count for b in batches)
    codes = Counter(code for _, code, _ in EVENTS)
    accepted = codes[0]
    tokens = sum(t for _, c, t in EVENTS if c == 0)
    series = []
    for k in range(0, int(wall) + 1, 5):
        lo, hi = t0 + k, t0 + min(k + 5, wall)
        span = hi - lo
        if span <= 0.5:
            continue
        window = [(c, t) for at, c, t in EVENTS if lo <= at < hi]
        budget = [b for at, b in budgets.points if lo <= at < hi]
        series.append(
            {
                "t": k,
                "req_s": round(sum(1 for c, _ in window if c == 0) / span, 1),
                "tok_min": round(sum(t for c, t in window if c == 0) / span * 60),
                "rejected": sum(1 for c, _ in window if c in (40300, 40309)),
                "budget": budget[-1] if budget else "-",
            }
        )
    return {
        "seconds": round(wall, 1),
        "sent": len(EVENTS),
        "accepted_per_s": round(accepted / wall, 2),
        "share": accepted / wall / CEILING,
        "tokens_per_min": round(tokens / wall * 60),
        "rate_limited": codes[40300],
        "token_limited": codes[40309],
        "rejected_share": (codes[40300] + codes[40309]) / max(1, len(EVENTS)),
        "exactly_once": stats.complete and stored == expected,
        "limits": stats.limits,
        "peak_in_flight": stats.peak_in_flight,
        "series": series,
    }


def show(name: str, r: dict[str, Any], tpm: int | None = None) -> None:
    tpm_text = f" ({r['tokens_per_min'] / tpm:5.1%} of {tpm:,})" if tpm else ""
    lim = r["limits"]
    print(
        f"{name:<28} {r['seconds']:5.1f} s: {r['accepted_per_s']:6.2f} req/s "
        f"({r['share']:5.1%} of {CEILING:g}); {r['tokens_per_min']:,} tokens/min{tpm_text}; "
        f"rejected {r['rate_limited']}+{r['token_limited']} of {r['sent']} "
        f"({r['rejected_share']:.2%}); exactly once: {r['exactly_once']}; "
        f"peak in flight {r['peak_in_flight']}; learned "
        f"{lim.get('learned_requests_per_second')} req/s, "
        f"{lim.get('learned_tokens_per_minute')} tokens/min"
    )
    print(
        "    "
        + " | ".join(
            f"{p['t']:>3}s {p['req_s']:5.1f}/s {p['tok_min']:>7,}/min rej {p['rejected']:>3} "
            f"budget {p['budget']}"
            for p in r["series"]
        )
    )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="work per request run")
    parser.add_argument("--tpm", type=int, default=60_000, help="server tokens per minute")
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    n = int(CEILING * args.seconds)
    small = batches_for(n, 300, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for latency in (200, 1000):
            for mode in ("sliding", "fixed", "bucket"):
                runs = [("ceiling", CEILING, False), ("2x ceiling", 2 * CEILING, False)]
                if mode == "sliding":
                    runs.append(("old limiter", CEILING, True))
                for label, rate, old in runs:
                    name = f"{mode} {latency}ms {label}"
                    if args.only and args.only not in name:
                        continue
                    db = Path(tmp) / f"{mode}-{latency}-{rate}-{old}.sqlite"
                    server, url = start_server(
                        db,
                        "--latency-ms",
                        str(latency),
                        "--qps-limit",
                        str(CEILING),
                        "--limit-mode",
                        mode,
                    )
                    try:
                        result = run(
                            url,
                            db,
                            small,
                            rate=rate,
                            tpm=None,
                            old=old,
                            max_in_flight=16 if old else None,
                        )
                    finally:
                        stop_server(server)
                    show(name, result)
        # tokens bind: ~110 tokens a call (about 9 calls/s at 60,000 tokens/min, far below
        # 50/s). Told the server's TPM: 40 s of work. Told twice it: 80 s of work, longer than
        # the server's one-minute window, so the limit is met and learned.
        words = 50
        per_call = 2 * count_tokens(" ".join(["benchmark"] * words) + " conv-000 0")
        for label, account_tpm, work in (
            ("tpm = server", args.tpm, 40),
            ("tpm 2x server", 2 * args.tpm, 80),
        ):
            name = f"tokens sliding 200ms {label}"
            if args.only and args.only not in name:
                continue
            big = batches_for(int(args.tpm * work / 60 / per_call), 40, words)
            db = Path(tmp) / f"tokens-{account_tpm}.sqlite"
            server, url = start_server(
                db,
                "--latency-ms",
                "200",
                "--qps-limit",
                str(CEILING),
                "--limit-mode",
                "sliding",
                "--tpm",
                str(args.tpm),
            )
            try:
                result = run(url, db, big, rate=CEILING, tpm=account_tpm)
            finally:
                stop_server(server)
            show(name, result, tpm=args.tpm)


if __name__ == "__main__":
    main()
