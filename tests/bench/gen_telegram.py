"""Write a synthetic Telegram Desktop full export (`result.json`, no real people).

    python tests/bench/gen_telegram.py OUT_DIR --messages 1000000 [--chats 200]

Messages are spread over `--chats` chats (personal chats, groups, a forum, a channel),
written the way Telegram Desktop writes them (one-space indent, `text` plus
`text_entities`, `date` plus `date_unixtime`). The mix: ~15% formatted text (links,
mentions, code), ~20% replies, ~5% edited, ~8% media (photo, file, voice, sticker), ~3%
forwarded, ~3% service records (skipped). 1M messages make ~560 MB. Never generate into
the repository.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import IO, Any

import orjson

_WORD_TEXT = (
    "memory export thread branch river model token parquet stream window garden lamp "
    "orbit signal harbor canvas pepper violet engine ladder meadow quartz summit travel "
    "kitchen recipe budget holiday museum bicycle library winter summer coffee python"
)
WORDS = _WORD_TEXT.split()
CHAT_TYPES = ("personal_chat", "private_group", "private_supergroup", "public_channel")
BASE_TIME = 1_690_000_000


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))


def _message(
    rng: random.Random, mid: int, when: int, people: list[tuple[str, str]]
) -> dict[str, Any]:
    name, uid = rng.choice(people)
    roll = rng.random()
    if roll < 0.03:
        return {
            "id": mid,
            "type": "service",
            "date": "2023-07-22T04:26:40",
            "date_unixtime": str(when),
            "actor": name,
            "actor_id": uid,
            "action": rng.choice(["pin_message", "invite_members", "phone_call"]),
            "text": "",
            "text_entities": [],
        }
    msg: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "date": "2023-07-22T04:26:40",
        "date_unixtime": str(when),
        "from": name,
        "from_id": uid,
    }
    if rng.random() < 0.05:
        msg["edited"] = "2023-07-22T04:30:00"
        msg["edited_unixtime"] = str(when + 200)
    if rng.random() < 0.03:
        msg["forwarded_from"] = "News Channel"
    if mid > 1 and rng.random() < 0.2:
        msg["reply_to_message_id"] = rng.randint(max(1, mid - 50), mid - 1)
    if roll < 0.11:
        kind = rng.choice(["photo", "file", "voice", "sticker"])
        if kind == "photo":
            msg["photo"] = f"photos/photo_{mid}@22-07-2023_04-26-40.jpg"
            msg.update(photo_file_size=48211, width=1280, height=720)
        elif kind == "file":
            msg.update(
                file=f"files/report-{mid}.pdf",
                file_name=f"report-{mid}.pdf",
                file_size=120000,
                mime_type="application/pdf",
            )
        elif kind == "voice":
            msg.update(
                file="(File not included. Change data exporting settings to download.)",
                file_name="audio.ogg",
                media_type="voice_message",
                mime_type="audio/ogg",
                duration_seconds=7,
            )
        else:
            msg.update(
                file="stickers/sticker.webp",
                media_type="sticker",
                sticker_emoji="👍",
                width=512,
                height=512,
            )
    if roll < 0.26 and roll >= 0.11:
        parts: list[Any] = [
            _sentence(rng) + " ",
            {"type": "link", "text": "https://example.org/" + rng.choice(WORDS)},
            " see ",
            {"type": "mention", "text": "@" + rng.choice(WORDS)},
            " and ",
            {"type": "code", "text": rng.choice(WORDS) + "()"},
        ]
        msg["text"] = parts
        msg["text_entities"] = [
            {"type": "plain", "text": p} if isinstance(p, str) else p for p in parts
        ]
    else:
        text = "" if roll < 0.11 and rng.random() < 0.6 else _sentence(rng)
        msg["text"] = text
        msg["text_entities"] = [{"type": "plain", "text": text}] if text else []
    return msg


def _dump(value: Any, indent: str) -> bytes:
    body = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    return body.replace(b"\n", b"\n" + indent.encode())


def write_export(out_dir: Path, messages: int, chats: int = 200, seed: int = 7) -> Path:
    """Write `out_dir/result.json` with `messages` records over `chats` chats."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    per_chat = [messages // chats] * chats
    per_chat[0] += messages - sum(per_chat)
    with path.open("wb") as fh:
        fh.write(b'{\n "about": "Here is the data you requested.",\n')
        fh.write(b' "personal_information": {"user_id": 1, "first_name": "Owner"},\n')
        fh.write(b' "chats": {\n  "about": "All chats.",\n  "list": [\n')
        for c, count in enumerate(per_chat):
            _chat(fh, rng, c, count, last=c == chats - 1)
        fh.write(b'  ]\n },\n "left_chats": {"about": "Left.", "list": []}\n}\n')
    return path


def _chat(fh: IO[bytes], rng: random.Random, c: int, count: int, *, last: bool) -> None:
    people = [(f"Person {c}-{i}", f"user{10_000 + c * 10 + i}") for i in range(rng.randint(2, 8))]
    kind = CHAT_TYPES[c % len(CHAT_TYPES)]
    head = {"name": f"Chat {c}", "type": kind, "id": 100_000 + c}
    fh.write(b"   " + orjson.dumps(head)[:-1] + b',\n    "messages": [\n')
    when = BASE_TIME + c * 1000
    batch: list[bytes] = []
    for mid in range(1, count + 1):
        when += rng.choice((5, 30, 60, 120, 600, 7200))
        body = _dump(_message(rng, mid, when, people), "     ")
        batch.append(b"     " + body + (b",\n" if mid < count else b"\n"))
        if len(batch) >= 2000:
            fh.write(b"".join(batch))
            batch.clear()
    fh.write(b"".join(batch))
    fh.write(b"    ]\n   }" + (b"\n" if last else b",\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=200)
    args = parser.parse_args()
    path = write_export(args.out_dir, args.messages, args.chats)
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")  # noqa: T201


if __name__ == "__main__":
    main()
