"""Redaction: what counts as a credential or personal data, and what is sent in its place.

One module holds the detectors (kinds and their regexes) for both the chunker, which
redacts the content it sends, and the dry run, which reports what it finds. A `Policy`
says per kind whether to `keep` a match, `mask` it with a typed stand-in
(`[REDACTED:<kind>]`, never the value nor anything derived from it), or `drop-message`
(leave the whole message out). The default masks every secret kind and keeps personal
data, so a default run never uploads a credential.

Detection is vectorized over Arrow: one RE2 pass (`pyarrow.compute`) over the whole
content column finds the rows that match any active kind; only those rows are rewritten,
kind by kind, so the common case (nothing to redact) costs one regex scan. Every pattern
is valid in both RE2 and Python's `re`, so the dry run can list matches with `re`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

Action = Literal["keep", "mask", "drop-message"]
ACTIONS: tuple[Action, ...] = ("keep", "mask", "drop-message")

SECRET_PATTERNS: dict[str, str] = {
    "private_key": (
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"
        r"(?:[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----|[\s\S]*)"
    ),
    "password": r"(?i:\b(?:password|passwd|pwd|passcode)\s*[:=]\s*[^\s,;]{3,})",
    "bearer_token": r"(?i:\bbearer\s+[A-Za-z0-9._~+/=-]{20,})",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "api_key": r"\b(?:sk|rk|pk)[-_](?:live_|test_|proj-|ant-)?[A-Za-z0-9_-]{20,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_-]{35}",
}
"""Kinds of credentials, in the order they are masked: the kinds that carry context (a
whole key block, `password: …`, `Bearer …`) come first so they mask the whole phrase
before a narrower kind masks only the token inside it. A private key is masked from its
BEGIN line to its END line (or to the end of the message when the END line is missing)."""

PERSONAL_PATTERNS: dict[str, str] = {
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    "phone": r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}\d\b|\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
}
"""Personal data: e-mail addresses and phone numbers written with separators."""

SECRET_KINDS: tuple[str, ...] = tuple(SECRET_PATTERNS)
PERSONAL_KINDS: tuple[str, ...] = tuple(PERSONAL_PATTERNS)
BUILTIN_KINDS: tuple[str, ...] = SECRET_KINDS + PERSONAL_KINDS
GROUPS: dict[str, tuple[str, ...]] = {
    "secrets": SECRET_KINDS,
    "personal": PERSONAL_KINDS,
    "all": BUILTIN_KINDS,
}
"""Names that stand for several kinds at once (for the `--redact` flag)."""

DEFAULT_ACTIONS: dict[str, Action] = {
    **dict.fromkeys(SECRET_KINDS, "mask"),
    **dict.fromkeys(PERSONAL_KINDS, "keep"),
}
"""Every secret kind masked, personal data kept (masking it is opt-in)."""


def mask_token(kind: str) -> str:
    """The stand-in sent instead of a match of `kind`: stable, typed, value-free."""
    return f"[REDACTED:{kind}]"


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` cannot be used (not valid RE2, or matches the empty string), or None."""
    try:
        empty = pc.match_substring_regex(pa.array([""]), pattern=pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return str(exc).splitlines()[0]
    if empty[0].as_py():
        return "it matches the empty string"
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind: its regex (RE2) and what to do with a match."""

    kind: str
    pattern: str
    action: Action


@dataclass(frozen=True)
class Policy:
    """What to do per kind; `rules` are applied in order (built-in kinds, then custom)."""

    rules: tuple[Rule, ...]

    @classmethod
    def build(
        cls,
        actions: Mapping[str, Action] | None = None,
        custom: Sequence[tuple[str, str, Action]] = (),
    ) -> Policy:
        """The default actions overridden by `actions`, then the named `custom` regexes."""
        chosen = {**DEFAULT_ACTIONS, **(actions or {})}
        patterns = {**SECRET_PATTERNS, **PERSONAL_PATTERNS}
        rules = [Rule(kind, patterns[kind], chosen[kind]) for kind in BUILTIN_KINDS]
        rules += [Rule(name, pattern, action) for name, pattern, action in custom]
        return cls(tuple(rules))

    @classmethod
    def default(cls) -> Policy:
        """Secrets masked, personal data kept."""
        return cls.build()

    @classmethod
    def off(cls) -> Policy:
        """Every kind kept: content is sent exactly as staged."""
        return cls.build(dict.fromkeys(BUILTIN_KINDS, "keep"))

    @property
    def active(self) -> tuple[Rule, ...]:
        """The rules that change what is sent (action other than `keep`)."""
        return tuple(r for r in self.rules if r.action != "keep")

    def actions(self) -> dict[str, Action]:
        """Action per kind, for reports."""
        return {r.kind: r.action for r in self.rules}


DEFAULT_POLICY = Policy.default()


@dataclass
class Redacted:
    """The content of some rows as it is sent, and what redaction did to them.

    `content` has one value per input row (unchanged where nothing matched). Per-row
    figures exist only for rows where an active kind matched (`rows` maps a row's index to
    its counts), so the common case costs nothing beyond the scan.
    """

    content: pa.Array | pa.ChunkedArray
    masked_by_row: dict[int, dict[str, int]] = field(default_factory=dict)
    """Row index -> occurrences masked, per kind."""
    dropped_by_row: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Row index -> the drop-message kinds that matched (the row is not sent)."""

    def masked_counts(self, rows: Sequence[int] | None = None) -> Counter[str]:
        """Occurrences masked per kind over `rows` (all rows when None), dropped rows aside."""
        total: Counter[str] = Counter()
        items = (
            self.masked_by_row.items()
            if rows is None
            else ((i, self.masked_by_row[i]) for i in rows if i in self.masked_by_row)
        )
        for i, counts in items:
            if i not in self.dropped_by_row:
                total.update(counts)
        return total


def redact(content: pa.Array | pa.ChunkedArray, policy: Policy) -> Redacted:
    """Apply `policy` to a string column: typed masks in place of matches, dropped rows noted.

    Pure and deterministic: the same content and policy give the same output, so the
    content hash of what is sent is stable across runs.
    """
    rules = policy.active
    if not rules or len(content) == 0:
        return Redacted(content)
    combined = "|".join(f"(?:{r.pattern})" for r in rules)
    hit = pc.fill_null(pc.match_substring_regex(content, pattern=combined), False)
    if not pc.any(hit).as_py():
        return Redacted(content)  # the common case: no copy of the column
    column = content.combine_chunks() if isinstance(content, pa.ChunkedArray) else content
    if isinstance(hit, pa.ChunkedArray):
        hit = hit.combine_chunks()
    indices = pc.indices_nonzero(hit)
    rows: list[int] = indices.to_pylist()
    sub = pc.take(column, indices)
    masked: dict[int, dict[str, int]] = {}
    dropped: dict[int, list[str]] = {}
    for rule in rules:
        counts = pc.count_substring_regex(sub, pattern=rule.pattern)
        if not pc.any(pc.greater(counts, 0)).as_py():
            continue
        for i, n in zip(rows, counts.to_pylist(), strict=True):
            if n:
                if rule.action == "drop-message":
                    dropped.setdefault(i, []).append(rule.kind)
                else:
                    masked.setdefault(i, {})[rule.kind] = n
        if rule.action == "mask":
            sub = pc.replace_substring_regex(
                sub, pattern=rule.pattern, replacement=_escape(mask_token(rule.kind))
            )
    out = pc.replace_with_mask(column, hit, sub)
    return Redacted(out, masked, {i: tuple(k) for i, k in dropped.items()})


def _escape(replacement: str) -> str:
    """A literal RE2 replacement (backslashes would start a group reference)."""
    return replacement.replace("\\", "\\\\")


def redact_text(text: str, policy: Policy) -> str | None:
    """One message's content as sent under `policy`, or None when the policy drops it."""
    result = redact(pa.array([text], pa.large_string()), policy)
    if result.dropped_by_row:
        return None
    return str(result.content[0].as_py())
