"""SQLite store behind the local MemOS-compatible server (`memos-etl serve`).

It keeps every added message verbatim (user_id, conversation_id, role, content, chat_time,
tags, info, agent_id, app_id, the task that added it) in arrival order, and ranks them for
`/search/memory` with SQLite FTS5 (BM25). It stores and searches raw messages; it does not
run MemOS's LLM memory extraction.

Durability contract: `Store.add_messages` returns only after its transaction has committed
(WAL journal). With the default `synchronous=NORMAL` a committed add survives a killed
server process; `synchronous=FULL` also survives power loss, at some cost in speed.

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

from pipeline.errors import ConfigError, InputError

SCHEMA_VERSION = 1
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

_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"([{_CJK}]+)")
_WORD = re.compile(r"[^\W_]+")


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


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression: any query word, or any adjacent CJK pair, may match.

    Terms are quoted so user text can never be read as FTS5 syntax. None when the query has
    no searchable characters.
    """
    terms: list[str] = []
    for i, part in enumerate(_CJK_RUN.split(query)):
        if i % 2:  # a CJK run
            if len(part) == 1:
                terms.append(part)
            terms.extend(f"{a} {b}" for a, b in zip(part, part[1:], strict=False))
        else:
            terms.extend(_WORD.findall(part))
    unique = list(dict.fromkeys(terms))
    if not unique:
        return None
    return " OR ".join(f'"{t}"' for t in unique)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _connect(db_path: Path, synchronous: Synchronous, *, threaded: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=not threaded)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise ConfigError(
                f"{db_path}: store schema version {version} is newer than this "
                f"memos-etl ({SCHEMA_VERSION}); upgrade memos-etl"
            )
        if version < SCHEMA_VERSION:
            conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot open local store {db_path}: {exc}") from None
    return conn


class Store:
    """The server's one read-write connection. Not thread-safe: one thread uses it at a time.

    Created in the starting thread (so a bad path fails early) and then used only by the
    server's event-loop thread.
    """

    def __init__(self, db_path: Path, synchronous: Synchronous = "NORMAL") -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self._conn = _connect(db_path, synchronous, threaded=True)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self._conn.close()

    def add_messages(
        self,
        user_id: str,
        conversation_id: str,
        messages: Sequence[NewMessage],
        *,
        tags: Sequence[str] = (),
        info: Mapping[str, Any] | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
    ) -> str:
        """Store `messages` in one transaction and return the new task id once committed."""
        task_id = uuid.uuid4().hex
        now = _utc_now()
        tags_json = orjson.dumps(list(tags)).decode()
        info_json = orjson.dumps(dict(info or {})).decode()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fts_rows = []
            for i, m in enumerate(messages):
                cur = conn.execute(
                    "INSERT INTO messages (id, task_id, user_id, conversation_id, role, content,"
                    " chat_time, tags, info, agent_id, app_id, extra, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        f"{task_id}-{i}",
                        task_id,
                        user_id,
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
                    ),
                )
                fts_rows.append((cur.lastrowid, fts_text(m.content)))
            conn.executemany("INSERT INTO messages_fts (rowid, body) VALUES (?, ?)", fts_rows)
            conn.execute(
                "INSERT INTO tasks VALUES (?, 'completed', ?, ?)", (task_id, len(messages), now)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return task_id

    def latest_messages(
        self, user_id: str, conversation_id: str, limit: int, roles: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The conversation's latest `limit` messages (of `roles`), oldest first."""
        return _latest(self._conn, user_id, conversation_id, limit, roles)

    def search(
        self, user_id: str, query: str, limit: int, conversation_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Best `limit` messages of `user_id` for `query` (see `search_rows`)."""
        return search_rows(self._conn, user_id, query, limit, conversation_id)

    def task_status(self, task_id: str) -> str | None:
        """Status of a task this store issued, or None if it never issued it."""
        row = self._conn.execute(
            "SELECT status FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return None if row is None else str(row[0])


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
    """Rank `user_id`'s messages for `query` with BM25; `conversation_id` ones come first.

    Each row carries the stored columns plus `relativity` in [0, 1): s / (1 + s) for the
    BM25 score s (higher is more relevant).
    """
    match = fts_query(query)
    if match is None or limit < 1:
        return []
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))},"
            " -bm25(messages_fts) AS score"
            " FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid"
            " WHERE messages_fts MATCH ? AND m.user_id = ?"
            " ORDER BY (m.conversation_id = ?) DESC, score DESC, m.seq LIMIT ?",
            (match, user_id, conversation_id, limit),
        ).fetchall()
    finally:
        conn.row_factory = None
    out = []
    for r in rows:
        d = _row_dict(r)
        score = max(0.0, float(d.pop("score")))
        d["relativity"] = score / (1.0 + score)
        out.append(d)
    return out


@contextmanager
def _reader(db_path: Path) -> Iterator[sqlite3.Connection]:
    if not db_path.is_file():
        raise InputError(
            f"no local store at {db_path}; start `memos-etl serve --db {db_path}` "
            "and load into it first"
        )
    conn = _connect(db_path, "NORMAL", threaded=False)
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
        return search_rows(conn, user_id, query, limit, conversation_id)
