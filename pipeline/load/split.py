"""Cutting a request the API found too long: in two halves by messages, or one message into
ordered parts, each piece still completing exactly the messages it carries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import (
    PermanentLoadError,
)
from pipeline.core.tokens import count_tokens, messages_tokens, split_by_tokens


def split_body(
    body: dict[str, Any], completes: Sequence[tuple[str, str]]
) -> list[tuple[dict[str, Any], int, list[tuple[str, str]]]]:
    """Cut a too-large request in two halves (by messages) or a lone message into parts.

    Returns `(body, tokens, completes)` per piece, in sending order. Messages are matched
    to `completes` by position; a message cut into parts completes with its last part.
    """
    messages = body["messages"]
    done_ids = list(completes)

    def piece(
        msgs: list[dict[str, Any]], comp: list[tuple[str, str]]
    ) -> tuple[dict[str, Any], int, list[tuple[str, str]]]:
        return {**body, "messages": msgs}, messages_tokens(msgs), comp

    if len(messages) > 1:
        mid = len(messages) // 2
        # completes lists only whole messages; align it from the end when a part leads
        offset = len(messages) - len(done_ids)
        first = [c for i, c in enumerate(done_ids) if i + offset < mid]
        second = [c for i, c in enumerate(done_ids) if i + offset >= mid]
        return [piece(messages[:mid], first), piece(messages[mid:], second)]
    message = messages[0]
    content = str(message.get("content", ""))
    tokens = count_tokens(content)
    parts = split_by_tokens(content, math.ceil(tokens / 2)) if tokens > 1 else [content]
    if len(parts) < 2:
        raise PermanentLoadError(
            f"the API says a message of {tokens} tokens is too large, and it cannot be cut"
        )
    return [
        piece([{**message, "content": text}], done_ids if k == len(parts) - 1 else [])
        for k, text in enumerate(parts)
    ]
