"""SQLite store behind the local MemOS-compatible server (`memos-etl serve`).

It keeps every added message verbatim (user_id, conversation_id, role, content, chat_time,
tags, info, agent_id, app_id, the task that added it) in arrival order, and ranks them for
`/search/memory` with SQLite FTS5 (BM25). It stores and searches raw messages; it does not
run MemOS's LLM memory extraction.

Durability contract: `Store.add_messages` returns only after its transaction has committed
(WAL journal). With the default `synchronous=NORMAL` a committed add survives a killed
server process; `synchronous=FULL` also survives power loss, at some cost in speed.

The full-text index is derived data, brought up to date in batches (`Store.index_pending`):
the server does it every fraction of a second and before every search, so a search always
sees every committed message. Indexing 400 messages in one transaction costs about a quarter
of the CPU of indexing them four per transaction, and the index is most of a write's cost.

Chinese and Japanese: FTS5's `unicode61` tokenizer would treat a run of CJK characters as
one token, so every CJK character is indexed as its own token, and a CJK query run becomes
adjacent-character pairs (bigram phrases). Latin text is indexed as words (case and
diacritics folded). This is cheap (one regex pass) where the `trigram` tokenizer made every
insert about five times slower.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import orjson

from pipeline.core.errors import ConfigError, InputError

SCHEMA_VERSION = 2
Synchronous = Literal["NORMAL", "FULL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,            -- arrival order
    id TEXT NOT NULL,                   -- memory id shown by /search/memory
    task_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,              -- text content (multimodal parts flattened)
    chat_time TEXT,
    tags TEXT NOT NULL,                 -- JSON array
    info TEXT NOT NULL,                 -- JSON object
    agent_id TEXT,
    app_id TEXT,
    extra TEXT,                         -- JSON: tool_calls, tool_call_id, raw multimodal content
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation
    ON messages (user_id, conversation_id, seq);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    messages INTEGER NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts
    USING fts5(body, content='', tokenize='unicode61 remove_diacritics 2');
"""

_MIGRATE_TO_2 = """
CREATE TABLE IF NOT EXISTS fts_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_seq INTEGER NOT NULL        -- messages up to this seq are in messages_fts
);
INSERT OR IGNORE INTO fts_state VALUES (1, (SELECT coalesce(max(seq), 0) FROM messages));
"""
"""Version 1 indexed each message as it was added; version 2 indexes in batches."""

_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"([{_CJK}]+)")
_WORD = re.compile(r"[^\W_]+")
STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word list reads better as text
        "a an and are as at be but by can could did do does for from had has have how i if in"
        " is it its me my no not of on or our should so than that the their them then there"
        " these they this to was we were what when where which who why will with would you your"
    ).split()
)
"""English function words left out of a query (unless it has nothing else)."""


@dataclass(frozen=True)
class NewMessage:
    """One message to store; `extra` is JSON text of fields kept but not searched."""

    role: str
    content: str
    chat_time: str | None = None
    extra: str | None = None


def fts_text(text: str) -> str:
    """Text as indexed: every CJK character stands alone so each becomes one token."""
    return _CJK_CHAR.sub(r" \g<0> ", text)


def query_terms(query: str) -> list[str]:
    """Search terms of a query: its words but stopwords, and each adjacent pair of a CJK run
    ("北 京"), case-folded."""
    terms: list[str] = []
    for i, part in enumerate(_CJK_RUN.split(query)):
        if i % 2:  # a CJK run
            if len(part) == 1:
                terms.append(part)
            terms.extend(f"{a} {b}" for a, b in zip(part, part[1:], strict=False))
        else:
            terms.extend(_WORD.findall(part))
    unique = list(dict.fromkeys(t.casefold() for t in terms))
    content_terms = [t for t in unique if t not in STOPWORDS]
    return content_terms or unique


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: any query term may match.

    Terms are quoted so user text can never be read as FTS5 syntax. None when the query has
    no searchable characters.
    """
    terms = query_terms(query)
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def term_share(content: str, terms: Sequence[str]) -> float:
    """Share of `terms` (from `query_terms`) found in `content`, in [0, 1]."""
    if not terms:
        return 0.0
    folded = content.casefold()
    words = set(_WORD.findall(fts_text(folded)))
    found = sum((t in words) if " " not in t else (t.replace(" ", "") in folded) for t in terms)
    return found / len(terms)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _connect(
    db_path: Path, synchronous: Synchronous, *, threaded: bool, create: bool
) -> sqlite3.Connection:
    """Open (and create or migrate) a store; refuse SQLite files that are something else."""
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=not threaded)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open local store {db_path}: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{db_path}: store schema version {version} is newer than this "
                f"memos-etl ({SCHEMA_VERSION}); upgrade memos-etl"
            )
        if version == 0:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables or not create:
                raise InputError(f"{db_path} is not a memos-etl local store")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if version < SCHEMA_VERSION:
            conn.executescript(
                f"BEGIN; {_SCHEMA} {_MIGRATE_TO_2} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(f"cannot open local store {db_path}: {exc}") from None
    except (ConfigError, InputError):
        conn.close()
        raise
    return conn


class Store:
    """The server's one read-write connection. Not thread-safe: one thread uses it at a time.

    Created in the starting thread (so a bad path fails early) and then used only by the
    server's event-loop thread.
    """

    def __init__(self, db_path: Path, synchronous: Synchronous = "NORMAL") -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self._conn = _connect(db_path, synchronous, threaded=True, create=True)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self._conn.close()

    def add_messages(
        self,
        user_id: str | Sequence[str],
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        tags: Sequence[str] = (),
        info: Mapping[str, Any] | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        task_id: str | None = None,
    ) -> str:
        """Store `messages` in one transaction and return the task id once committed.

        Several user ids (a group chat) store the messages once for each of them.
        """
        users = [user_id] if isinstance(user_id, str) else list(dict.fromkeys(user_id))
        task_id = task_id or uuid.uuid4().hex
        now = _utc_now()
        tags_json = orjson.dumps(list(tags)).decode()
        info_json = orjson.dumps(dict(info or {})).decode()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO messages (id, task_id, user_id, conversation_id, role, content,"
                " chat_time, tags, info, agent_id, app_id, extra, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        f"{task_id}-{i}",
                        task_id,
                        user,
                        conversation_id,
                        m.role,
                        m.content,
                        m.chat_time,
                        tags_json,
                        info_json,
                        agent_id,
                        app_id,
                        m.extra,
                        now,
                    )
                    for i, (user, m) in enumerate((u, m) for u in users for m in messages)
                ],
            )
            conn.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, 'completed', ?, ?)",
                (task_id, len(messages), now),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return task_id

    def index_pending(self, max_rows: int | None = None) -> int:
        """Add messages not yet in the search index to it (at most `max_rows`; None: all).

        Returns how many were indexed. Safe against another connection doing the same: the
        high-water mark is read under the write lock.
        """
        return index_pending(self._conn, max_rows)

    def latest_messages(
        self, user_id: str, conversation_id: str, limit: int, roles: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The conversation's latest `limit` messages (of `roles`), oldest first."""
        return _latest(self._conn, user_id, conversation_id, limit, roles)

    def search(
        self, user_id: str, query: str, limit: int, conversation_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Best `limit` messages of `user_id` for `query` (see `search_rows`), after
        bringing the index up to date."""
        self.index_pending()
        return search_rows(self._conn, user_id, query, limit, conversation_id)

    def task_status(self, task_id: str) -> str | None:
        """Status of a task this store issued, or None if it never issued it."""
        row = self._conn.execute(
            "SELECT status FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return None if row is None else str(row[0])


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so.

    On SQLITE_FULL (and a few other errors) SQLite rolls the transaction back itself; a
    second ROLLBACK would raise "no transaction is active" and hide the real error.
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def index_pending(conn: sqlite3.Connection, max_rows: int | None = None) -> int:
    """See `Store.index_pending`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (done,) = conn.execute("SELECT indexed_seq FROM fts_state WHERE id = 1").fetchone()
        rows = conn.execute(
            "SELECT seq, content FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (done, -1 if max_rows is None else max_rows),
        ).fetchall()
        if rows:
            conn.executemany(
                "INSERT INTO messages_fts (rowid, body) VALUES (?, ?)",
                [(seq, fts_text(content)) for seq, content in rows],
            )
            conn.execute("UPDATE fts_state SET indexed_seq = ? WHERE id = 1", (rows[-1][0],))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return len(rows)


_COLUMNS = (
    "seq, id, task_id, user_id, conversation_id, role, content, chat_time, tags, info,"
    " agent_id, app_id, extra, created_at"
)


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["tags"] = orjson.loads(out["tags"])
    out["info"] = orjson.loads(out["info"])
    out["extra"] = orjson.loads(out["extra"]) if out["extra"] else None
    return out


def _latest(
    conn: sqlite3.Connection,
    user_id: str,
    conversation_id: str,
    limit: int,
    roles: Sequence[str] | None,
) -> list[dict[str, Any]]:
    role_filter = ""
    params: list[Any] = [user_id, conversation_id]
    if roles is not None:
        role_filter = f" AND role IN ({','.join('?' * len(roles))})"
        params.extend(roles)
    params.append(limit)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE user_id = ? AND conversation_id = ?"
            f"{role_filter} ORDER BY seq DESC LIMIT ?",
            params,
        ).fetchall()
    finally:
        conn.row_factory = None
    return [_row_dict(r) for r in reversed(rows)]


def search_rows(
    conn: sqlite3.Connection,
    user_id: str,
    query: str,
    limit: int,
    conversation_id: str | None = None,
) -> list[dict[str, Any]]:
    """Rank `user_id`'s messages for `query`; `conversation_id` ones come first.

    FTS5 finds candidates (any term matches) ordered by BM25; they are then ranked by the
    share of query terms each contains, BM25 breaking ties. BM25 alone is degenerate on a
    small store (a term in half the messages has an inverse document frequency of zero),
    which is exactly where a new user looks first. Each row carries the stored columns plus
    `relativity`: that share of query terms found, in [0, 1].
    """
    terms = query_terms(query)
    if not terms or limit < 1:
        return []
    match = " OR ".join(f'"{t}"' for t in terms)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))},"
            " -bm25(messages_fts) AS score"
            " FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
            " WHERE messages_fts MATCH ? AND m.user_id = ?"
            " ORDER BY (m.conversation_id = ?) DESC, score DESC, m.seq LIMIT ?",
            (match, user_id, conversation_id, max(limit * 20, 200)),
        ).fetchall()
    finally:
        conn.row_factory = None
    ranked = []
    for r in rows:
        d = _row_dict(r)
        score = float(d.pop("score"))
        d["relativity"] = term_share(d["content"], terms)
        key = (d["conversation_id"] == conversation_id, d["relativity"], score, -d["seq"])
        ranked.append((key, d))
    ranked.sort(key=lambda kd: kd[0], reverse=True)
    return [d for _, d in ranked[:limit]]


@contextmanager
def _reader(db_path: Path) -> Iterator[sqlite3.Connection]:
    if not db_path.is_file():
        raise InputError(
            f"no local store at {db_path}; start `memos-etl serve --db {db_path}` "
            "and load into it first"
        )
    conn = _connect(db_path, "NORMAL", threaded=False, create=False)
    try:
        yield conn
    finally:
        conn.close()


def conversation_messages(
    db_path: Path, user_id: str, conversation_id: str
) -> list[dict[str, Any]]:
    """Every stored message of one conversation, in arrival order, as plain dicts."""
    with _reader(db_path) as conn:
        return _latest(conn, user_id, conversation_id, -1, None)


def message_counts(db_path: Path) -> dict[tuple[str, str], int]:
    """Stored message count per (user_id, conversation_id)."""
    with _reader(db_path) as conn:
        rows = conn.execute(
            "SELECT user_id, conversation_id, count(*) FROM messages"
            " GROUP BY user_id, conversation_id ORDER BY 1, 2"
        ).fetchall()
    return {(u, c): int(n) for u, c, n in rows}


def search_store(
    db_path: Path, user_id: str, query: str, limit: int = 10, conversation_id: str | None = None
) -> list[dict[str, Any]]:
    """`search_rows` on a store file, for the `search` command and reports."""
    with _reader(db_path) as conn:
        index_pending(conn)
        return search_rows(conn, user_id, query, limit, conversation_id)
