"""Generate a synthetic Slack workspace export (folder layout) for benchmarks.

Shape, by default for 1,000,000 messages: ~200 channels with long-tailed sizes (plus DMs),
~500 users of which some are bots, threads whose replies land in later day files,
integration messages without `user`, file-only messages, join events, edit-log records,
non-ASCII text, mentions/links/entities, and long-tailed text lengths. Messages carry the
bulk real exports carry (rich_text blocks, user_profile, client_msg_id, team), about
1.5 KB of JSON each. Day files follow America/Los_Angeles days (fixed UTC-8 here).
Deterministic for a given seed. Never write into the repository.

    python tests/bench/gen_slack.py OUT_DIR --messages 100000
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

WORDS = str.split(
    "deploy release migration schema query index cache latency review merge branch test "
    "build pipeline incident customer roadmap design budget meeting notes draft ticket "
    "metrics dashboard alert rollback staging production feature flag sprint backlog"
)
NON_ASCII = str.split(
    "café déjà-vu naïve Zürich straße Ελληνικά русский 日本語 中文 한국어 🚀 ✅ 😊 ñandú "
    "façade über São Paulo Kraków Ærø"
)
LA_OFFSET = -8 * 3600
START = int(datetime(2023, 1, 2, tzinfo=timezone.utc).timestamp())


def _text(rng: random.Random, users: list[dict[str, Any]]) -> str:
    n = min(int(rng.lognormvariate(3.0, 1.0)) + 2, 900)  # long-tailed word count
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words) + 1), rng.choice(NON_ASCII))
    if rng.random() < 0.12:
        words.insert(0, f"<@{rng.choice(users)['id']}>")
    if rng.random() < 0.04:
        words.append(f"<https://example.com/doc/{rng.randrange(1000)}|the doc>")
    if rng.random() < 0.04:
        words.append("R&amp;D -&gt; &lt;done&gt;")
    if rng.random() < 0.02:
        words.insert(0, "<!here>")
    return " ".join(words)


def _blocks(text: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "rich_text",
            "block_id": "b" + text[:4],
            "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
            ],
        }
    ]


def _profile(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "avatar_hash": "g0123456789a",
        "image_72": f"https://avatars.example.com/{user['id']}_72.png",
        "first_name": user["real_name"].split()[0],
        "real_name": user["real_name"],
        "display_name": user["profile"]["display_name"],
        "team": "T0BENCH",
        "name": user["name"],
        "is_restricted": False,
        "is_ultra_restricted": False,
    }


def make_users(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """users.json entries; every 25th is a bot."""
    users = []
    for i in range(count):
        first = rng.choice(["Ana", "Bo", "Chloé", "Dmitri", "Eun", "Farah", "Gus", "Hana"])
        is_bot = i % 25 == 24
        users.append(
            {
                "id": f"U{i:07d}",
                "team_id": "T0BENCH",
                "name": f"user{i}",
                "real_name": f"{first} Tester{i}",
                "is_bot": is_bot,
                "deleted": False,
                "profile": {
                    "display_name": "" if i % 3 == 0 else f"{first.lower()}{i}",
                    "real_name": f"{first} Tester{i}",
                    "email": "" if is_bot else f"user{i}@example.com",
                    "bot_id": f"B{i:07d}" if is_bot else None,
                },
            }
        )
    return users


def _channel_sizes(total: int, channels: int) -> list[int]:
    weights = [1 / (i + 1) ** 0.9 for i in range(channels)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def _messages(
    count: int, rng: random.Random, users: list[dict[str, Any]], humans: list[dict[str, Any]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seconds, message) in time order for one channel; each yielded item is one record."""
    t = START + rng.randrange(86400)
    mean_gap = max(30, 365 * 86400 // max(count, 1))
    open_threads: list[tuple[str, str]] = []
    for n in range(count):
        t += int(rng.expovariate(1 / mean_gap)) + 1
        ts = f"{t}.{n % 1000000:06d}"
        roll = rng.random()
        if roll < 0.01:
            user = rng.choice(humans)
            yield (
                t,
                {
                    "type": "message",
                    "subtype": "channel_join",
                    "ts": ts,
                    "user": user["id"],
                    "text": f"<@{user['id']}> has joined the channel",
                },
            )
            continue
        if roll < 0.03:
            text = _text(rng, users)
            yield (
                t,
                {
                    "type": "message",
                    "subtype": "bot_message",
                    "ts": ts,
                    "text": "",
                    "bot_id": "B0000024",
                    "username": "ci-bot",
                    "attachments": [
                        {
                            "fallback": text[:80],
                            "title": "Build result",
                            "text": text,
                            "color": "good",
                            "id": 1,
                        }
                    ],
                },
            )
            continue
        if roll < 0.04:
            user = rng.choice(humans)
            yield (
                t,
                {
                    "type": "message",
                    "ts": ts,
                    "user": user["id"],
                    "text": "",
                    "upload": True,
                    "files": [
                        {
                            "id": f"F{n:08d}",
                            "name": f"report-{n}.pdf",
                            "title": "Report",
                            "mimetype": "application/pdf",
                            "url_private": "https://files.example.com/f.pdf?t=xoxe-0-bench",
                            "mode": "hosted",
                        }
                    ],
                },
            )
            continue
        if roll < 0.05 and open_threads:
            parent_ts, parent_user = rng.choice(open_threads)
            user = rng.choice(humans)
            yield (
                t,
                {
                    "type": "message",
                    "subtype": "message_changed",
                    "ts": f"{t}.000000",
                    "hidden": True,
                    "editor_id": user["id"],
                    "thread_ts": "0000000000.000000",
                    "message": {"type": "message", "text": "edited", "ts": parent_ts},
                    "original": {"type": "message", "text": "original", "ts": parent_ts},
                },
            )
            continue
        user = rng.choice(users)
        text = _text(rng, users)
        msg: dict[str, Any] = {
            "user": user["id"],
            "type": "message",
            "ts": ts,
            "client_msg_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "text": text,
            "team": "T0BENCH",
            "user_team": "T0BENCH",
            "source_team": "T0BENCH",
            "user_profile": _profile(user),
            "blocks": _blocks(text),
        }
        if user["is_bot"]:
            msg["bot_id"] = user["profile"]["bot_id"]
            msg["bot_profile"] = {"id": msg["bot_id"], "name": user["name"], "deleted": False}
        if open_threads and rng.random() < 0.3:
            parent_ts, parent_user = rng.choice(open_threads)
            msg["thread_ts"] = parent_ts
            msg["parent_user_id"] = parent_user
            if rng.random() < 0.03:
                msg["subtype"] = "thread_broadcast"
                msg["root"] = {
                    "type": "message",
                    "ts": parent_ts,
                    "user": parent_user,
                    "text": "root",
                    "thread_ts": parent_ts,
                }
        elif rng.random() < 0.1:
            msg["thread_ts"] = ts
            open_threads.append((ts, user["id"]))
            if len(open_threads) > 8:
                open_threads.pop(0)
        if rng.random() < 0.1:
            msg["reactions"] = [
                {"name": "thumbsup::skin-tone-2", "users": [user["id"]], "count": 1}
            ]
        if rng.random() < 0.05:
            msg["edited"] = {"user": user["id"], "ts": f"{t + 60}.000000"}
        yield t, msg


def _flush(folder: Path, day: str | None, batch: list[dict[str, Any]]) -> int:
    if not batch:
        return 0
    data = orjson.dumps(batch, option=orjson.OPT_INDENT_2)
    (folder / f"{day}.json").write_bytes(data)
    return len(data)


def generate(
    out: Path, messages: int, channels: int = 200, users_count: int = 500, seed: int = 7
) -> dict[str, int]:
    """Write the export under `out`; returns counts (records, bytes, files)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    users = make_users(users_count, rng)
    humans = [u for u in users if not u["is_bot"]]
    (out / "users.json").write_bytes(orjson.dumps(users, option=orjson.OPT_INDENT_2))
    dm_count = max(1, channels // 10)
    sizes = _channel_sizes(messages, channels + dm_count)
    chans = [
        {
            "id": f"C{i:07d}",
            "name": f"chan-{i}" if i % 7 else f"équipe-{i}",
            "created": str(START),
            "creator": humans[0]["id"],
            "members": None,
        }
        for i in range(channels)
    ]
    dms = [
        {
            "id": f"D{i:07d}",
            "created": START,
            "members": [humans[i % len(humans)]["id"], humans[(i + 1) % len(humans)]["id"]],
        }
        for i in range(dm_count)
    ]
    (out / "channels.json").write_bytes(orjson.dumps(chans, option=orjson.OPT_INDENT_2))
    (out / "dms.json").write_bytes(orjson.dumps(dms, option=orjson.OPT_INDENT_2))
    total_bytes = files = 0
    folders = [c["name"] for c in chans] + [d["id"] for d in dms]
    for folder, size in zip(folders, sizes, strict=True):
        folder_dir = out / folder
        folder_dir.mkdir(exist_ok=True)
        day = None
        batch: list[dict[str, Any]] = []

        for t, msg in _messages(size, rng, users, humans):
            d = datetime.fromtimestamp(t + LA_OFFSET, timezone.utc).strftime("%Y-%m-%d")
            if d != day:
                total_bytes += _flush(folder_dir, day, batch)
                files += bool(batch)
                day, batch = d, []
            batch.append(msg)
        total_bytes += _flush(folder_dir, day, batch)
        files += bool(batch)
    return {"records": messages, "bytes": total_bytes, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    stats = generate(args.out, args.messages, args.channels, args.users, args.seed)
    print(stats)


if __name__ == "__main__":
    main()
