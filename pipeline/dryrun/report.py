"""Dry-run findings -> one JSON-ready dict (report.json), and its terminal summary.

The dict is the single source of every figure: the HTML view and the terminal summary
render from it, so the three views never disagree. Its keys are stable and documented
in docs/report.md; `report_version` changes when a key changes meaning or goes away.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.chunk import ChunkStats
from pipeline.core.config import Config, budget
from pipeline.core.models import ExtractStats
from pipeline.dryrun.checks import SEVERITY_ORDER, Finding
from pipeline.dryrun.plan import ChannelTally, build_plan
from pipeline.dryrun.tokens import TokenSample

REPORT_VERSION = 1
EXIT_OK = 0
EXIT_ERRORS = 3
TOP_PROBLEMS = 5
CHART_USERS = 20
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class ReportInputs:
    """Everything `build_report` needs, gathered by `pipeline.dryrun.validate`."""

    workdir: Path
    config: Config
    extracted: list[ExtractStats]
    users: int
    conversations: int
    conversation_sizes: list[int]
    largest_conversations: list[dict[str, Any]]
    user_counts: dict[str, int]
    user_conversations: dict[str, int]
    timeline_unit: str
    timeline: dict[str, list[tuple[str, int]]]
    chunk: ChunkStats
    batch_tokens: TokenSample
    """Exact input tokens of the batches, counted on a sample (`pipeline.dryrun.tokens`)."""
    batch_messages: Sequence[int]
    samples: list[dict[str, Any]]
    ledger_present: bool
    ledger_delivered: int
    ledger_staged_delivered: int
    ledger_changed: int
    findings: list[Finding]
    since: datetime | None = None
    before_since: int = 0
    channels: ChannelTally | None = None


@dataclass(frozen=True)
class Report:
    """One validation report; `data` is exactly what report.json holds."""

    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when nothing would be rejected by the API."""
        return bool(self.data["ok"])

    @property
    def exit_code(self) -> int:
        """0 when nothing blocks the load, 3 when something would be rejected."""
        return int(self.data["exit_code"])


def summary(values: Sequence[int]) -> dict[str, float | int]:
    """min / median / p95 / max / mean of `values` (all 0 when empty)."""
    if not values:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "mean": 0}
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    p95 = ordered[min(n - 1, math.ceil(0.95 * n) - 1)]
    return {
        "min": ordered[0],
        "median": median,
        "p95": p95,
        "max": ordered[-1],
        "mean": round(sum(ordered) / n, 2),
    }


def histogram(values: Sequence[int], *, log: bool, upper: int | None = None) -> dict[str, Any]:
    """Bin edges and counts of `values` (log-spaced integer edges when `log`).

    `upper` stretches the range to include a limit (e.g. the token budget). When the
    range spans fewer than `HISTOGRAM_BINS` integers, every integer gets its own bin.

    Edges are ascending integers; bin i holds values with edges[i] <= v < edges[i+1], the
    last bin also holding v == edges[-1]. Counts sum to len(values).
    """
    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(max(values), upper or 0)
    if high - low < HISTOGRAM_BINS:  # few distinct values: one bin per integer
        edges = list(range(low, high + 2))
    elif log:
        top = high + 1
        step = math.log(top) / HISTOGRAM_BINS
        raw = [round(math.exp(step * i)) for i in range(HISTOGRAM_BINS + 1)]
        start = max(low, 1)
        edges = sorted({start, *[e for e in raw if e > start], top})
    else:
        width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
        edges = list(range(low, high + width + 1, width))
        if edges[-1] < high:
            edges.append(high)
    edges = sorted(set(edges))
    if len(edges) == 1:
        edges.append(edges[0] + 1)
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = bisect.bisect_right(edges, v) - 1
        counts[min(max(i, 0), len(counts) - 1)] += 1
    return {"edges": edges, "counts": counts}


def build_report(inp: ReportInputs) -> Report:
    """Assemble the report dict; every count is derived here once."""
    cfg = inp.config
    sources = []
    skipped_total: dict[str, int] = {}
    for source_cfg, st in zip(cfg.sources, inp.extracted, strict=True):
        for reason, n in st.skipped.items():
            skipped_total[reason] = skipped_total.get(reason, 0) + n
        sources.append(
            {
                "name": st.source,
                "kind": source_cfg.kind,
                "path": str(source_cfg.path),
                "read": st.read,
                "staged": st.staged,
                "skipped": sum(st.skipped.values()),
                "skipped_by_reason": dict(sorted(st.skipped.items())),
                "quarantined": st.quarantined,
                "users": st.users,
                "conversations": st.conversations,
                "balanced": st.balanced,
            }
        )
    chunk = inp.chunk
    checks_json = {f.id: f.to_json() for f in inp.findings}
    problems = sorted(
        (f for f in inp.findings if f.count),
        key=lambda f: (SEVERITY_ORDER[f.severity], -f.count, f.id),
    )
    errors = sum(1 for f in inp.findings if f.count and f.severity == "error")
    warnings = sum(1 for f in inp.findings if f.count and f.severity == "warning")
    # planned for the account (what MemOS allows), whatever the target of this config
    rps, tpm = budget(cfg.load, cfg.account)
    assert rps is not None
    slack = [s for s in cfg.sources if s.kind == "slack"]
    plan = build_plan(
        calls=chunk.batches,
        tokens=inp.batch_tokens.total(),
        tokens_estimated=not inp.batch_tokens.complete,
        token_ratio=inp.batch_tokens.ratio,
        batch_tokens=inp.batch_tokens.exact,
        requests_per_second=rps,
        tokens_per_minute=tpm,
        max_tokens_per_call=cfg.account.max_tokens_per_call,
        max_tokens=cfg.chunk.max_tokens,
        max_messages=cfg.chunk.max_messages,
        channels=inp.channels,
        slack_policy=str(slack[0].options.get("conversation", "thread")) if slack else None,
    )
    seconds = plan["estimated_seconds"]
    top_users = sorted(inp.user_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    counts = list(inp.user_counts.values())
    data: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "ok": errors == 0,
        "exit_code": EXIT_OK if errors == 0 else EXIT_ERRORS,
        "workdir": str(inp.workdir),
        "settings": {
            "target": cfg.load.target,
            "max_tokens": cfg.chunk.max_tokens,
            "max_messages": cfg.chunk.max_messages,
            "rate_per_second": rps,
            "tokens_per_minute": tpm,
            "max_tokens_per_call": cfg.account.max_tokens_per_call,
            "async_mode": cfg.load.async_mode,
            "resend_changed": cfg.load.resend_changed,
            "since": inp.since.isoformat() if inp.since else None,
        },
        "totals": {
            "sources": len(sources),
            "read": sum(s["read"] for s in sources),
            "staged": sum(s["staged"] for s in sources),
            "skipped": sum(skipped_total.values()),
            "quarantined": sum(s["quarantined"] for s in sources),
            "users": inp.users,
            "conversations": inp.conversations,
            "already_delivered": chunk.excluded - inp.before_since,
            "before_since": inp.before_since,
            "messages_to_send": chunk.batched,
            "users_to_send": chunk.users,
            "conversations_to_send": chunk.conversations,
            "batches": chunk.batches,
            "api_calls": chunk.batches,
            "tokens": plan["tokens"],
            "estimated_seconds": seconds,
            "estimated_duration": plan["estimated_duration"],
            "split_messages": chunk.split_messages,
            "shortened_ids": len(chunk.shortened_ids),
            "redacted_messages": chunk.masked_messages,
            "dropped_by_redaction": chunk.dropped,
            "errors": errors,
            "warnings": warnings,
        },
        "alerts": [],
        "plan": plan,
        "skipped": dict(sorted(skipped_total.items())),
        "sources": sources,
        "ledger": {
            "present": inp.ledger_present,
            "delivered_total": inp.ledger_delivered,
            "staged_already_delivered": inp.ledger_staged_delivered,
            "changed": inp.ledger_changed,
            "excluded": chunk.excluded - inp.before_since,
            "to_send": chunk.batched,
        },
        "batches": {
            "count": chunk.batches,
            "limit_tokens": cfg.chunk.max_tokens,
            "limit_messages": cfg.chunk.max_messages,
            "tokens": summary(inp.batch_tokens.exact),
            "tokens_counted_batches": len(inp.batch_tokens.exact),
            "messages": summary(inp.batch_messages),
            "token_histogram": histogram(
                inp.batch_tokens.exact, log=False, upper=cfg.chunk.max_tokens
            ),
        },
        "conversations": {
            "count": inp.conversations,
            "sizes": summary(inp.conversation_sizes),
            "size_histogram": histogram(inp.conversation_sizes, log=True),
            "largest": inp.largest_conversations,
        },
        "users": {
            "count": inp.users,
            "messages": summary(counts),
            "largest": [
                {"user_id": u, "messages": n, "conversations": inp.user_conversations.get(u, 0)}
                for u, n in top_users[:10]
            ],
            "volumes": [{"user_id": u, "messages": n} for u, n in top_users[:CHART_USERS]],
        },
        "timeline": {
            "unit": inp.timeline_unit,
            "series": {s: [[b, n] for b, n in pts] for s, pts in inp.timeline.items()},
        },
        "redaction": {"policy": cfg.redact.policy().actions(), **chunk.to_json()["redacted"]},
        "checks": checks_json,
        "problems": [
            {"id": f.id, "severity": f.severity, "count": f.count, "unit": f.unit, "title": f.title}
            for f in problems
        ],
        "samples": inp.samples,
    }
    data["alerts"] = _alerts(int(data["totals"]["quarantined"]), chunk.batched)
    return Report(data)


def _alerts(quarantined: int, to_send: int) -> list[str]:
    """What the report must show in red even when nothing would be rejected: unreadable
    records, and a run that would send nothing at all."""
    out = []
    if quarantined:
        out.append(f"{quarantined:,} records were quarantined (unreadable): see quarantine.jsonl")
    if to_send == 0:
        out.append("nothing would be sent: no message is new for this destination")
    return out


def _plan_line(plan: dict[str, Any]) -> str:
    tpm = plan["tokens_per_minute"]
    budget_text = f"{plan['requests_per_second']:g} calls/s" + (
        f", {tpm:,} tokens/min" if tpm else ""
    )
    return (
        f"quota: {plan['calls']:,} addMessage calls; duration: {plan['estimated_duration']} "
        f"at {budget_text} (bound by {plan['bound_by']}); calls use a median "
        f"{plan['call_budget_used']['median']:.1%} of their token budget"
    )


def summary_text(report: Report, files: Sequence[Path] = ()) -> str:
    """The terminal summary: the figures a team lead asks first, then the top problems."""
    d = report.data
    t = d["totals"]
    s = d["settings"]
    lines = [
        f"sources {t['sources']}: read {t['read']:,}, staged {t['staged']:,}, "
        f"skipped {t['skipped']:,}, quarantined {t['quarantined']:,}",
        f"users {t['users']:,}, conversations {t['conversations']:,}",
    ]
    if s["since"]:
        lines.append(f"before {s['since']} (left out): {t['before_since']:,}")
    if d["ledger"]["present"]:
        lines.append(
            f"already delivered {t['already_delivered']:,} "
            f"({d['ledger']['changed']:,} changed since)"
        )
    lines += [
        f"to send: {t['messages_to_send']:,} messages in {t['batches']:,} batches "
        f"for {t['users_to_send']:,} users, ~{t['tokens']:,} tokens",
        _plan_line(d["plan"]),
    ]
    r = d["redaction"]
    if r["masked_messages"] or r["dropped_messages"]:
        masked = ", ".join(f"{k} {n}" for k, n in r["masked"].items()) or "none"
        dropped = ", ".join(f"{k} {n}" for k, n in r["dropped"].items()) or "none"
        lines.append(
            f"redaction: {r['masked_messages']:,} messages masked ({masked}); "
            f"{r['dropped_messages']:,} dropped ({dropped})"
        )
    if d["plan"]["recommendation"]:
        lines.append(f"plan: {d['plan']['recommendation']}")
    problems = d["problems"][:TOP_PROBLEMS]
    if problems:
        lines.append("problems:")
        for p in problems:
            lines.append(f"  {p['severity']:<7} {p['title']}: {p['count']:,} {p['unit']}")
        more = len(d["problems"]) - len(problems)
        if more:
            lines.append(f"  … and {more} more (see the report)")
    lines += [f"attention: {alert}" for alert in d.get("alerts", [])]
    if report.ok:
        lines.append("result: OK, nothing would be rejected")
    else:
        lines.append(f"result: BLOCKED, {t['errors']} check(s) found what the API would reject")
    if files:
        lines.append("report: " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
