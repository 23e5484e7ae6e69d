"""Benchmark: Discord extract of a synthetic 1M-message DiscordChatExporter export.

    python tests/bench/bench_discord.py [--messages 1000000] [--channels 100] [--dir DIR] [--runs 1]

Generates channel files (tests/bench/gen_discord.py, ~1 GB for 1M messages) into
`--dir` (default: a temporary folder, removed afterwards; never the repository), then
runs `pipeline.extract.extract_source` end to end (stream, normalize, count, write the
Parquet staging table) in a child process per run, so each run reports its own peak
memory (ru_maxrss) and the bench samples the summed RSS of the extract and its worker
processes. Printed per run: records read per second of wall time and of CPU
time, staged messages, and peak RSS. The machine is shared: compare runs of one session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_telegram import report, run_child  # noqa: E402  (the same measuring child)
from gen_discord import write_export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-discord-") as tmp:
        base = args.dir or Path(tmp)
        export = base / "export"
        if not any(export.glob("*.json")):
            write_export(export, args.messages, args.channels)
        size = sum(p.stat().st_size for p in export.glob("*.json"))
        print(f"export: {export} ({size / 1e6:.0f} MB)")  # noqa: T201
        for n in range(args.runs):
            figures = run_child("discord", export, base / f"work{n}")
            print(report("discord", figures))  # noqa: T201


if __name__ == "__main__":
    main()
