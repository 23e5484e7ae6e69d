"""Vectorized checks agree with plain-Python definitions on generated tables."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.models import STAGING_SCHEMA
from pipeline.dryrun import checks

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    base = {
        "source": "s", "source_file": "f", "source_position": "p", "message_id": "m",
        "conversation_id": "c", "user_id": "u", "role": "user", "author_id": None,
        "author_name": None, "content": "x", "created_at": None, "seq": 0, "metadata": None,
    }  # fmt: skip
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=STAGING_SCHEMA)


_whitespace = st.sampled_from([" ", "\t", "\n", "\u3000", "\xa0", "\x85", "\u2028", "\x1f"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=6), st.lists(_whitespace).map("".join)), max_size=20))
def test_empty_content_matches_str_strip(texts: list[str]) -> None:
    table = _table([{"content": t, "source_position": str(i)} for i, t in enumerate(texts)])
    finding = checks.empty_content(table)
    assert finding.count == sum(1 for t in texts if not t.strip())
    assert [e["source_position"] for e in finding.examples] == [
        str(i) for i, t in enumerate(texts) if not t.strip()
    ][: checks.MAX_EXAMPLES]


_row = st.fixed_dictionaries({
    "conversation_id": st.sampled_from(["a", "b"]),
    "user_id": st.sampled_from(["u", "v"]),
    "minute": st.one_of(st.none(), st.integers(0, 5)),
    "message_id": st.sampled_from(["m1", "m2", "m3", "m4"]),
})  # fmt: skip


def _naive_out_of_order(rows: list[dict[str, Any]]) -> int:
    last: dict[tuple[str, str], int] = {}
    flagged = 0
    for r in rows:  # rows are in seq order
        key = (r["user_id"], r["conversation_id"])
        if r["minute"] is None:
            continue
        if key in last and r["minute"] < last[key]:
            flagged += 1
        last[key] = r["minute"]
    return flagged


@settings(max_examples=200, deadline=None)
@given(st.lists(_row, max_size=25), st.randoms())
def test_out_of_order_and_duplicates_match_naive(rows: list[dict[str, Any]], rnd: Any) -> None:
    staged = [
        {
            "conversation_id": r["conversation_id"],
            "user_id": r["user_id"],
            "message_id": r["message_id"],
            "seq": i,
            "created_at": None if r["minute"] is None else T0 + timedelta(minutes=r["minute"]),
        }
        for i, r in enumerate(rows)
    ]
    rnd.shuffle(staged)  # table order must not matter, only seq
    table = _table(staged)
    assert checks.out_of_order(table).count == _naive_out_of_order(rows)
    dups = Counter(r["message_id"] for r in rows)
    finding = checks.duplicate_ids(table)
    assert finding.count == sum(1 for n in dups.values() if n > 1)
    assert {e["message_id"]: e["occurrences"] for e in finding.examples} == {
        m: n for m, n in dups.items() if n > 1
    }


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["email", "api_key"]))
def test_mask_never_reveals_more_than_a_quarter(value: str, kind: str) -> None:
    masked = checks.mask(value, kind)
    kept = masked.split("…", 1)[0]
    assert value.startswith(kept)
    assert len(kept) <= min(4, len(value) // 4)
    assert masked.endswith(f"[{kind}]")


def test_each_secret_kind_is_found() -> None:
    samples = {
        "private_key": "-----BEGIN RSA PRIVATE KEY-----",
        "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
        "github_token": "ghp_" + "a1" * 18,
        "slack_token": "xoxb-1234567890-abcdef",
        "api_key": "sk-" + "Z" * 24,
        "google_api_key": "AIza" + "B" * 35,
        "jwt": "eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
        "bearer_token": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
        "password": "password = hunter22",
    }
    table = _table([{"content": f"see {v} ok", "message_id": k} for k, v in samples.items()])
    finding = checks.secrets(table)
    assert finding.count == len(samples)
    for example in finding.examples:
        assert example["message_id"] in example["kinds"]
        assert all(samples[example["message_id"]] not in m for m in example["masked"])
    clean = _table([{"content": "the build at 10:30 on 2024-01-05 used 192.168.1.1"}])
    assert checks.secrets(clean).count == 0
    assert checks.personal_data(clean).count == 0
