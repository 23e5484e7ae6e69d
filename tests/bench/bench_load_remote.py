"""Benchmark: `memos-etl load` of a chunked workdir into `memos-etl serve` over HTTP.

Each load runs in its own process against a fresh store and a fresh ledger (the workdir's
batch folder is linked, never written), and prints wall seconds, requests per second and
the peak resident memory of the loading process (sampled from /proc every 20 ms; the
server runs in a process of its own and is not counted). With `--before DIR` (a plain
copy of an older tree, e.g. `git archive main | tar -x -C DIR`) the same load runs with
that code too, alternating, so the two are compared side by side on the same machine;
`--after DIR` runs "after" from such a copy too instead of the installed code (a fixed
tree, so that edits during a long run do not change what is measured).
`--latency-ms` makes the server answer late, so throughput shows whether conversations
still overlap; `--rate` defaults to 1000/s, the most allowed, and the account gets no
token budget (a remote target otherwise keeps to the default account's 50/s and tokens
per minute). Figures go to docs/performance.md ("Remote loads in bounded memory") with
the command and date.

    python tests/bench/bench_load_remote.py --workdir w1m [--before /tmp/old] \
        [--after /tmp/new] [--latency-ms 50] [--rounds 2] [--stop-after 300]

With `--run-export EXPORT` it times `memos-etl run` of a Slack export into the embedded
local target instead (a fresh workdir each time; wall, peak RSS), before and after.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_slack import RSS_EVERY, _tree_pids, _tree_rss  # noqa: E402
from bench_stages import CLI  # noqa: E402

STOPS: list[float] = []
"""Seconds from each Ctrl-C (`--stop-after`) to the end of the process, in order."""


def measured(args: list[str], out: Path, stop_after: float | None) -> tuple[float, int, int]:
    """Run a command (stdout to `out`): (wall seconds, peak tree RSS in bytes, exit code).
    With `stop_after`, Ctrl-C (SIGINT) it after that many seconds: a clean stop; the
    seconds it then took to exit go to `STOPS`."""
    start = time.perf_counter()
    signalled = [0.0]
    with out.open("w") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.PIPE, text=True)
        peak = [0]
        done = threading.Event()
        interrupted = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(_tree_pids(proc.pid)))
                late = stop_after is not None and time.perf_counter() - start > stop_after
                if late and not interrupted.is_set():
                    interrupted.set()
                    signalled[0] = time.perf_counter()
                    proc.send_signal(signal.SIGINT)
                time.sleep(RSS_EVERY)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if interrupted.is_set():
        STOPS.append(start + wall - signalled[0])
    if proc.returncode not in (0, 130):
        print(f"  load exited {proc.returncode}: {err.strip()[-300:]}")
    return wall, peak[0], proc.returncode


def _serve(db: Path, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    args = [CLI, "serve", "--port", "0", "--db", str(db), "--max-connections", "1024"]
    if latency_ms:
        args += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, line.split()[2]


def _loader(code: Path | None) -> list[str]:
    """The command that runs `memos-etl` from `code` (None: the installed one)."""
    if code is None:
        return [CLI]
    run = f"import sys; sys.path.insert(0, {str(code)!r}); from pipeline.cli import main; main()"
    return [sys.executable, "-c", run]


def one_load(
    source: Path, code: Path | None, args: argparse.Namespace, scratch: Path
) -> tuple[float, float, int, int, int]:
    """(wall s, CPU s, peak RSS bytes, requests, messages sent) of one load into a fresh
    store. The process's wall time, not the loader's `duration_s`: before the rolling
    window, a remote load read and filtered the whole batch file before that clock
    started. CPU seconds (user + system) are the loading process's alone: on a busy
    machine they move less than wall time."""
    work = scratch / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "batches").symlink_to(source / "batches")
    db = scratch / "served.sqlite"
    for leftover in scratch.glob("served.sqlite*"):
        leftover.unlink()
    server, url = _serve(db, args.latency_ms)
    out = scratch / "load.json"
    try:
        # no token budget: the default account's tokens per minute would set the pace
        config = scratch / "load.yaml"
        config.write_text("account:\n  tokens_per_minute: null\n")
        command = [
            *_loader(code),
            "load",
            "--config",
            str(config),
            "--workdir",
            str(work),
            "--target",
            "local",
            "--base-url",
            url,
            *(["--rate", str(args.rate)] if args.rate else []),
            "--max-in-flight",
            str(args.max_in_flight),
            "--no-progress",
            "--json",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, peak, code_ = measured(command, out, args.stop_after)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server is reaped later
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    finally:
        server.terminate()
        server.communicate(timeout=60)
    if code_ not in (0, 130):
        return wall, cpu, peak, 0, 0
    report = json.loads(out.read_text())
    return (
        wall,
        cpu,
        peak,
        int(report["requests"]),
        int(report["sent"]["messages"]),
    )


def one_run(export: Path, code: Path | None, scratch: Path) -> tuple[float, float, int, int]:
    """(wall s, CPU s, peak RSS bytes, messages sent) of `memos-etl run` of a Slack export
    into the embedded local target, in a fresh workdir (every stage). CPU seconds are the
    process tree's (user + system): less moved by other work on the machine than wall."""
    work = scratch / "run"
    shutil.rmtree(work, ignore_errors=True)
    config = scratch / "run.yaml"
    config.write_text(
        f"workdir: {work}\nuser_id: bench\nsources:\n  - kind: slack\n    path: {export}\n"
    )
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, peak, code_ = measured([*_loader(code), "run", str(config), "-q"], scratch / "run.out", None)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with sqlite3.connect(work / "ledger.sqlite") as conn:
        (sent,) = conn.execute("select sent from runs order by run_id desc limit 1").fetchone()
    return wall, cpu, peak, int(sent or 0) if code_ == 0 else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a chunked workdir")
    parser.add_argument(
        "--run-export", type=Path, help="instead: `memos-etl run` of this Slack export (embedded)"
    )
    parser.add_argument("--before", type=Path, help="an older source tree to compare with")
    parser.add_argument("--after", type=Path, help="a source tree instead of the installed code")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="client rate (the most)")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stop-after", type=float, help="Ctrl-C each load after this many seconds")
    args = parser.parse_args()
    variants: list[tuple[str, Path | None]] = [("after", args.after and args.after.resolve())]
    if args.before:
        variants.insert(0, ("before", args.before.resolve()))
    if args.run_export:
        with tempfile.TemporaryDirectory(prefix="bench-run-embedded-") as tmp:
            for round_ in range(1, args.rounds + 1):
                for name, code in variants:
                    wall, cpu, peak, sent = one_run(args.run_export.resolve(), code, Path(tmp))
                    print(
                        f"run round {round_} {name:6s}: {wall:8.1f} s wall  {cpu:6.1f} CPU-s"
                        f"  {sent} messages sent"
                        f"  peak RSS {peak / 2**20:7.0f} MB",
                        flush=True,
                    )
        return
    if args.workdir is None:
        parser.error("--workdir or --run-export is required")
    manifest = json.loads((args.workdir / "batches" / "manifest.json").read_text())
    print(
        f"workdir {args.workdir}: {manifest.get('batches')} batches,"
        f" {manifest.get('messages')} messages; latency {args.latency_ms} ms,"
        f" --rate {args.rate or 'none'}, --max-in-flight {args.max_in_flight}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-load-remote-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for name, code in variants:
                stops = len(STOPS)
                wall, cpu, peak, requests, sent = one_load(
                    args.workdir.resolve(), code, args, Path(tmp)
                )
                stop = f"  exit {STOPS[-1]:.1f} s after Ctrl-C" if len(STOPS) > stops else ""
                print(
                    f"round {round_} {name:6s}: {wall:8.1f} s  {cpu:6.1f} CPU-s"
                    f"  {requests / wall:8.1f} req/s"
                    f"  {sent} messages sent  peak RSS {peak / 2**20:7.0f} MB{stop}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
