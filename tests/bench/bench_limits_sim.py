"""The bench_limits.py grid on a virtual clock: exact figures, no timing noise, in seconds.

Run: .venv/bin/python tests/bench/bench_limits_sim.py

The real loader (limiter, in-flight gate, retries, ledger) loads the same 1,500 batches as
bench_limits.py into a simulated server counting like `memos-etl serve --limit-mode`
(tests/limits_sim.py), for each limit mode, latency and `--rate` (= ceiling, 2x), then the
token-bound runs. Printed per cell: share of the 50 req/s ceiling over the run, requests
rejected, whether every message was stored once, and what the limiter learned. A real
machine adds event-loop jitter; bench_limits.py measures that.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.server.faults import LIMIT_MODES  # noqa: E402
from tests.limits_sim import simulate_load, small_batches, token_bound_batches  # noqa: E402

CEILING = 50.0


def main() -> None:
    batches = small_batches(1500)
    met = 0
    for latency in (0.2, 1.0):
        for mode in LIMIT_MODES:
            for over in (1, 2):
                r = simulate_load(
                    batches, mode=mode, qps=CEILING, latency=latency, rate=CEILING * over
                )
                ok = r.share(CEILING) >= 0.9 and r.rejected_share <= 0.01 and r.exactly_once
                met += ok
                lim = r.stats.limits
                print(
                    f"{mode:<8} {latency * 1000:5.0f} ms  rate {over}x: {r.share(CEILING):6.1%} "
                    f"of the ceiling, rejected {r.rate_limited} of {r.sent} "
                    f"({r.rejected_share:.2%}), exactly once {r.exactly_once}, learned "
                    f"{lim['learned_requests_per_second']} req/s, budget "
                    f"{lim['requests_per_second']}: {'met' if ok else 'NOT met'}"
                )
    print(f"{met} of 12 cells met")
    for label, account_tpm, seconds in (("tpm = server", 60_000, 40), ("tpm 2x", 120_000, 80)):
        big = token_bound_batches(seconds)
        r = simulate_load(
            big,
            mode="sliding",
            qps=CEILING,
            latency=0.2,
            rate=CEILING,
            tpm=60_000,
            account_tpm=account_tpm,
        )
        print(
            f"tokens {label:<13} {r.tokens / r.seconds * 60 / 60_000:6.1%} of 60,000 tokens/min, "
            f"40309: {r.token_limited} of {r.sent} ({r.token_limited / r.sent:.2%}), "
            f"exactly once {r.exactly_once}, learned "
            f"{r.stats.limits['learned_tokens_per_minute']} tokens/min"
        )


if __name__ == "__main__":
    main()
