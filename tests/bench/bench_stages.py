"""Benchmark: every stage of a Slack export as a user runs it, with time and peak memory.

Generates a synthetic export (tests/bench/gen_slack.py) into a temporary folder (or uses
--data), then runs the CLI as a user would, each command in its own process while the
resident memory of its whole process tree is sampled (/proc, every 20 ms):

1. `memos-etl extract --source slack`
2. `memos-etl chunk`
3. `memos-etl validate` (the dry run: extract + chunk + checks + report)
4. `memos-etl run` into the embedded local target (fresh workdir; skipped with --no-run)

(with `--chunk-workers N`, also `memos-etl chunk --workers N` after step 2; with
`--validate-workers N`, also `memos-etl validate --workers N` before step 3)

and prints, per stage, wall seconds, messages per second and peak RSS of the process tree,
then validate / (extract + chunk). With `--rounds R` the stages run R times in turn (the
same order each round), so the figures of a noisy machine are side by side.
Figures go to docs/performance.md with the command and the date.

    python tests/bench/bench_stages.py --messages 200000
    python tests/bench/bench_stages.py --messages 1000000 --data /tmp/slack-1m --no-run \
        --validate-workers 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_slack import RSS_EVERY, _tree_pids, _tree_rss, warm  # noqa: E402
from gen_slack import generate  # noqa: E402

CLI = str(Path(sys.executable).with_name("memos-etl"))


def measured(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[float, int, int]:
    """Run a command: (wall seconds, peak tree RSS in bytes, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(_tree_pids(proc.pid)))
            time.sleep(RSS_EVERY)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        print(f"  {' '.join(args[1:3])} exited {proc.returncode}: {err.strip()[-300:]}")
    return wall, peak[0], proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--data", type=Path, help="Export folder to use (generated if missing).")
    parser.add_argument("--no-run", action="store_true", help="Skip `run` into the local target.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds per stage.")
    parser.add_argument(
        "--chunk-workers",
        type=int,
        default=0,
        help="Also time `chunk --workers N` (staging buckets on N processes).",
    )
    parser.add_argument(
        "--validate-workers",
        type=int,
        default=0,
        help="Also time `validate --workers N` (before the default validate).",
    )
    parser.add_argument("--rounds", type=int, default=1, help="Times to run every stage.")
    parser.add_argument(
        "--old",
        type=Path,
        help="A checkout of older code: also time its `validate` (run with PYTHONPATH=OLD).",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="memos-etl-stages-"))
    try:
        data = args.data or tmp / "export"
        if not data.exists():
            print(f"generating {args.messages:,} messages into {data} ...")
            generate(data, args.messages)
        warm(data)
        config = tmp / "bench.yaml"
        config.write_text(
            f"workdir: {tmp / 'validate'}\nuser_id: bench\n"
            f"sources:\n  - kind: slack\n    path: {data}\n"
        )  # `run` into the local target as a user runs it: no client-side rate
        work = str(tmp / "stepwise")
        stages = [
            (
                "extract",
                [
                    CLI,
                    "extract",
                    "--source",
                    "slack",
                    str(data),
                    "--workdir",
                    work,
                    "--user-id",
                    "bench",
                    "-q",
                ],
            ),
            ("chunk", [CLI, "chunk", "--workdir", work, "-q"]),
        ]
        if args.chunk_workers:
            n = str(args.chunk_workers)
            stages.append((f"chunk -w{n}", [CLI, "chunk", "--workdir", work, "--workers", n, "-q"]))
        if args.validate_workers:
            n = str(args.validate_workers)
            stages.append((f"validate -w{n}", [CLI, "validate", str(config), "--workers", n, "-q"]))
        stages.append(("validate", [CLI, "validate", str(config), "-q"]))
        old_env = {**os.environ, "PYTHONPATH": str(args.old)} if args.old else None
        if args.old:
            stages.append(("validate old", [CLI, "validate", str(config), "-q"]))
        if not args.no_run:
            run_config = tmp / "run.yaml"
            run_config.write_text(
                config.read_text().replace(str(tmp / "validate"), str(tmp / "run"))
            )
            stages.append(("run", [CLI, "run", str(run_config), "-q"]))
        print(f"{'stage':<12} {'wall s':>8} {'msg/s':>10} {'peak RSS MB':>12}")
        for round_ in range(args.rounds):
            walls: dict[str, float] = {}
            for name, command in stages:
                env = old_env if name.endswith(" old") else None
                wall, peak, code = measured(command, args.timeout, env)
                walls[name] = wall
                rate = args.messages / wall if wall else 0.0
                status = "" if code == 0 else f"  (exit {code})"
                print(f"{name:<12} {wall:>8.1f} {rate:>10,.0f} {peak / 2**20:>12,.0f}{status}")
            base = walls["extract"] + walls["chunk"]
            ratios = ", ".join(
                f"{name} {wall / base:.2f}x"
                for name, wall in walls.items()
                if name.startswith("validate")
            )
            print(f"round {round_ + 1}: / (extract + chunk): {ratios}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
