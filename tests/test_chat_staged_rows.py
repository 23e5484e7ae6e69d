"""The staged rows of the chat-app connectors, pinned by digest.

Speed work on the Telegram, Discord and WhatsApp connectors (other parsers, worker
processes started earlier, other header passes) must not change a single staged value or
count. Each case extracts an input with one set of options and hashes every column of
every staged row (in a fixed order) together with the counts; the digests below were taken
from the code before that work. A deliberate change of output updates them, and says why in
its commit.

Two kinds of input: every sample in `data/samples/` (small: read in-process), and small
exports from the benchmark generators (`tests/bench/gen_*.py`, seeded) cut into several
jobs so that they run through the worker processes, as a large export does. The worker
path must also stage exactly what the in-process path stages.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

import connectors.group_chat_jobs as group_chat_jobs
import connectors.telegram as telegram
from pipeline.core.config import SourceConfig
from pipeline.extract import extract_source

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import gen_discord  # noqa: E402
import gen_telegram  # noqa: E402


def staged_digest(kind: str, path: Path, workdir: Path, **options: Any) -> str:
    """sha256 of the counts and every staged row (all columns, rows sorted; the input's
    own path, which labels rows, left out)."""
    source = SourceConfig(kind=kind, path=path, user_id="owner", options=options)
    stats = extract_source(source, workdir)
    assert stats.balanced, stats
    table = pq.read_table(workdir / "staging" / kind, partitioning=None)  # no bucket column
    rows = sorted(
        orjson.dumps(row, option=orjson.OPT_SORT_KEYS).replace(str(path).encode(), b"<input>")
        for row in table.to_pylist()
    )
    digest = hashlib.sha256()
    counts = [stats.read, stats.staged, sorted(stats.skipped.items()), stats.quarantined]
    digest.update(orjson.dumps(counts))
    digest.update(orjson.dumps(table.schema.names))
    for row in rows:
        digest.update(row)
        digest.update(b"\n")
    return digest.hexdigest()[:32]


SAMPLE_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("telegram", "telegram_export", {}, "459723f267cb3a4505cb5f3a5dcb89cf"),
    ("telegram", "telegram_export", {"memory_owner": "author"}, "a0ef3ad4c00b66422748e2f294642d21"),
    ("telegram", "telegram_export", {"memory_owner": "group"}, "b83e1074e80e288a7b1e766194bf8871"),
    ("telegram", "telegram_export", {"conversation": "thread"}, "45bd5f76f638e928384db0c9e04d6a78"),
    ("telegram", "telegram_export", {"conversation": "chat"}, "54532c380b137f8eb587a743838cd512"),
    ("discord", "discord_export", {}, "fe4ece4d0c5a7caed4c8e3a6276397a6"),
    ("discord", "discord_export", {"memory_owner": "author"}, "f17f84dbc4472522f28d8af70cdd031a"),
    ("discord", "discord_export", {"memory_owner": "group"}, "ce7b854453bf53dc800fa4380ff3d4f6"),
    ("discord", "discord_export", {"conversation": "thread"}, "6f06a32fa5dfc2a7e009814a29028fa9"),
    ("discord", "discord_export", {"conversation": "channel"}, "8c74ff6ff2152f446cfffdbaa4a0ead8"),
    ("whatsapp", "whatsapp_export", {}, "71ecd86a08555cdde5ee6c1c97f0cf73"),
    ("whatsapp", "whatsapp_export", {"memory_owner": "group"}, "c2fadb4873ecb8a436aad99754aa4d74"),
    ("whatsapp", "whatsapp_export_ios.zip", {}, "cb3ddda72eda9bd11f803e6111bfd824"),
    (
        "whatsapp",
        "whatsapp_export_ios.zip",
        {"memory_owner": "author"},
        "3ac7a77c99d78baf47f1dbcc14e6e072",
    ),
]


@pytest.mark.parametrize(
    ("kind", "sample", "options", "want"),
    SAMPLE_CASES,
    ids=[
        f"{k}-{s}-{'-'.join(f'{a}={b}' for a, b in o.items()) or 'default'}"
        for k, s, o, _ in SAMPLE_CASES
    ],
)
def test_sample_rows_are_unchanged(
    tmp_path: Path, kind: str, sample: str, options: dict[str, Any], want: str
) -> None:
    assert staged_digest(kind, SAMPLES / sample, tmp_path / "w", **options) == want


GENERATED_WANT = {
    "telegram": "86d6d0ebe85f9949f3cc14ece90d7356",
    "discord": "9eb237eb852c477f0abd0ab2624c14e7",
}


def _generated(kind: str, folder: Path) -> Path:
    if kind == "telegram":
        return Path(gen_telegram.write_export(folder, 6000, chats=12)).parent
    gen_discord.write_export(folder, 6000, channels=8)
    return folder


@pytest.mark.parametrize("kind", ["telegram", "discord"])
def test_worker_rows_are_unchanged_and_match_in_process(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated export cut into ~4 jobs: two worker processes stage the same rows as
    one process does, and those rows are the pinned ones."""
    export = _generated(kind, tmp_path / "export")
    size = sum(p.stat().st_size for p in export.rglob("*.json"))
    monkeypatch.setattr(group_chat_jobs, "JOB_BYTES", size // 4)
    monkeypatch.setattr(group_chat_jobs, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(telegram, "SPLIT_MIN_BYTES", 0)
    in_workers = staged_digest(kind, export, tmp_path / "w2", workers=2)
    in_process = staged_digest(kind, export, tmp_path / "w1", workers=1)
    assert in_workers == in_process
    assert in_workers == GENERATED_WANT[kind]
