"""Write a synthetic DiscordChatExporter JSON export (one file per channel, no real people).

    python tests/bench/gen_discord.py OUT_DIR --messages 1000000 [--channels 100]

Files are laid out the way DiscordChatExporter's JSON writer writes them (2-space indent,
every message with its author, roles, empty arrays). The mix: ~20% replies, ~10% with
`<@id>` mentions, ~8% attachments, ~4% bot embeds, ~3% edited, ~3% system messages
(joins, pins; skipped), a few threads. 1M messages make ~1 GB. Never generate into the
repository.
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
EPOCH_MS = 1_420_070_400_000
BASE_MS = 1_690_000_000_000


def _user(i: int, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(800_000_000_000_000_000 + i),
        "name": f"user{i}",
        "discriminator": "0000",
        "nickname": f"Person {i}",
        "color": "#3498DB",
        "isBot": bot,
        "roles": [{"id": "900000000000000001", "name": "Members", "color": None, "position": 1}],
        "avatarUrl": f"https://cdn.discordapp.com/avatars/{i}/a.png",
    }


def _message(
    rng: random.Random, ms: int, seq: int, users: list[Any], prev: list[str], c: int
) -> Any:
    snowflake = str(((ms - EPOCH_MS) << 22) + ((c % 1024) << 12) + seq % 4096)
    author = rng.choice(users)
    roll = rng.random()
    kind = "Default"
    content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
    msg: dict[str, Any] = {
        "id": snowflake,
        "type": kind,
        "timestamp": _iso(ms),
        "timestampEdited": _iso(ms + 60_000) if rng.random() < 0.03 else None,
        "callEndedTimestamp": None,
        "isPinned": False,
        "content": content,
        "author": author,
        "attachments": [],
        "embeds": [],
        "stickers": [],
        "reactions": [],
        "mentions": [],
        "inlineEmojis": [],
    }
    if roll < 0.03:
        msg["type"] = rng.choice(["GuildMemberJoin", "ChannelPinnedMessage"])
        msg["content"] = (
            "Joined the server." if msg["type"] == "GuildMemberJoin" else "Pinned a message."
        )
    elif roll < 0.23 and prev:
        msg["type"] = "Reply"
        msg["reference"] = {
            "type": "Default",
            "messageId": rng.choice(prev[-50:]),
            "channelId": "1",
            "guildId": "1",
        }
    elif roll < 0.33:
        other = rng.choice(users)
        msg["content"] = f"<@{other['id']}> {content}"
        msg["mentions"] = [other]
    elif roll < 0.41:
        msg["attachments"] = [
            {
                "id": "1",
                "url": "https://cdn.example/f.png",
                "fileName": f"screenshot-{seq}.png",
                "fileSizeBytes": 48211,
            }
        ]
    elif roll < 0.45:
        msg["author"] = users[0]
        msg["content"] = ""
        msg["embeds"] = [
            {
                "title": f"Build #{seq} passed",
                "url": "https://ci.example/b",
                "timestamp": None,
                "description": content,
                "color": "#00FF00",
                "fields": [{"name": "Branch", "value": "main", "isInline": True}],
                "images": [],
                "inlineEmojis": [],
            }
        ]
    prev.append(snowflake)
    return msg


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def write_export(out_dir: Path, messages: int, channels: int = 100, seed: int = 7) -> Path:
    """Write `channels` channel files holding `messages` messages in all into `out_dir`."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    users = [_user(0, bot=True)] + [_user(i) for i in range(1, 40)]
    per = [messages // channels] * channels
    per[0] += messages - sum(per)
    for c, count in enumerate(per):
        with (out_dir / f"Acme - Text - channel-{c} [{710_000 + c}].json").open("wb") as fh:
            _channel(fh, rng, c, count, users)
    return out_dir


def _channel(fh: IO[bytes], rng: random.Random, c: int, count: int, users: list[Any]) -> None:
    thread = c % 10 == 9
    head = {
        "guild": {"id": "700000000000000001", "name": "Acme", "iconUrl": "https://cdn/i.png"},
        "channel": {
            "id": str(710_000 + c),
            "type": "GuildPublicThread" if thread else "GuildTextChat",
            "categoryId": str(710_000 + c - 1) if thread else "720000",
            "category": f"channel-{c - 1}" if thread else "Text",
            "name": f"channel-{c}",
            "topic": None,
        },
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-03-05T12:00:00.000+00:00",
    }
    text = orjson.dumps(head, option=orjson.OPT_INDENT_2)
    fh.write(text[:-2] + b',\n  "messages": [\n')
    ms = BASE_MS + c * 1000
    prev: list[str] = []
    batch: list[bytes] = []
    for i in range(count):
        ms += rng.choice((2_000, 30_000, 60_000, 300_000, 7_200_000))
        body = orjson.dumps(_message(rng, ms, i, users, prev, c), option=orjson.OPT_INDENT_2)
        batch.append(
            b"    " + body.replace(b"\n", b"\n    ") + (b",\n" if i < count - 1 else b"\n")
        )
        if len(prev) > 100:
            del prev[:50]
        if len(batch) >= 2000:
            fh.write(b"".join(batch))
            batch.clear()
    fh.write(b"".join(batch))
    fh.write(b'  ],\n  "messageCount": ' + str(count).encode() + b"\n}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=100)
    args = parser.parse_args()
    out = write_export(args.out_dir, args.messages, args.channels)
    size = sum(p.stat().st_size for p in out.glob("*.json"))
    print(f"{out} ({size / 1e6:.0f} MB)")  # noqa: T201


if __name__ == "__main__":
    main()
