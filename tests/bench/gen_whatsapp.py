"""Synthetic WhatsApp chat exports for benchmarks and tests (no real people).

    python tests/bench/gen_whatsapp.py OUT.txt --messages 1000000 --format android|ios

Android lines look like `31/12/2023, 22:15 - Name: text` (24-hour, day first); iOS lines
like `[12/31/23, 10:15:30 PM] Name: text` (12-hour with U+202F, month first, U+200E before
attachment lines). About 1 message in 8 spans several lines; 1 in 50 is an attachment
placeholder, 1 in 200 a deleted message, 1 in 500 a system line; the first line is the
encryption notice. Times advance 0-90 seconds per message from 2021-01-01, so several
messages share a minute. Deterministic for a given `seed`.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

NAMES = ["Ann Example", "Sam Rivera", "Mia Example", "Leo Example", "+44 7700 900123", "Tom"]
WORDS = [
    *("the", "a", "to", "and", "of", "we", "meet", "at", "lake", "train", "bike", "tent"),
    *("dinner", "tomorrow", "tonight", "plan", "book", "call", "later", "great", "thanks"),
    *("sure", "maybe", "weekend", "station", "ticket", "coffee", "shop", "rain", "sun"),
]
NOTICE = (
    "Messages and calls are end-to-end encrypted. No one outside of this chat, not even "
    "WhatsApp, can read or listen to them. Tap to learn more."
)


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 18)))


def lines(n: int, fmt: str, seed: int = 7) -> Iterator[str]:
    """The export's text, one message (possibly multi-line) per item, `n` message headers."""
    rng = random.Random(seed)
    t = datetime(2021, 1, 1, 8, 0, 0)

    def header(moment: datetime, lrm: bool = False) -> str:
        if fmt == "android":
            return moment.strftime("%d/%m/%Y, %H:%M - ")
        hour = moment.hour % 12 or 12
        ampm = "AM" if moment.hour < 12 else "PM"
        stamp = f"[{moment.month}/{moment.day}/{moment.strftime('%y')}, {hour}:"
        stamp += f"{moment.strftime('%M:%S')}\u202f{ampm}] "
        return ("\u200e" if lrm else "") + stamp

    yield header(t) + (NOTICE if fmt == "android" else f"Bench Chat: {NOTICE}") + "\n"
    for _ in range(n - 1):
        t += timedelta(seconds=rng.randint(0, 90))
        name = rng.choice(NAMES)
        roll = rng.random()
        if roll < 0.002:
            yield header(t) + f"{name} left\n"
            continue
        if roll < 0.007:
            body = (
                "This message was deleted"
                if fmt == "android"
                else "\u200eThis message was deleted."
            )
            yield header(t, lrm=True) + f"{name}: {body}\n"
            continue
        if roll < 0.027:
            if fmt == "android":
                body = f"IMG-{t:%Y%m%d}-WA{rng.randint(0, 9999):04d}.jpg (file attached)"
            else:
                body = (
                    f"\u200e<attached: {rng.randint(0, 99999):08d}-PHOTO-{t:%Y-%m-%d-%H-%M-%S}.jpg>"
                )
            yield header(t, lrm=True) + f"{name}: {body}\n"
            continue
        text = _text(rng)
        if roll < 0.152:
            text += "\n" + "\n".join(_text(rng) for _ in range(rng.randint(1, 4)))
        yield header(t) + f"{name}: {text}\n"


def write(path: Path, n: int, fmt: str, seed: int = 7) -> int:
    """Write an export of `n` message headers to `path`; return its size in bytes."""
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        batch: list[str] = []
        for item in lines(n, fmt, seed):
            batch.append(item)
            if len(batch) >= 10_000:
                fh.write("".join(batch))
                batch.clear()
        fh.write("".join(batch))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["android", "ios"], default="android")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    size = write(args.out, args.messages, args.format, args.seed)
    print(f"{args.out}: {args.messages} messages, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
