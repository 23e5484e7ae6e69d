"""Pure checks over staged rows and built batches, for the dry-run validation report.

Every check returns a `Finding`: how many items it flags (messages, batches, ids, users),
how severe that is, and a few examples naming source file and position. Row checks work on
whole `pyarrow` columns (Arrow compute kernels; RE2 regexes for the content scan) so a
million staged messages take seconds. `BatchChecker` sees each batch once as the chunker
yields it: it validates the request body against `AddMessageRequest` of the official spec
and keeps the figures the report needs.

Severity: `error` means the API would reject something (the run must not start as is);
`warning` means the data loses something or looks wrong; `info` is worth knowing.
Content that looks like a secret or personal data is never copied into a finding: examples
carry `mask()`ed forms only.

Longer than most modules because it holds every dry-run check, each a small pure
function over Arrow columns or a built batch.
"""

from __future__ import annotations

import functools
import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.batches import Batch
from pipeline.core.config import LoadConfig
from pipeline.core.memos_api import (
    LIMITS_PAGE,
    MAX_CALL_TOKENS,
    MAX_GROUP_IDS,
    MAX_ID_CHARS,
    SERVER_ADD_SCHEMA,
    RequestValidator,
    id_count,
)
from pipeline.core.models import ROLES, excerpt
from pipeline.core.redact import PERSONAL_PATTERNS, SECRET_PATTERNS, Policy, mask_token
from pipeline.dryrun.tokens import TokenSample

if TYPE_CHECKING:
    from pipeline.chunk import ChunkStats

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

MAX_EXAMPLES = 20
USER_VOLUME_FACTOR = 10
"""A user is flagged when their message count is below median/10 or above median*10."""
USER_VOLUME_MIN_USERS = 3
"""Volume outliers are only meaningful with at least this many users."""

EXAMPLE_COLUMNS = [
    "source",
    "source_file",
    "source_position",
    "message_id",
    "conversation_id",
    "user_id",
]


@dataclass(frozen=True)
class Finding:
    """The result of one check: `count` flagged `unit`s and up to `MAX_EXAMPLES` examples."""

    id: str
    title: str
    severity: Severity
    count: int
    unit: str
    description: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Further figures of the check (e.g. counts per kind, thresholds), machine-readable."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form under `checks.<id>` in report.json."""
        return {
            "title": self.title,
            "severity": self.severity,
            "count": self.count,
            "unit": self.unit,
            "description": self.description,
            "details": self.details,
            "examples": self.examples,
        }


# --- secrets and personal data -------------------------------------------------------
# The detectors live in `pipeline.core.redact` (the chunker redacts with the same ones);
# these checks report every match whatever the redaction policy.


@functools.cache
def _compiled(kinds: tuple[tuple[str, str], ...]) -> tuple[str, list[tuple[str, re.Pattern[str]]]]:
    combined = "|".join(f"(?:{p})" for _, p in kinds)
    return combined, [(k, re.compile(p, re.ASCII)) for k, p in kinds]


def mask(value: str, kind: str) -> str:
    """A safe stand-in for a sensitive `value`: a few leading characters and its kind.

    At most 4 characters and at most a quarter of the value are kept, e.g.
    `mask("jane.doe@example.com", "email") == "jane…[email]"`.
    """
    keep = min(4, len(value) // 4)
    return f"{value[:keep]}…[{kind}]"


def mask_text(text: str) -> str:
    """`text` with every secret and personal-data match replaced by its `mask()`."""
    _, patterns = _compiled(tuple({**SECRET_PATTERNS, **PERSONAL_PATTERNS}.items()))
    for kind, regex in patterns:
        text = regex.sub(lambda m, k=kind: mask(m.group(0), k), text)  # type: ignore[misc]
    return text


def masked_excerpt(text: str) -> str:
    """A one-line excerpt of raw input with sensitive matches masked (for reports)."""
    return excerpt(mask_text(text))


def _scan(
    table: pa.Table,
    patterns: Mapping[str, str],
    finding_id: str,
    title: str,
    severity: Severity,
    description: str,
) -> Finding:
    """Flag messages whose content matches any pattern; count per kind, keep masked samples."""
    combined, compiled = _compiled(tuple(patterns.items()))
    if table.num_rows == 0:
        hits = table
    else:
        hits = table.filter(pc.match_substring_regex(table.column("content"), pattern=combined))
    per_kind: dict[str, int] = dict.fromkeys(patterns, 0)
    examples: list[dict[str, Any]] = []
    count = 0
    contents = hits.column("content").to_pylist()
    for i, text in enumerate(contents):
        found: list[tuple[str, str]] = []
        for kind, regex in compiled:
            for m in regex.finditer(text):
                found.append((kind, mask(m.group(0), kind)))
        if not found:
            continue
        count += 1
        for kind in {k for k, _ in found}:
            per_kind[kind] += 1
        if len(examples) < MAX_EXAMPLES:
            row = example_rows(hits.slice(i, 1))[0]
            row["kinds"] = sorted({k for k, _ in found})
            row["masked"] = [s for _, s in found[:5]]
            examples.append(row)
    by_kind = ", ".join(f"{k}: {n}" for k, n in per_kind.items() if n)
    full = f"{description} By kind: {by_kind}." if by_kind else description
    details = {"by_kind": per_kind}
    return Finding(finding_id, title, severity, count, "messages", full, examples, details)


def secrets(table: pa.Table, policy: Policy | None = None) -> Finding:
    """Messages whose content looks like a credential (API key, token, password, key).

    Without `policy` every match counts as sent as is (a warning). With the redaction
    policy, the finding is a warning only when a kind the policy keeps was found.
    """
    finding = _scan(
        table,
        SECRET_PATTERNS,
        "secrets",
        "Content that looks like secrets",
        "warning",
        "These messages would be stored in memory as they are; rotate the credentials or "
        "remove the messages before loading.",
    )
    return finding if policy is None else _under_policy(finding, policy)


def personal_data(table: pa.Table, policy: Policy | None = None) -> Finding:
    """Messages whose content contains e-mail addresses or phone numbers."""
    finding = _scan(
        table,
        PERSONAL_PATTERNS,
        "personal_data",
        "Content with personal data",
        "info",
        "E-mail addresses and phone numbers found in message text.",
    )
    return finding if policy is None else _under_policy(finding, policy)


def _under_policy(finding: Finding, policy: Policy) -> Finding:
    """`finding` restated for what the redaction policy does with each kind found."""
    actions = policy.actions()
    found = [k for k, n in finding.details["by_kind"].items() if n]
    kept = [k for k in found if actions.get(k) == "keep"]
    redacted = [f"{k} {actions[k]}" for k in found if actions.get(k) != "keep"]
    by_kind = ", ".join(f"{k}: {finding.details['by_kind'][k]}" for k in found)
    parts = [f"Found by kind: {by_kind}." if found else "Nothing found."]
    if redacted:
        parts.append(
            f"The redaction policy changes what is sent ({', '.join(redacted)}); see the "
            "redaction check. The values are still in the export: rotate credentials."
        )
    if kept:
        parts.append(
            f"Sent and stored in memory as they are (policy keep): {', '.join(kept)}; set "
            "`redact:` to mask or drop them."
        )
    severity = finding.severity if kept or finding.id != "secrets" else "info"
    details = {**finding.details, "policy": {k: actions[k] for k in found}}
    return replace(finding, severity=severity, description=" ".join(parts), details=details)


REDACTED_MARK = mask_token("")[:-1]
"""What every typed mask starts with (`[REDACTED:`)."""


def redacted_excerpt(content: str, before: int = 60, limit: int = 160) -> str:
    """A one-line excerpt of sent content around its first typed mask.

    Whatever the policy keeps is masked for the report too (`mask_text` runs on the whole
    message before the window is cut, so no partial value slips through).
    """
    text = " ".join(mask_text(content).split())
    at = max(0, text.find(REDACTED_MARK) - before)
    window = text[at : at + limit]
    return ("…" if at else "") + window + ("…" if at + limit < len(text) else "")


_MASK_KIND = re.compile(r"\[REDACTED:([a-z0-9_]+)\]")


def redacted_example(batch: Batch) -> dict[str, Any]:
    """The first message of `batch` that carries a mask, as a report example."""
    messages = batch.body["messages"]
    j, content = next(
        (
            (i, m["content"])
            for i, m in enumerate(messages)
            if isinstance(m.get("content"), str) and REDACTED_MARK in m["content"]
        ),
        (0, ""),
    )
    ids = batch.message_ids
    return {
        "message_id": ids[j] if len(ids) == len(messages) else ids[0],
        "user_id": batch.user_id,
        "conversation_id": batch.conversation_id,
        "kinds": sorted(set(_MASK_KIND.findall(content))),
        "action": "mask",
        "sent": redacted_excerpt(content),
    }


def redaction(stats: ChunkStats, policy: Policy, examples: list[dict[str, Any]]) -> Finding:
    """What the redaction policy changes in the messages to send: masks and drops per kind.

    Counts cover the messages this run would send (not those already delivered or before
    `since`), so they equal what the load summary reports. Examples show sent content
    around a mask (never a value) and dropped messages by id.
    """
    masked = dict(sorted(stats.masked.items()))
    dropped = dict(sorted(stats.dropped_by_kind.items()))
    changing = {k: a for k, a in policy.actions().items() if a != "keep"}
    parts = [
        "Policy: "
        + (", ".join(f"{k} {a}" for k, a in changing.items()) or "nothing redacted")
        + " (every other kind is sent as is)."
    ]
    if masked:
        parts.append("Masked: " + ", ".join(f"{k} {n}" for k, n in masked.items()) + ".")
    if dropped:
        parts.append("Dropped: " + ", ".join(f"{k} {n}" for k, n in dropped.items()) + ".")
    shown = [
        *examples[:MAX_EXAMPLES],
        *({**e, "action": "drop-message", "sent": ""} for e in stats.dropped_examples),
    ]
    return Finding(
        "redaction",
        "Messages redacted before sending",
        "info",
        stats.masked_messages + stats.dropped,
        "messages",
        " ".join(parts),
        shown[:MAX_EXAMPLES],
        {
            "masked": masked,
            "masked_messages": stats.masked_messages,
            "dropped": dropped,
            "dropped_messages": stats.dropped,
        },
    )


# --- row checks ---------------------------------------------------------------------


def example_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as report examples: source, file, position and ids.

    `source` is the configured source name when the table has a `label` column (as
    `pipeline.core.staging.read_labeled` adds), else the connector's `source` value.
    """
    first = "label" if "label" in table.column_names else "source"
    rest = EXAMPLE_COLUMNS[1:]
    rows = table.select([first, *rest]).to_pylist()
    return [{"source": r[first], **{c: r[c] for c in rest}} for r in rows]


def _examples(table: pa.Table, mask_array: pa.ChunkedArray | pa.Array) -> list[dict[str, Any]]:
    return example_rows(table.filter(mask_array).slice(0, MAX_EXAMPLES))


def _true_count(mask_array: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask_array, pa.int64())).as_py() or 0)


_BLANK = r"^[\s\p{Z}\x{85}\x{1c}-\x{1f}\x{0b}]*$"
"""RE2: empty or only characters Python's `str.isspace()` accepts."""


def empty_content(table: pa.Table) -> Finding:
    """Messages whose content is empty or only whitespace (Unicode whitespace included)."""
    flags = pc.match_substring_regex(table.column("content"), pattern=_BLANK)
    return Finding(
        "empty_content",
        "Empty or whitespace-only messages",
        "warning",
        _true_count(flags),
        "messages",
        "Sent as they are; they add calls and tokens but no memory.",
        _examples(table, flags),
    )


def unknown_roles(table: pa.Table) -> Finding:
    """Messages whose role is not one the API accepts (`user`, `assistant`, `system`, `tool`)."""
    flags = pc.invert(pc.is_in(table.column("role"), value_set=pa.array(ROLES)))
    examples = _examples(table, flags)
    roles = table.filter(flags).slice(0, MAX_EXAMPLES).column("role").to_pylist()
    for row, role in zip(examples, roles, strict=True):
        row["role"] = role
    return Finding(
        "unknown_role",
        "Messages with a role the API rejects",
        "error",
        _true_count(flags),
        "messages",
        f"The API accepts only the roles {', '.join(ROLES)}; a batch carrying any "
        "other role is rejected whole.",
        examples,
    )


def missing_timestamps(table: pa.Table) -> Finding:
    """Messages without `created_at`: sent without `chat_time`, so memory has no time."""
    flags = pc.is_null(table.column("created_at"))
    return Finding(
        "missing_timestamp",
        "Messages without a timestamp",
        "warning",
        _true_count(flags),
        "messages",
        "Sent without chat_time; ordered by their position in the export.",
        _examples(table, flags),
    )


def duplicate_ids(table: pa.Table) -> Finding:
    """message_id values staged more than once; `count` is the number of such ids."""
    grouped = (
        table.select(["message_id"]).group_by("message_id").aggregate([("message_id", "count")])
    )
    dup = grouped.filter(pc.greater(grouped.column("message_id_count"), 1))
    ids = dup.column("message_id")
    rows = table.filter(pc.is_in(table.column("message_id"), value_set=ids.combine_chunks()))
    examples: list[dict[str, Any]] = []
    counts = dict(zip(ids.to_pylist(), dup.column("message_id_count").to_pylist(), strict=True))
    seen: set[str] = set()
    for row in example_rows(rows.slice(0, 10 * MAX_EXAMPLES)):
        if row["message_id"] in seen or len(examples) >= MAX_EXAMPLES:
            continue
        seen.add(row["message_id"])
        row["occurrences"] = counts[row["message_id"]]
        examples.append(row)
    return Finding(
        "duplicate_id",
        "Duplicate message ids",
        "warning",
        dup.num_rows,
        "ids",
        "The same message_id is staged more than once; every copy is sent, but the ledger "
        "keeps one delivery per id.",
        examples,
    )


def out_of_order(table: pa.Table) -> Finding:
    """Messages whose time is earlier than the previous timed message of their conversation.

    Conversations are (user_id, conversation_id) in staged `seq` order; rows without a
    time are ignored. The chunker sends by time, so these messages are reordered.
    """
    label = ["label"] if "label" in table.column_names else []
    cols = ["user_id", "conversation_id", "seq", "created_at", *EXAMPLE_COLUMNS, *label]
    timed = table.select(list(dict.fromkeys(cols))).filter(pc.is_valid(table.column("created_at")))
    n = timed.num_rows
    if n < 2:
        return _order_finding(0, 0, [])
    timed = timed.sort_by(
        [("user_id", "ascending"), ("conversation_id", "ascending"), ("seq", "ascending")]
    )
    user = timed.column("user_id").combine_chunks()
    conv = timed.column("conversation_id").combine_chunks()
    when = timed.column("created_at").combine_chunks()
    same = pc.and_(
        pc.equal(user.slice(1), user.slice(0, n - 1)),
        pc.equal(conv.slice(1), conv.slice(0, n - 1)),
    )
    earlier = pc.and_(same, pc.less(when.slice(1), when.slice(0, n - 1)))
    flags = pa.concat_arrays([pa.array([False]), earlier])
    flagged = timed.filter(flags)
    conversations = (
        flagged.select(["user_id", "conversation_id"])
        .group_by(["user_id", "conversation_id"])
        .aggregate([])
        .num_rows
    )
    examples = example_rows(flagged.slice(0, MAX_EXAMPLES))
    return _order_finding(flagged.num_rows, conversations, examples)


def _order_finding(count: int, conversations: int, examples: list[dict[str, Any]]) -> Finding:
    return Finding(
        "out_of_order",
        "Messages out of time order",
        "warning",
        count,
        "messages",
        f"In {conversations} conversation(s) a message is older than the one staged before "
        "it; batches are sent in time order, so these are reordered.",
        examples,
        {"conversations": conversations},
    )


def long_ids(shortened: Mapping[str, str]) -> Finding:
    """user_id / conversation_id values over the API's 100 characters, and their short form."""
    examples = [
        {"original": excerpt(original, 120), "length": len(original), "sent_as": short}
        for original, short in list(shortened.items())[:MAX_EXAMPLES]
    ]
    return Finding(
        "long_id",
        f"Ids over {MAX_ID_CHARS} characters",
        "info",
        len(shortened),
        "ids",
        "Shortened deterministically (80 leading characters + '~' + hash); the original is "
        "kept in the batch info.",
        examples,
    )


def user_volumes(user_counts: Mapping[str, int]) -> Finding:
    """Users with suspiciously few or many messages relative to the median user.

    With at least `USER_VOLUME_MIN_USERS` users, a user is flagged when their count is
    below median / `USER_VOLUME_FACTOR` ("few") or above median * `USER_VOLUME_FACTOR`
    ("many"); a bulk bot or a mis-mapped user id usually shows up this way.
    """
    examples: list[dict[str, Any]] = []
    kinds = {"few": 0, "many": 0}
    median = _median(list(user_counts.values()))
    if len(user_counts) >= USER_VOLUME_MIN_USERS:
        for user, n in sorted(user_counts.items(), key=lambda kv: (-kv[1], kv[0])):
            kind = (
                "many"
                if n > median * USER_VOLUME_FACTOR
                else "few"
                if n * USER_VOLUME_FACTOR < median
                else None
            )
            if kind is None:
                continue
            kinds[kind] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"user_id": user, "messages": n, "kind": kind})
    return Finding(
        "user_volume",
        "Users with unusually few or many messages",
        "warning",
        kinds["few"] + kinds["many"],
        "users",
        f"Flagged when below median/{USER_VOLUME_FACTOR} or above median*{USER_VOLUME_FACTOR} "
        f"messages (median {median:g}; needs {USER_VOLUME_MIN_USERS}+ users).",
        examples,
        {
            "median": median,
            "factor": USER_VOLUME_FACTOR,
            "min_users": USER_VOLUME_MIN_USERS,
            **kinds,
        },
    )


def _median(values: list[int]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def quarantined(entries: Iterable[Mapping[str, Any]], total: int) -> Finding:
    """Input records that could not be read (from quarantine.jsonl), masked excerpts."""
    examples = [
        {
            "source": e.get("source"),
            "source_file": e.get("source_file"),
            "position": e.get("position"),
            "reason": e.get("reason"),
            "excerpt": masked_excerpt(str(e.get("excerpt", ""))),
        }
        for e in entries
    ]
    return Finding(
        "quarantined",
        "Unreadable input records (quarantined)",
        "warning",
        total,
        "records",
        "Not staged and not sent; listed in quarantine.jsonl with file, position and reason.",
        examples,
    )


# --- batch checks -------------------------------------------------------------------


def masked_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a request body with message content masked (safe to show in a report)."""
    out = dict(body)
    out["messages"] = [
        {**m, "content": mask_text(m["content"])} if isinstance(m.get("content"), str) else m
        for m in body.get("messages", [])
    ]
    return out


@dataclass
class BatchChecker:
    """Sees every batch once; validates bodies and keeps the per-batch figures."""

    load: LoadConfig
    max_tokens: int
    samples: int = 3
    validator: RequestValidator | None = None
    """Default: our extended `AddMessageRequest`, or `SERVER_ADD_SCHEMA` for memos-server."""
    weights: array[int] = field(default_factory=lambda: array("I"))
    """Per request: the ids it lists, i.e. its charge against the QPS limit (an array: one
    machine int per batch, not an object)."""
    tokens: TokenSample = field(default_factory=TokenSample)
    """Exact input tokens of a sample of the batches (see `pipeline.dryrun.tokens`)."""
    messages: array[int] = field(default_factory=lambda: array("I"))
    """Per request: its messages."""
    invalid: int = 0
    invalid_examples: list[dict[str, Any]] = field(default_factory=list)
    over_api_limit: int = 0
    over_api_examples: list[dict[str, Any]] = field(default_factory=list)
    split_examples: list[dict[str, Any]] = field(default_factory=list)
    redacted_examples: list[dict[str, Any]] = field(default_factory=list)
    sample_bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.validator is None:
            schema = SERVER_ADD_SCHEMA if self.load.server else None
            self.validator = RequestValidator(schema)

    def check(self, batch: Batch) -> None:
        """Validate one batch and record its figures."""
        assert self.validator is not None
        body = self.load.request_body(batch.body, batch.user_id)
        self.weights.append(id_count(body))
        self.tokens.add(batch)
        self.messages.append(batch.message_count)
        if not self.validator.is_valid(body):
            self.invalid += 1
            if len(self.invalid_examples) < MAX_EXAMPLES:
                self.invalid_examples.append(
                    {**_ident(batch), "errors": self.validator.errors(body, clean=mask_text)}
                )
        if batch.tokens > MAX_CALL_TOKENS:
            self.over_api_limit += 1
            if len(self.over_api_examples) < MAX_EXAMPLES:
                self.over_api_examples.append({**_ident(batch), "tokens": batch.tokens})
        if batch.part and batch.part[0] == 1 and len(self.split_examples) < MAX_EXAMPLES:
            self.split_examples.append(
                {**_ident(batch), "message_id": batch.message_ids[0], "parts": batch.part[1]}
            )
        if batch.redacted and len(self.redacted_examples) < MAX_EXAMPLES:
            self.redacted_examples.append(redacted_example(batch))
        if len(self.sample_bodies) < self.samples:
            self.sample_bodies.append(masked_body(body))

    def merge(self, part: BatchChecker) -> None:
        """Add the figures of the next part of the same run (the next staging bucket,
        checked on any process): what checking its batches here would have added."""
        self.weights += part.weights
        self.tokens.merge(part.tokens)
        self.messages += part.messages
        self.invalid += part.invalid
        self.over_api_limit += part.over_api_limit
        for mine, theirs, limit in (
            (self.invalid_examples, part.invalid_examples, MAX_EXAMPLES),
            (self.over_api_examples, part.over_api_examples, MAX_EXAMPLES),
            (self.split_examples, part.split_examples, MAX_EXAMPLES),
            (self.redacted_examples, part.redacted_examples, MAX_EXAMPLES),
            (self.sample_bodies, part.sample_bodies, self.samples),
        ):
            mine += theirs[: max(limit - len(mine), 0)]

    def findings(self, split_messages: int) -> list[Finding]:
        """The batch-level findings, once every batch was checked."""
        return [
            Finding(
                "schema",
                "Request bodies failing the API schema",
                "error",
                self.invalid,
                "batches",
                (
                    "Validated against what the self-hosted server's /product/add takes "
                    "(session_id required); these calls would fail or be misfiled."
                    if self.load.server
                    else "Validated against AddMessageRequest of the official OpenAPI spec "
                    "with its documented group-chat extensions; the API would reject these calls."
                ),
                self.invalid_examples,
            ),
            Finding(
                "over_api_token_limit",
                f"Batches over the API's {MAX_CALL_TOKENS} tokens",
                "warning",
                self.over_api_limit,
                "batches",
                f"chunk.max_tokens is {self.max_tokens}; the limits page ({LIMITS_PAGE}) "
                f"documents {MAX_CALL_TOKENS} tokens per call. The loader splits any batch "
                "the API calls too long (extra calls).",
                self.over_api_examples,
            ),
            Finding(
                "split_message",
                "Oversized messages split into parts",
                "info",
                split_messages,
                "messages",
                f"Messages over the {self.max_tokens}-token budget are sent as "
                "ordered parts, one call each (never truncated).",
                self.split_examples,
            ),
        ]


def _ident(batch: Batch) -> dict[str, Any]:
    """A batch's ids, as every batch example starts (built only for examples: the checker
    sees every batch)."""
    return {
        "batch_id": batch.batch_id,
        "user_id": batch.user_id,
        "conversation_id": batch.conversation_id,
        "first_message_id": batch.message_ids[0] if batch.message_ids else None,
    }


def group_chat(conversations: int, left_out: int, weights: Sequence[int]) -> Finding:
    """What group-chat mode costs: each request is charged one QPS unit per listed user id
    (group chat page), against one per request with `memory_owner: workspace` or `author`."""
    requests = len(weights)
    charge = sum(weights)
    return Finding(
        "group_chat",
        "Group-chat requests and their QPS charge",
        "info",
        conversations,
        "conversations",
        f"Group conversations list up to {MAX_GROUP_IDS} participants as user_id; MemOS "
        "charges each request once per listed id. Speakers beyond the list keep their "
        "role_name but get no memory of their own.",
        details={
            "requests": requests,
            "qps_charge": charge,
            "qps_charge_workspace": requests,
            "charge_factor": round(charge / requests, 2) if requests else 0.0,
            "participants_left_out": left_out,
        },
    )
