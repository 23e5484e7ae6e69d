"""Write a synthetic ChatGPT export (no real people) for benchmarks.

Each conversation has a hidden system node, a user/assistant thread, regenerations and edits
(branches), hidden `thoughts` nodes and the odd image; about 20 nodes and 35 KB per
conversation, so 20,000 conversations make a ~700 MB `conversations.json`.

    python tests/bench/gen_chatgpt_export.py OUT_DIR --conversations 20000 [--split]

`--split` writes the 2026 layout instead: `conversations-NNN.json` shards of 100
conversations (2-space indent, sorted keys, no `children`) and `export_manifest.json`.
Never generate into the repository.
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

_WORD_TEXT = (
    "memory export thread branch river model token parquet stream window garden lamp "
    "orbit signal harbor canvas pepper violet engine ladder meadow quartz summit travel "
    "kitchen recipe budget holiday museum bicycle library winter summer coffee python"
    " "
)
WORDS = _WORD_TEXT.split()
BASE_TIME = 1_690_000_000.0


def _paragraphs(rng: random.Random, count: int, words: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


class _Gen:
    """Deterministic conversation factory (same seed, same bytes)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.long = _paragraphs(self.rng, 64, 326)
        self.short = _paragraphs(self.rng, 64, 25)

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _message(
        self,
        node_id: str,
        role: str,
        t: float | None,
        content: dict[str, Any],
        extra_meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"timestamp_": "absolute", "message_type": None}
        if role == "assistant":
            meta.update(
                model_slug="gpt-4o",
                finish_details={"type": "stop", "stop_tokens": [200002]},
                is_complete=True,
                request_id=self._id(),
            )
        if extra_meta:
            meta.update(extra_meta)
        return {
            "id": node_id,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": t,
            "update_time": None,
            "content": content,
            "status": "finished_successfully",
            "end_turn": True if role == "assistant" else None,
            "weight": 1.0,
            "metadata": meta,
            "recipient": "all",
            "channel": None,
        }

    def conversation(self, index: int, turns: int) -> dict[str, Any]:
        rng = self.rng
        conv_id = self._id()
        t0 = BASE_TIME + index * 600.0
        mapping: dict[str, dict[str, Any]] = {}

        def add(parent: str | None, message: dict[str, Any] | None, node_id: str) -> str:
            mapping[node_id] = {"id": node_id, "message": message, "parent": parent, "children": []}
            if parent is not None:
                mapping[parent]["children"].append(node_id)
            return node_id

        root = add(None, None, self._id())
        sys_id = self._id()
        cur = add(
            root,
            self._message(
                sys_id,
                "system",
                None,
                {"content_type": "text", "parts": [""]},
                {"is_visually_hidden_from_conversation": True},
            ),
            sys_id,
        )
        t = t0
        for _ in range(turns):
            t += rng.uniform(5, 60)
            uid = self._id()
            if rng.random() < 0.04:
                content: dict[str, Any] = {
                    "content_type": "multimodal_text",
                    "parts": [
                        {
                            "content_type": "image_asset_pointer",
                            "asset_pointer": f"file-service://file-{uid[:12]}",
                            "size_bytes": 1000,
                            "width": 64,
                            "height": 64,
                        },
                        rng.choice(self.short),
                    ],
                }
            else:
                content = {"content_type": "text", "parts": [rng.choice(self.short)]}
            if rng.random() < 0.05:  # an edit: an abandoned sibling prompt
                eid = self._id()
                add(
                    cur,
                    self._message(
                        eid,
                        "user",
                        t - 3,
                        {"content_type": "text", "parts": [rng.choice(self.short)]},
                    ),
                    eid,
                )
            cur = add(cur, self._message(uid, "user", t, content), uid)
            if rng.random() < 0.1:
                th = self._id()
                cur = add(
                    cur,
                    self._message(
                        th,
                        "assistant",
                        t + 1,
                        {
                            "content_type": "thoughts",
                            "thoughts": [
                                {"summary": "Thinking", "content": rng.choice(self.short)}
                            ],
                            "source_analysis_msg_id": self._id(),
                        },
                    ),
                    th,
                )
            if rng.random() < 0.1:  # a regeneration: an abandoned sibling answer
                rid = self._id()
                add(
                    cur,
                    self._message(
                        rid,
                        "assistant",
                        t + 2,
                        {"content_type": "text", "parts": [rng.choice(self.long)]},
                    ),
                    rid,
                )
            t += rng.uniform(2, 20)
            aid = self._id()
            cur = add(
                cur,
                self._message(
                    aid,
                    "assistant",
                    t,
                    {
                        "content_type": "text",
                        "parts": [rng.choice(self.long) + " \ue200cite\ue202turn0search0\ue201"],
                    },
                ),
                aid,
            )
        return {
            "title": " ".join(rng.choice(WORDS) for _ in range(4)),
            "create_time": t0,
            "update_time": t,
            "mapping": mapping,
            "moderation_results": [],
            "current_node": cur,
            "plugin_ids": None,
            "conversation_id": conv_id,
            "conversation_template_id": None,
            "gizmo_id": None,
            "is_archived": False,
            "safe_urls": [],
            "default_model_slug": "gpt-4o",
            "id": conv_id,
        }


def conversations(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """`count` synthetic conversations of about 20 nodes each."""
    gen = _Gen(seed)
    for i in range(count):
        yield gen.conversation(i, turns=gen.rng.randint(6, 10))


def write_single(out_dir: Path, count: int, seed: int = 7) -> Path:
    """Write `conversations.json` (classic layout, compact) and `user.json`; return the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "conversations.json"
    with path.open("wb") as fh:
        fh.write(b"[")
        for i, conv in enumerate(conversations(count, seed)):
            if i:
                fh.write(b", ")
            fh.write(orjson.dumps(conv))
        fh.write(b"]")
    (out_dir / "user.json").write_bytes(orjson.dumps({"id": "user-bench0000000000000000"}))
    return path


def write_split(out_dir: Path, count: int, seed: int = 7, per_shard: int = 100) -> list[Path]:
    """Write the 2026 sharded layout (no `children`, indented, sorted keys)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    paths: list[Path] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        path = out_dir / f"conversations-{len(paths):03d}.json"
        path.write_bytes(orjson.dumps(batch, option=opts))
        paths.append(path)
        batch.clear()

    for conv in conversations(count, seed):
        for node in conv["mapping"].values():
            node.pop("children", None)
        batch.append(conv)
        if len(batch) == per_shard:
            flush()
    if batch:
        flush()
    manifest = {
        "version": 1,
        "export_files": [{"path": p.name, "size_bytes": p.stat().st_size} for p in paths],
        "logical_files": {
            "conversations.json": {
                "files": [p.name for p in paths],
                "sharded": True,
                "shard_count": len(paths),
            }
        },
    }
    (out_dir / "export_manifest.json").write_bytes(orjson.dumps(manifest, option=opts))
    (out_dir / "user.json").write_bytes(orjson.dumps({"id": "user-bench0000000000000000"}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--split", action="store_true", help="write the 2026 sharded layout")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.split:
        paths = write_split(args.out_dir, args.conversations, args.seed)
        print(f"wrote {len(paths)} shards to {args.out_dir}")
    else:
        path = write_single(args.out_dir, args.conversations, args.seed)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
