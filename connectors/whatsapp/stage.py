"""Staging of one WhatsApp chat file: header triples -> rows in STAGING_SCHEMA.

A block of text is cut by the header pattern (`re.split`, in C) into (date, time, rest)
triples; a message runs from its header to the next one. Per message: the timestamp
(cached per distinct date and time string), the sender (cached), the body's verdict
(`content.classify`), the id, and one append per column. Rows leave as `MessageTable`s.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import orjson

from connectors.export_files import ExportFiles
from connectors.row_buffer import RowBuffer
from connectors.whatsapp.content import (
    SKIP_EXACT,
    SKIP_PREFIXES,
    classify,
    clean_sender,
    is_attributed_event,
)
from connectors.whatsapp.lines import (
    FAMILIES,
    Clock,
    Order,
    conclusive,
    decide_order,
    split_date,
)
from connectors.whatsapp.options import Options
from pipeline.core.models import Event, Quarantined, Skipped, excerpt

SOURCE = "whatsapp"
BLOCK_BYTES = 1 << 20
"""Bytes decoded and scanned at a time (cut after the block's last line break)."""
COUNTER_MAX = 200_000
"""Entries of the per-minute author counters kept before old days are dropped."""
_NOTICES = tuple(p for p, reason in SKIP_PREFIXES if reason == "whatsapp:encryption_notice")
NOTICE_PREFIXES = tuple(p for p, _ in SKIP_PREFIXES)
_SLOW_FIRST = frozenset("< \t\r\u200e\u00a0")
_SLOW_LAST = frozenset(">) \t\r\u00a0")


def _notice_senders(head: str, pattern: re.Pattern[str]) -> set[str]:
    """Senders of encryption notices in `head` (iOS attributes the notice to the chat)."""
    found: set[str] = set()
    parts = pattern.split(head)
    for k in range(3, len(parts), 3):
        sender, sep, body = parts[k].partition(": ")
        if sep and body.replace("\u200e", "").startswith(_NOTICES):
            found.add(sender)
    return found


def blocks(fh: IO[bytes], limit: int | None = None) -> Iterator[tuple[str, bool]]:
    """Decoded text of a stream (its first `limit` bytes), cut after line breaks; True
    when invalid bytes were replaced. A leading byte-order mark is dropped."""
    held: list[bytes] = []  # bytes after the last line break so far (a long line)
    first = True
    left = limit
    while True:
        size = BLOCK_BYTES if left is None else min(BLOCK_BYTES, left)
        data = fh.read(size) if size > 0 else b""
        if left is not None:
            left -= len(data)
        if not data:
            break
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            held.append(data)
            continue
        chunk = b"".join([*held, data[:cut]]) if held else data[:cut]
        held = [data[cut:]] if cut < len(data) else []
        text, bad = _decode(chunk)
        if first:
            text, first = text.lstrip("\ufeff"), False
        yield text, bad
    if held:
        text, bad = _decode(b"".join(held))
        yield (text.lstrip("\ufeff") if first else text), bad


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True


@dataclass
class _Author:
    """What is known of one sender string (cached per chat)."""

    author_id: str
    author_name: str
    user_id: str | None
    role: str
    prefix: str
    name_space: str


@dataclass
class ChatFile:
    """One chat file of an export and what is fixed for all of it: its header family,
    chat name, day/month order and the senders that speak for the chat itself.

    `stage` reads a byte range of the file (the whole file, or a part cut at a line where
    the date changes, see connectors/whatsapp/read.py), so that parts give the same rows
    as one pass: ids depend on the minute and the author's lines in it, `seq` is the line
    number, and neither a minute nor a day spans two parts.
    """

    export: ExportFiles
    name: str
    family: str
    chat: str
    options: Options
    order: Order = "dmy"
    chat_voices: frozenset[str] = frozenset()
    authors: dict[str, _Author] = field(default_factory=dict)

    @property
    def pattern(self) -> re.Pattern[str]:
        return FAMILIES[self.family]

    @property
    def label(self) -> str:
        return self.export.label(self.name)

    def decide(self, head: str) -> None:
        """Set the day/month order (configured, or from the header dates: stops at the
        first date that proves the order, else all distinct dates decide) and the chat's
        own voices (iOS: the sender of the encryption notice near the top of `head`)."""
        self.chat_voices = frozenset({self.chat, *_notice_senders(head, self.pattern)})
        if self.options.date_order != "auto":
            self.order = self.options.date_order
            return
        seen: dict[str, None] = {}
        try:
            with self.export.open(self.name) as fh:
                for text, _ in blocks(fh):
                    for date_text, _time in self.pattern.findall(text):
                        if date_text in seen:
                            continue
                        seen[date_text] = None
                        parts = split_date(date_text)
                        if parts is not None and conclusive(parts) is not None:
                            self.order = decide_order([parts]).order
                            return
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error):
            pass  # staging reports the damage
        self.order = decide_order([p for p in map(split_date, seen) if p is not None]).order

    def stage(
        self, rows: RowBuffer, start: int = 0, end: int | None = None, first_line: int = 1
    ) -> Iterator[Event]:
        """Events of the file's bytes [start, end) (starting at a line start whose number
        is `first_line`): tables from `rows` whenever it fills, quarantined records, and
        the skip counts last."""
        label = self.label
        clock = Clock(self.order, self.options.timezone)
        skipped: dict[str, int] = {}
        try:
            with self.export.open(self.name) as fh:
                if start:
                    fh.seek(start)
                limit = None if end is None else end - start
                yield from self._stage(blocks(fh, limit), rows, clock, label, skipped, first_line)
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            yield Quarantined(
                label, "unreadable", f"whatsapp:unreadable_file: {exc}; the rest was not read"
            )
        for reason, count in sorted(skipped.items()):
            yield Skipped(reason, count)

    def _author(self, raw: str) -> _Author:
        author_id, author_name = clean_sender(raw)
        o = self.options
        owner = o.owner_name is not None and o.owner_name.strip() in (author_name, author_id)
        user_id: str | None
        if o.memory_owner != "author" or (owner and o.user_id):
            user_id = o.user_id
        else:
            user_id = (
                o.user_map.get(author_id) or o.user_map.get(author_name) or o.user_map.get(raw)
            )
            if user_id is None:
                user_id = o.user_id_template.format(id=author_id, name=author_name) or None
        role = "user" if owner or o.owner_name is None else o.others_role
        prefix_on = o.speaker_prefix
        if prefix_on is None:
            prefix_on = o.memory_owner == "workspace"
        author = _Author(
            author_id,
            author_name,
            user_id,
            role,
            f"{author_name}: " if prefix_on else "",
            author_name + " ",
        )
        self.authors[raw] = author
        return author

    def _stage(
        self,
        texts: Iterator[tuple[str, bool]],
        rows: RowBuffer,
        clock: Clock,
        label: str,
        skipped: dict[str, int],
        first_line: int,
    ) -> Iterator[Event]:
        """The file's messages into the row buffer (tables yielded as it fills).

        `pattern.split` cuts each block into (date, time, rest-until-next-header) triples in
        C; blocks end at line breaks, so the text before a block's first header continues
        the last message of the block before (kept `pending` until then).
        """
        state = _State(chat_voices=set(self.chat_voices), line=first_line)
        pattern = self.pattern
        pending: tuple[str, str, str] | None = None
        more: list[str] = []  # continuation of `pending` from later blocks
        leading = True
        bad = False  # sticky: once bytes were replaced, messages are checked for U+FFFD
        for text, replaced in texts:
            bad = bad or replaced
            parts = pattern.split(text)
            head = parts[0]
            if pending is not None:
                if head:
                    more.append(head)
            elif leading and head.strip():
                yield Quarantined(
                    label,
                    "line 1",
                    "whatsapp:no_header: text before the first message line",
                    excerpt(head),
                )
            if len(parts) == 1:
                if pending is None:
                    state.line += head.count("\n")
                continue
            leading = False
            if pending is None:
                state.line += head.count("\n")
            it = iter(parts[1:])
            triples: list[tuple[str, str, str]] = list(zip(it, it, it, strict=True))
            if pending is not None:
                if more:
                    pending = (pending[0], pending[1], "".join([pending[2], *more]))
                    more = []
                triples.insert(0, pending)
            pending = triples.pop()
            yield from self._messages(triples, rows, state, clock, label, skipped, bad)
        if pending is not None:
            if more:
                pending = (pending[0], pending[1], "".join([pending[2], *more]))
            yield from self._messages([pending], rows, state, clock, label, skipped, bad)

    def _messages(  # noqa: C901
        self,
        triples: list[tuple[str, str, str]],
        rows: RowBuffer,
        state: _State,
        clock: Clock,
        label: str,
        skipped: dict[str, int],
        bad: bool,
    ) -> Iterator[Event]:
        """Stage complete messages: (date text, time text, rest of the message)."""
        chat = self.chat
        mode = self.options.conversation
        gap = self.options.session_gap_minutes * 60_000_000
        conv_chat = f"{SOURCE}:{chat}"
        id_head = f"{chat}\x1f"
        authors = self.authors
        ios = self.family == "ios"
        chat_voices = state.chat_voices
        counters = state.counters
        skip_exact, prefixes = SKIP_EXACT, NOTICE_PREFIXES
        (
            a_source,
            a_file,
            a_pos,
            a_mid,
            a_conv,
            a_user,
            a_role,
            a_aid,
            a_aname,
            a_content,
            a_time,
            a_seq,
            a_meta,
        ) = rows.appenders()
        sha = hashlib.sha256
        days, times = clock.days, clock.times
        to_utc = clock.to_utc
        utc = clock.tz is None
        line = state.line
        last_micros = state.last_micros
        conv = state.conv or conv_chat
        day_key = state.day_key
        for date_text, time_text, raw in triples:
            where = line
            line += raw.count("\n")
            if raw[-1:] == "\n":
                raw = raw[:-2] if raw[-2:] == "\r\n" else raw[:-1]
            if "\r" in raw:
                raw = raw.replace("\r\n", "\n")
            day = days.get(date_text) or clock.day(date_text)
            tod = times.get(time_text) or clock.time(time_text)
            if isinstance(day, str) or isinstance(tod, str):
                invalid = day if isinstance(day, str) else tod
                yield Quarantined(
                    label, f"line {where}", f"whatsapp:bad_timestamp: {invalid}", excerpt(raw)
                )
                continue
            local = day[0] + tod[0]
            micros = local if utc else to_utc(local)
            colon = raw.find(": ")
            newline = raw.find("\n")
            if colon <= 0 or (0 <= newline < colon):
                verdict = classify(raw)
                why = verdict.reason if verdict is not None and verdict.reason else None
                if why is None or why == "whatsapp:empty":
                    why = "whatsapp:system"
                skipped[why] = skipped.get(why, 0) + 1
                continue
            sender = raw[:colon]
            author = authors.get(sender)
            if author is None:
                if '"' in sender or "\u201c" in sender:  # `X changed the subject from "a: b"`
                    skipped["whatsapp:system"] = skipped.get("whatsapp:system", 0) + 1
                    continue
                author = self._author(sender)
            aid = author.author_id
            minute = f"{day[1]}T{tod[1]}"
            count_key = f"{minute}\x1f{aid}"
            n = counters.get(count_key, 0)
            counters[count_key] = n + 1
            body = raw[colon + 2 :]
            if (
                body
                and body[0] not in _SLOW_FIRST
                and body[-1] not in _SLOW_LAST
                and "\n" not in body
                and "\u200e" not in body
                and body not in skip_exact
                and not body.startswith(prefixes)
            ):
                verdict = None  # plain one-line text: what `classify` would say, sooner
            else:
                verdict = classify(body)
            meta = None
            if verdict is None:
                content = body.strip()
                if (
                    ios
                    and (content.startswith(author.name_space) or sender in chat_voices)
                    and is_attributed_event(author.author_name, sender in chat_voices, content)
                ):
                    skipped["whatsapp:system"] = skipped.get("whatsapp:system", 0) + 1
                    continue
            else:
                if verdict.reason is not None:
                    skipped[verdict.reason] = skipped.get(verdict.reason, 0) + 1
                    if ios and verdict.reason == "whatsapp:encryption_notice":
                        chat_voices.add(sender)  # iOS names the chat as its sender
                    continue
                content = verdict.text
                extra: dict[str, object] = {}
                if verdict.attachment is not None:
                    extra["attachment"] = verdict.attachment
                if verdict.edited:
                    extra["edited"] = True
                meta = extra
            user_id = author.user_id
            if user_id is None:
                skipped["whatsapp:author_unmapped"] = skipped.get("whatsapp:author_unmapped", 0) + 1
                continue
            if bad and "\ufffd" in content:
                meta = {**(meta or {}), "invalid_utf8": True}
            if mode == "day":
                if day[1] != day_key:
                    day_key = day[1]
                    conv = f"{conv_chat}:{day_key}"
            elif mode == "session" and (last_micros is None or micros - last_micros > gap):
                conv = f"{conv_chat}:{minute}"
            if last_micros is None or micros > last_micros:
                last_micros = micros
            digest = sha(f"{id_head}{aid}\x1f{minute}\x1f{n}".encode()).hexdigest()
            a_source(SOURCE)
            a_file(label)
            a_pos(f"line {where}")
            a_mid(f"{SOURCE}:{digest[:24]}")
            a_conv(conv)
            a_user(user_id)
            a_role(author.role)
            a_aid(aid)
            a_aname(author.author_name)
            a_content(author.prefix + content if author.prefix else content)
            a_time(micros)
            a_seq(where)
            a_meta(None if meta is None else orjson.dumps(meta).decode())
        if rows.full and (table := rows.take()) is not None:
            yield table
        state.line, state.last_micros = line, last_micros
        state.conv, state.day_key = conv, day_key
        if len(counters) > COUNTER_MAX:
            state.counters = _recent(counters)


@dataclass
class _State:
    """Where the reading of one chat file stands between blocks."""

    chat_voices: set[str]
    counters: dict[str, int] = field(default_factory=dict)
    line: int = 1
    last_micros: int | None = None
    conv: str = ""
    day_key: str = ""


def _recent(counters: dict[str, int]) -> dict[str, int]:
    """The counters of the last two calendar days seen (older minutes never recur in a
    chronological export)."""
    days = sorted({key[:10] for key in counters})[-2:]
    return {k: v for k, v in counters.items() if k[:10] in days}
