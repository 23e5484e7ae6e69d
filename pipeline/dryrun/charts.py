"""Report charts: matplotlib figures rendered to inline SVG text.

Each function takes the report dict's own figures, so a chart shows exactly what
report.json says. Figures are plain `matplotlib.figure.Figure` objects saved with the SVG
backend: no pyplot, no GUI backend, no global figure registry. Glyphs are embedded as
paths (`svg.fonttype: path`) so the SVG needs no fonts, and ids are salted per chart so
several SVGs can share one HTML page.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import matplotlib.ticker as ticker
from matplotlib.figure import Figure

_STYLE: dict[str, Any] = {
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 96,
}
_BLUE = "#3465a4"
_RED = "#cc0000"
TIMELINE_YEARS = (1900, 2199)
"""Years the timeline draws. Matplotlib only handles years 1-9999 and pads the axis past
the data, so a message dated 0001 or 9999 would crash the report; such outliers are left
out of the chart (with a note under it) and stay in report.json."""


@contextmanager
def _figure(name: str, width: float = 7.0, height: float = 3.0) -> Iterator[Figure]:
    rc: Any = {**_STYLE, "svg.hashsalt": name}
    with matplotlib.rc_context(rc):
        yield Figure(figsize=(width, height))


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    start = text.find("<svg")
    svg = text[start:] if start >= 0 else text
    return re.sub(r"<svg ", '<svg role="img" ', svg, count=1)


def _empty(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#666666")


def timeline(data: dict[str, Any]) -> str:
    """Messages over time per source (one line per source)."""
    series, outside = _drawable(data["timeline"]["series"])
    first, last = TIMELINE_YEARS
    note = (
        f"{outside:,} message{'s' if outside != 1 else ''} dated before {first} or after "
        f"{last} not drawn (see report.json)"
        if outside
        else None
    )
    with _figure("timeline") as fig:
        if not series:
            _empty(fig, note or "no timestamps")
            return _svg(fig)
        ax = fig.add_subplot()
        if note:
            ax.set_title(note, fontsize=8, color="#666666", loc="left")
        for source, points in series.items():
            xs: list[Any] = [p[0] for p in points]
            ys = [p[1] for p in points]
            ax.plot(
                xs,
                ys,
                marker="o" if len(xs) < 40 else None,
                markersize=3,
                linewidth=1.2,
                label=source,
            )
        ax.set_ylabel(f"messages per {data['timeline']['unit']}")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        days = {p[0] for pts in series.values() for p in pts}
        if data["timeline"]["unit"] == "day" and len(days) < 8:
            ax.xaxis.set_major_locator(mdates.DayLocator())  # type: ignore[no-untyped-call]
        locator = ax.xaxis.get_major_locator()
        formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(formatter)
        ax.legend(loc="best", frameon=False)
        return _svg(fig)


def _drawable(
    series: dict[str, list[list[Any]]],
) -> tuple[dict[str, list[tuple[date, int]]], int]:
    """The points inside `TIMELINE_YEARS` per source, and how many messages were left out."""
    first, last = TIMELINE_YEARS
    kept: dict[str, list[tuple[date, int]]] = {}
    outside = 0
    for source, points in series.items():
        for day, count in points:
            when = date.fromisoformat(day)
            if first <= when.year <= last:
                kept.setdefault(source, []).append((when, count))
            else:
                outside += count
    return kept, outside


def _bars(fig: Figure, hist: dict[str, Any], xlabel: str, log_x: bool) -> Any:
    ax = fig.add_subplot()
    edges, counts = hist["edges"], hist["counts"]
    widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
    if all(w == 1 for w in widths):  # one bin per integer: a bar centred on each value
        ax.bar(edges[:-1], counts, width=0.8, color=_BLUE)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        log_x = False
    else:
        ax.bar(
            edges[:-1], counts, width=widths, align="edge", color=_BLUE, edgecolor="white",
            linewidth=0.5,
        )  # fmt: skip
    if log_x and edges[-1] > 30 * max(edges[0], 1):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    return ax


def conversation_sizes(data: dict[str, Any]) -> str:
    """Distribution of messages per conversation (log-spaced bins)."""
    hist = data["conversations"]["size_histogram"]
    with _figure("conversation_sizes") as fig:
        if not hist["counts"]:
            _empty(fig, "no conversations")
            return _svg(fig)
        _bars(fig, hist, "messages per conversation", log_x=True)
        return _svg(fig)


def batch_tokens(data: dict[str, Any]) -> str:
    """Distribution of tokens per batch, with the configured per-request limit."""
    hist = data["batches"]["token_histogram"]
    limit = data["batches"]["limit_tokens"]
    with _figure("batch_tokens") as fig:
        if not hist["counts"]:
            _empty(fig, "no batches")
            return _svg(fig)
        ax = _bars(fig, hist, "tokens per batch", log_x=False)
        ax.axvline(limit, color=_RED, linestyle="--", linewidth=1.2)
        ax.text(
            limit, ax.get_ylim()[1] * 0.95, f" limit {limit:,}", color=_RED, ha="right", va="top"
        )
        return _svg(fig)


def user_volumes(data: dict[str, Any]) -> str:
    """Messages per user for the largest users, with the median as a reference line."""
    volumes = data["users"]["volumes"]
    with _figure("user_volumes", height=max(2.0, 0.22 * len(volumes) + 0.8)) as fig:
        if not volumes:
            _empty(fig, "no users")
            return _svg(fig)
        ax = fig.add_subplot()
        labels = [_short(v["user_id"]) for v in reversed(volumes)]
        ax.barh(labels, [v["messages"] for v in reversed(volumes)], color=_BLUE)
        median = data["users"]["messages"]["median"]
        ax.axvline(median, color=_RED, linestyle="--", linewidth=1.0)
        ax.text(median, -0.5, f" median {median:g}", color=_RED, va="bottom")
        ax.set_xlabel("messages")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(axis="y", visible=False)
        return _svg(fig)


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def all_charts(data: dict[str, Any]) -> dict[str, str]:
    """Every chart of the HTML report, by name."""
    return {
        "timeline": timeline(data),
        "conversation_sizes": conversation_sizes(data),
        "batch_tokens": batch_tokens(data),
        "user_volumes": user_volumes(data),
    }
