"""Chat history: conversations and their messages in SQLite (``app.core.paths.history_db()``).

* Each message (role, content, the reasoning kept apart, its timings/stats) is committed as soon as it is
  complete, in WAL mode with ``synchronous=FULL``: a crash or kill mid-answer loses nothing that was complete.
* A database file that is not SQLite, or fails SQLite's ``quick_check``, is never overwritten: it is renamed to
  ``history.sqlite3.corrupt-<timestamp>`` (with its ``-wal``/``-shm`` files), a fresh one is started, and
  :attr:`History.notice` says where the old one went, for the caller to show (or, with ``recover=False``,
  CorruptHistoryError is raised and nothing is touched).
* Conversations can be listed, renamed, deleted, and cut after message N (edit-and-resend).

One :class:`History` may be shared by threads (a lock serialises access to its one connection).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat_types import Message, ReplyStats, SamplingSettings
from .errors import CorruptHistoryError, HistoryError
from .paths import history_db

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    model_path TEXT,
    settings_json TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '',
    stats_json TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE (conversation_id, position)
);
"""
TITLE_CHARS = 60


@dataclass(frozen=True)
class StoredMessage:
    """A message as saved.  ``stats``: the reply's timings (assistant messages), finish reason, etc."""

    id: int
    position: int
    role: str
    content: str
    reasoning: str
    stats: dict[str, Any]
    created: float

    def to_message(self) -> Message:
        return Message(self.role, self.content, self.reasoning)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Conversation:
    """A conversation's header (``messages`` filled only by :meth:`History.get`)."""

    id: int
    title: str
    model_path: str | None
    settings: dict[str, Any]
    created: float
    updated: float
    n_messages: int
    messages: tuple[StoredMessage, ...] = ()

    def chat_messages(self) -> list[Message]:
        """The messages ready to send back to :meth:`Engine.chat`."""
        return [m.to_message() for m in self.messages]


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return head == b"SQLite format 3\x00" or head == b""


class History:
    """The history database.  ``path`` defaults to ``app.core.paths.history_db()``."""

    def __init__(self, path: str | Path | None = None, *, recover: bool = True) -> None:
        self.path = Path(path) if path is not None else history_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set_aside: Path | None = None
        self.notice: str | None = None
        self._lock = threading.RLock()
        try:
            self._conn = self._open()
        except (sqlite3.DatabaseError, CorruptHistoryError) as e:
            if not recover:
                raise CorruptHistoryError(
                    f"the chat history {self.path} is damaged ({e}); move it away (or open with recovery) to "
                    f"start a new one") from None
            self.set_aside = self._set_aside()
            self.notice = (f"The chat history was damaged ({e}) and has been set aside as {self.set_aside.name}; "
                           f"a new, empty history was started.")
            log.info("%s", self.notice)    # the notice is for the caller to show (once): not a second warning
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and not _is_sqlite(self.path):
            raise CorruptHistoryError("not an SQLite database")
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise CorruptHistoryError(f"quick_check: {ok}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HistoryError(f"the chat history {self.path} was written by a newer DistillDesk (schema "
                                   f"{version}); update DistillDesk to open it")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        self.path.rename(dest)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(dest.with_name(dest.name + suffix))
        return dest

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (or none at all)."""
        with self._lock:
            if self._conn is None:
                raise HistoryError("the history was closed")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                raise _db_error(self.path, e) from None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                raise HistoryError("the history was closed")
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise _db_error(self.path, e) from None

    # ---- conversations ----------------------------------------------------------------------------------------
    def create(self, *, title: str = "", model_path: str | Path | None = None,
               settings: SamplingSettings | Mapping[str, Any] | None = None) -> int:
        """A new, empty conversation; returns its id."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute("INSERT INTO conversations (title, model_path, settings_json, created, updated) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (title, str(model_path) if model_path else None, _settings_json(settings), now, now))
            return int(cur.lastrowid)

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first (without their messages)."""
        rows = self._query(
            "SELECT c.id, c.title, c.model_path, c.settings_json, c.created, c.updated, COUNT(m.id) "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            "GROUP BY c.id ORDER BY c.updated DESC, c.id DESC")
        return [Conversation(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], r[5], r[6]) for r in rows]

    def get(self, conversation_id: int) -> Conversation:
        """One conversation with its messages in order.  KeyError if there is no such conversation."""
        rows = self._query("SELECT id, title, model_path, settings_json, created, updated FROM conversations "
                           "WHERE id = ?", (conversation_id,))
        if not rows:
            raise KeyError(f"no conversation {conversation_id}")
        msgs = tuple(self.messages(conversation_id))
        r = rows[0]
        return Conversation(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], r[5], len(msgs), msgs)

    def rename(self, conversation_id: int, title: str) -> None:
        with self._tx() as c:
            self._touch(c, conversation_id, title=title)

    def set_model(self, conversation_id: int, model_path: str | Path | None,
                  settings: SamplingSettings | Mapping[str, Any] | None = None) -> None:
        """Record the model (and sampling settings) the conversation continues with."""
        with self._tx() as c:
            self._touch(c, conversation_id)
            c.execute("UPDATE conversations SET model_path = ?, settings_json = ? WHERE id = ?",
                      (str(model_path) if model_path else None, _settings_json(settings), conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # ---- messages ---------------------------------------------------------------------------------------------
    def add_message(self, conversation_id: int, message: Message | Mapping[str, Any], *,
                    stats: ReplyStats | Mapping[str, Any] | None = None) -> int:
        """Append a complete message (committed before this returns); returns its position.  The first user
        message titles an untitled conversation."""
        m = message if isinstance(message, Message) else Message(message["role"], str(message.get("content", "")),
                                                                 str(message.get("reasoning") or ""))
        stats_d = stats.to_dict() if isinstance(stats, ReplyStats) else dict(stats or {})
        with self._tx() as c:
            pos = c.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?",
                            (conversation_id,)).fetchone()[0]
            title = c.execute("SELECT title FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            self._touch(c, conversation_id)
            c.execute("INSERT INTO messages (conversation_id, position, role, content, reasoning, stats_json, "
                      "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (conversation_id, pos, m.role, m.content, m.reasoning, json.dumps(stats_d), time.time()))
            if m.role == "user" and title is not None and not title[0]:
                c.execute("UPDATE conversations SET title = ? WHERE id = ?", (_title(m.content), conversation_id))
            return int(pos)

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._query("SELECT id, position, role, content, reasoning, stats_json, created FROM messages "
                           "WHERE conversation_id = ? ORDER BY position", (conversation_id,))
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}"), r[6]) for r in rows]

    def truncate(self, conversation_id: int, keep: int) -> int:
        """Keep the first ``keep`` messages and delete the rest (edit-and-resend: keep the messages before the
        edited one, then add the edited message).  Returns how many were deleted."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        with self._tx() as c:
            self._touch(c, conversation_id)
            cur = c.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                            (conversation_id, keep))
            return int(cur.rowcount)

    def _touch(self, c: sqlite3.Connection, conversation_id: int, *, title: str | None = None) -> None:
        sql, args = "UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id)
        if title is not None:
            sql, args = "UPDATE conversations SET updated = ?, title = ? WHERE id = ?", (time.time(), title,
                                                                                          conversation_id)
        if c.execute(sql, args).rowcount == 0:
            raise KeyError(f"no conversation {conversation_id}")

    # ---- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settings_json(settings: SamplingSettings | Mapping[str, Any] | None) -> str:
    if isinstance(settings, SamplingSettings):
        return json.dumps(settings.to_dict())
    return json.dumps(dict(settings or {}))


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _db_error(path: Path, e: sqlite3.DatabaseError) -> HistoryError:
    msg = str(e)
    if "malformed" in msg or "not a database" in msg:
        return CorruptHistoryError(f"the chat history {path} is damaged ({msg}); restart DistillDesk to set it "
                                   f"aside and start a new one")
    return HistoryError(f"the chat history {path} could not be written ({msg}): check the disk has free space "
                        f"and the folder is writable")
