"""The bucket rule: stable, in range, one bucket per conversation, vectorized = scalar."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.buckets import MAX_BUCKETS, bucket_count, bucket_indices, bucket_of


@given(st.lists(st.text(max_size=30), max_size=60), st.integers(min_value=1, max_value=64))
def test_vectorized_rule_equals_the_scalar_rule(ids: list[str], buckets: int) -> None:
    got = bucket_indices(pa.array(ids, type=pa.large_string()), buckets).to_pylist()
    assert got == [bucket_of(i, buckets) for i in ids]
    assert all(0 <= b < buckets for b in got)


def test_the_rule_is_the_same_in_another_process() -> None:
    ids = [f"C{n:05d}" for n in range(50)]
    here = [bucket_of(i, 16) for i in ids]
    code = f"from pipeline.core.buckets import bucket_of;print([bucket_of(i, 16) for i in {ids!r}])"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert there.strip() == str(here)
    assert len(set(here)) > 8  # spreads, not one bucket


def test_bucket_count_grows_with_input_in_powers_of_two() -> None:
    assert bucket_count(0) == 1
    assert bucket_count(10 * 1024 * 1024) == 1
    assert bucket_count(1_430_000_000) == 32
    assert bucket_count(10**15) == MAX_BUCKETS
