"""The line formats of a WhatsApp chat export: message headers, dates and clocks.

A message starts at a line that begins with a header; every other line continues the
message above it (multi-line messages). Two header families exist:

- Android: `31/12/2020, 22:15 - ` (no seconds), e.g. `12/31/20, 10:15 PM - Ann: hi`
- iOS: `[31/12/2020, 22:15:30] ` (seconds), e.g. `‎[12/31/20, 10:15:30 PM] Ann: hi`

Locales vary the date separator (`/ . -`), the year (2 or 4 digits, or first: `2020-12-31`),
the clock (24-hour, or 12-hour with `AM`, `am`, `a.m.`, `a. m.`), the spaces (U+00A0, and
U+202F before AM/PM in recent versions), `.` as time separator and `klo` before the time
(Finnish), and a U+200E mark before iOS headers of attachments and system lines. The family
is chosen once per file from its first 64 KB; the day/month order once per file from all
its dates (`decide_order`), never per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo

Order = Literal["dmy", "mdy", "ymd"]
_SP = "[ \u00a0\u202f]"
_DATE = r"(\d{1,4}[./-]\d{1,2}[./-]\d{2,4})\.?"
_TIME = (
    r"(\d{1,2}[:.]\d{2}(?:[:.]\d{2})?"
    rf"(?:{_SP}?[AaPp]\.?{_SP}?[Mm]\.?)?)"
)
_BETWEEN = rf"(?:,{_SP}?|{_SP})(?:klo{_SP})?"
ANDROID = re.compile(rf"^[\u200e\u200f]?{_DATE}{_BETWEEN}{_TIME}{_SP}[-\u2013]{_SP}", re.M)
IOS = re.compile(rf"^[\u200e\u200f]?\[{_DATE}{_BETWEEN}{_TIME}\]{_SP}?", re.M)
FAMILIES = {"android": ANDROID, "ios": IOS}
_DATE_PARTS = re.compile(r"\d+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def detect_family(head: str) -> str | None:
    """`android` or `ios`: the header family with more line matches in `head` (the first
    ~64 KB of a file), provided the first non-blank line is such a header; else None."""
    first = next((ln for ln in head.lstrip("\ufeff").splitlines() if ln.strip()), "")
    best: tuple[int, str] | None = None
    for name, pattern in FAMILIES.items():
        if not pattern.match(first):
            continue
        count = sum(1 for _ in pattern.finditer(head))
        if best is None or count > best[0]:
            best = (count, name)
    return None if best is None else best[1]


def split_date(text: str) -> tuple[str, str, str] | None:
    """The three digit groups of a header's date."""
    parts = _DATE_PARTS.findall(text)
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class OrderDecision:
    """The date order of one file, and why it was chosen (for metadata and docs)."""

    order: Order
    basis: Literal["configured", "year_first", "unambiguous", "sequence", "default"]


def conclusive(parts: tuple[str, str, str]) -> Order | None:
    """The order that one date proves on its own (a first field of 3+ digits, or a day
    above 12 in either place), else None."""
    a, b, _ = parts
    if len(a) >= 3:
        return "ymd"
    if int(a) > 12 and int(b) <= 12:
        return "dmy"
    if int(b) > 12 and int(a) <= 12:
        return "mdy"
    return None


def decide_order(dates: Iterable[tuple[str, str, str]]) -> OrderDecision:
    """Day/month order for a file, from its distinct dates in order of first appearance.

    A date that proves the order decides it (the majority wins if dates disagree; lines of
    the other order are then quarantined). Otherwise both readings are valid: the one in
    which the dates run forward with smaller steps wins (12 daily dates 01/01 … 12/01 read
    day-first span 11 days, month-first 11 months), so a longer re-export that reveals the
    order agrees with a shorter one that did not. A tie (e.g. one date only) is day-first,
    the order of most locales.
    """
    listed = list(dates)
    votes = {"dmy": 0, "mdy": 0, "ymd": 0}
    for parts in listed:
        proof = conclusive(parts)
        if proof is not None:
            votes[proof] += 1
    if votes["ymd"]:
        return OrderDecision("ymd", "year_first")
    if votes["dmy"] or votes["mdy"]:
        return OrderDecision("dmy" if votes["dmy"] >= votes["mdy"] else "mdy", "unambiguous")
    scores: dict[Order, tuple[int, int]] = {}
    for order in ("dmy", "mdy"):
        days = [d for d in (to_date(p, order) for p in listed) if d is not None]
        back = sum(1 for x, y in zip(days, days[1:], strict=False) if y < x)
        steps = sum(abs(y - x) for x, y in zip(days, days[1:], strict=False))
        scores[order] = (back, steps)
    if scores["mdy"] < scores["dmy"]:
        return OrderDecision("mdy", "sequence")
    if scores["dmy"] < scores["mdy"]:
        return OrderDecision("dmy", "sequence")
    return OrderDecision("dmy", "default")


def to_date(parts: tuple[str, str, str], order: Order) -> int | None:
    """Proleptic ordinal of the date in `order` (None when it is not a calendar date)."""
    a, b, c = parts
    if order == "ymd":
        y, m, d = a, b, c
    elif order == "dmy":
        d, m, y = a, b, c
    else:
        m, d, y = a, b, c
    if len(y) == 2:
        year = 2000 + int(y)
    elif len(y) == 4:
        year = int(y)
    else:
        return None
    try:
        return date(year, int(m), int(d)).toordinal()
    except ValueError:
        return None


def parse_clock(text: str) -> tuple[int, int, int] | None:
    """(hour, minute, second) of a header's time, 12- or 24-hour; None when invalid."""
    digits = _DATE_PARTS.findall(text)
    hour, minute = int(digits[0]), int(digits[1])
    second = int(digits[2]) if len(digits) > 2 else 0
    marker = next((ch for ch in text if ch.isalpha()), "").lower()
    if marker:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if marker == "p" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return hour, minute, second


class Clock:
    """Header date and time strings -> local epoch microseconds, UTC offsets, minute keys.

    Dates and times are parsed once per distinct string (`days`, `times`: a chat has few
    distinct dates, and at most 86,400 distinct times). The minute key (`2020-12-31T22:15`,
    the wall-clock minute as written) is part of the message id, so it never depends on
    the `timezone` option. Offsets of a non-UTC zone are cached per local quarter hour
    (every real offset and transition falls on one).
    """

    def __init__(self, order: Order, tz_name: str) -> None:
        self.order = order
        self.tz = None if tz_name == "UTC" else ZoneInfo(tz_name)
        self.days: dict[str, tuple[int, str] | str] = {}
        self.times: dict[str, tuple[int, str] | str] = {}
        self.offsets: dict[int, int] = {}

    def day(self, text: str) -> tuple[int, str] | str:
        """(local midnight in epoch microseconds, ISO date), or why the date is invalid."""
        hit = self.days.get(text)
        if hit is None:
            parts = split_date(text)
            ordinal = None if parts is None else to_date(parts, self.order)
            if ordinal is None:
                hit = f"not a valid date in {self.order} order: {text!r}"
            else:
                iso = date.fromordinal(ordinal).isoformat()
                hit = ((ordinal - _EPOCH_DAY) * 86_400_000_000, iso)
            self.days[text] = hit
        return hit

    def time(self, text: str) -> tuple[int, str] | str:
        """(microseconds since local midnight, "HH:MM"), or why the time is invalid."""
        hit = self.times.get(text)
        if hit is None:
            clock = parse_clock(text)
            if clock is None:
                hit = f"not a valid time: {text!r}"
            else:
                hour, minute, second = clock
                hit = ((hour * 3600 + minute * 60 + second) * 1_000_000, f"{hour:02d}:{minute:02d}")
            self.times[text] = hit
        return hit

    def to_utc(self, local: int) -> int:
        """UTC epoch microseconds of a local wall-clock time (identity for UTC). In a gap
        or fold of daylight saving time the earlier offset applies (zoneinfo's fold=0)."""
        tz = self.tz
        if tz is None:
            return local
        quarter = local // 900_000_000
        offset = self.offsets.get(quarter)
        if offset is None:
            wall = _EPOCH.replace(tzinfo=None) + timedelta(microseconds=quarter * 900_000_000)
            delta = wall.replace(tzinfo=tz).utcoffset() or timedelta(0)
            offset = delta // timedelta(microseconds=1)
            self.offsets[quarter] = offset
        return local - offset
