"""The store: what clawweb keeps (conversations and their message trees, users, API keys, sessions, quotas),
in SQLite by default or PostgreSQL (``CLAWWEB_DATABASE_URL``), through one interface (engine.py)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from ..config import Settings
from .engine import Connection, Database, Engine, Params, open_database

T = TypeVar("T")

CONVERSATION_FIELDS = ("title", "model", "system_prompt")
# One page of an owner's conversations: pinned ones first, then the newest (the index conversations_user's order).
CONVERSATION_PAGE = (
    "SELECT * FROM conversations WHERE user_id IS ? ORDER BY pinned DESC, updated_at DESC, id LIMIT ? OFFSET ?"
)
INTERRUPTED = "interrupted: the gateway process running this answer stopped"


def _conversation_row(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation as the API shows it: SQLite has no booleans, JSON does."""
    row["pinned"] = bool(row["pinned"])
    return row


def _append(
    db: Connection,
    conversation_id: str,
    parent_id: int | None,
    role: str,
    content: str,
    model: str | None,
    status: str,
) -> dict[str, Any]:
    """Insert a message under ``parent_id`` and make it the conversation's current leaf (in the caller's
    transaction); the conversation moves to the top of its owner's list."""
    now = time.time()
    row = db.execute(
        "INSERT INTO messages (conversation_id, parent_id, role, content, model, status, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (conversation_id, parent_id, role, content, model, status, now),
    ).fetchone()
    db.execute(
        "UPDATE conversations SET current_id = ?, updated_at = ? WHERE id = ?", (row["id"], now, conversation_id)
    )
    return dict(row)


# An answer's figures: the wait in the queue, a model load, the first token (from admission), the thinking, the
# tokens (thinking ones included) and their rate.
FIGURES = ("queue_ms", "load_ms", "ttft_ms", "thinking_ms", "tokens", "tokens_per_s")


def _only(conditions: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """`` WHERE`` and the conditions whose value is given (not None), ANDed, with their values: an optional
    filter written out, not as ``? IS NULL OR ...`` (PostgreSQL cannot type a parameter that is only NULL)."""
    given = {condition: value for condition, value in conditions.items() if value is not None}
    return (" WHERE " + " AND ".join(given) if given else ""), tuple(given.values())


def _set_system_prompt(db: Connection, conversation_id: str, system_prompt: str) -> None:
    """The conversation's system prompt, in the caller's transaction (the quota triggers count its bytes)."""
    db.execute("UPDATE conversations SET system_prompt = ? WHERE id = ?", (system_prompt, conversation_id))


class Store:
    """Conversations, users, keys, sessions, quotas and shares, on either engine (engine.py). The chat modules'
    own queries (tree, search, shares, transfer) go through ``execute`` and ``transaction`` too."""

    def __init__(
        self, location: str, mark_interrupted: bool = True, pool_size: int = 8, pool_timeout_s: float = 5.0
    ) -> None:
        """``location``: a SQLite file (or ``sqlite:///path``) or a ``postgresql://`` URL. ``mark_interrupted``:
        answers left ``streaming`` by a dead process are marked as errors at start (their text so far,
        checkpointed while they streamed, is kept). Only where this process is the only one: another worker's
        (or host's) answers may be streaming right now."""
        self.db: Database = open_database(location, pool_size, pool_timeout_s)
        if mark_interrupted:  # they cannot resume: say so instead of "streaming"
            self.execute("UPDATE messages SET status = 'error', error = ? WHERE status = 'streaming'", (INTERRUPTED,))

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def execute(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """One statement, its rows as dicts."""
        return self.db.execute(sql, params)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction: all of it is stored, or none (see ``lock``)."""
        return self.db.transaction(work)

    def lock(self, db: Connection, conversation_id: str) -> None:
        """In a transaction that reads a conversation's messages to decide what to write (is an answer
        streaming? is the parent still there?): the first statement, so that such transactions on one
        conversation run one after the other, in any process (engine.py's ``LOCK_CONVERSATION``)."""
        if self.db.LOCK_CONVERSATION:
            db.execute(self.db.LOCK_CONVERSATION, (conversation_id,))

    def problem(self) -> str | None:
        """Why the database cannot take writes (for ``/readyz``), or None."""
        return self.db.problem()

    def backup(self, destination: str) -> None:
        self.db.backup(destination)

    def close(self) -> None:
        self.db.close()

    # --- conversations ---------------------------------------------------------------------------------------

    # ``owner`` is the user id, or None in open mode. A conversation is only ever found by its owner, so a
    # guessed id of somebody else's conversation is "not found", never "forbidden".

    def create_conversation(
        self, owner: int | None, model: str, title: str = "", system_prompt: str = ""
    ) -> dict[str, Any]:
        now = time.time()
        conversation_id = secrets.token_hex(8)  # unguessable: ids appear in URLs
        self.execute(
            "INSERT INTO conversations (id, user_id, title, model, system_prompt, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, owner, title, model, system_prompt, now, now),
        )
        return self.conversation(conversation_id, owner) or {}

    def conversation(self, conversation_id: str, owner: int | None) -> dict[str, Any] | None:
        rows = self.execute("SELECT * FROM conversations WHERE id = ? AND user_id IS ?", (conversation_id, owner))
        return _conversation_row(rows[0]) if rows else None

    def conversations(self, owner: int | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Pinned ones first, then the newest; read in the index's order (no sort however many there are)."""
        return [_conversation_row(row) for row in self.execute(CONVERSATION_PAGE, (owner, limit, offset))]

    def update_conversation(self, conversation_id: str, **fields: str) -> dict[str, Any] | None:
        changes = {k: v for k, v in fields.items() if k in CONVERSATION_FIELDS}
        assignments = ", ".join(f"{name} = ?" for name in changes)
        rows = self.execute(
            f"UPDATE conversations SET {assignments}{', ' if changes else ''}updated_at = ? WHERE id = ? RETURNING *",
            (*changes.values(), time.time(), conversation_id),
        )
        return _conversation_row(rows[0]) if rows else None

    def pin(self, conversation_id: str, pinned: bool) -> None:
        """Pinning is not a change to the conversation: ``updated_at`` (its place among the others) stays."""
        self.execute("UPDATE conversations SET pinned = ? WHERE id = ?", (int(pinned), conversation_id))

    def delete_conversation(self, conversation_id: str) -> None:
        self.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def usage(self, owner: int | None, day: str) -> dict[str, int]:
        """What ``owner`` stores (conversations, UTF-8 bytes) and the answers it started on ``day``: two
        primary-key lookups (the quota migration's triggers keep the figures)."""
        key = 0 if owner is None else owner
        rows = self.execute(
            "SELECT coalesce((SELECT conversations FROM quota_usage WHERE owner = ?), 0) AS conversations, "
            "coalesce((SELECT bytes FROM quota_usage WHERE owner = ?), 0) AS bytes, "
            "coalesce((SELECT answers FROM quota_answers WHERE owner = ? AND day = ?), 0) AS answers_today",
            (key, key, key, day),
        )
        return {name: int(value) for name, value in rows[0].items()}

    # --- messages --------------------------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str = "",
        model: str | None = None,
        status: str = "done",
        parent_id: int | None | Literal["leaf"] = "leaf",
    ) -> dict[str, Any]:
        """A message under ``parent_id`` (None: a first message; "leaf": after the branch shown), which becomes the
        conversation's current leaf. Answers start through ``start_answer``; this is for tools and tests."""

        def add(db: Connection) -> dict[str, Any]:
            self.lock(db, conversation_id)
            parent = parent_id
            if parent == "leaf":
                parent = db.execute("SELECT current_id FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
                parent = parent[0] if parent else None
            return _append(db, conversation_id, parent, role, content, model, status)

        return self.transaction(add)

    def start_answer(
        self,
        conversation_id: str,
        parent_id: int | None,
        model: str,
        question: str | None = None,
        system_prompt: str | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]] | Literal["busy", "gone"]:
        """A ``streaming`` answer under ``parent_id`` (after a new user message ``question`` there, if given), made
        the current leaf: (the user message or None, the answer). "busy" when an answer in the conversation is
        streaming already, "gone" when the parent is no longer in it (deleted meanwhile): then nothing is written.
        One transaction, so of requests racing (in any worker) exactly one starts an answer; ``system_prompt``
        (the conversation's new one, sent with the message) is saved in it too, or not at all."""

        def start(db: Connection) -> tuple[dict[str, Any] | None, dict[str, Any]] | Literal["busy", "gone"]:
            self.lock(db, conversation_id)
            busy = "SELECT 1 FROM messages WHERE conversation_id = ? AND status = 'streaming' LIMIT 1"
            if db.execute(busy, (conversation_id,)).fetchone():
                return "busy"
            there = "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?"
            if parent_id is not None and not db.execute(there, (parent_id, conversation_id)).fetchone():
                return "gone"
            if system_prompt is not None:
                _set_system_prompt(db, conversation_id, system_prompt)
            user = None
            if question is not None:
                user = _append(db, conversation_id, parent_id, "user", question, None, "done")
            parent = parent_id if user is None else user["id"]
            return user, _append(db, conversation_id, parent, "assistant", "", model, "streaming")

        return self.transaction(start)

    def finish_message(self, message_id: int, **fields: Any) -> dict[str, Any]:
        """Store an answer's final state: its text, how it ended and its figures (``FIGURES``)."""
        names = ("content", "thinking", "status", "error", "done_reason", *FIGURES)
        values = {k: v for k, v in fields.items() if k in names}
        assignments = ", ".join(f"{name} = ?" for name in values)
        rows = self.execute(
            f"UPDATE messages SET {assignments} WHERE id = ? RETURNING *", (*values.values(), message_id)
        )
        return rows[0] if rows else {}

    def reopen_message(self, message_id: int, system_prompt: str | None = None) -> dict[str, Any] | None:
        """Mark an ended answer ``streaming`` again (it is being continued); its row as it was, or None when it
        an answer of its conversation is streaming (another request started one first). ``finish_message`` undoes it.
        ``system_prompt``: the conversation's new one, saved in the same transaction."""

        def reopen(db: Connection) -> dict[str, Any] | None:
            found = db.execute("SELECT conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone()
            if found is None:
                return None
            self.lock(db, found[0])
            # Not while any answer of its conversation streams (one at a time, whichever worker started it).
            row = db.execute(
                "SELECT * FROM messages WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages AS other "
                "WHERE other.conversation_id = messages.conversation_id AND other.status = 'streaming')",
                (message_id,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE messages SET status = 'streaming', error = NULL, done_reason = NULL, streaming_since = ? "
                    "WHERE id = ?",
                    (time.time(), message_id),
                )
                if system_prompt is not None:
                    _set_system_prompt(db, row["conversation_id"], system_prompt)
            return None if row is None else dict(row)

        return self.transaction(reopen)

    def message(self, message_id: int) -> dict[str, Any] | None:
        rows = self.execute("SELECT * FROM messages WHERE id = ?", (message_id,))
        return rows[0] if rows else None

    def checkpoint(self, partials: Mapping[int, tuple[str, str]]) -> None:
        """The text so far (content, thinking) of answers still streaming, by message id, in one transaction, so
        that a crash loses at most the tokens since the last checkpoint. A finished answer is left as it is."""

        rows = [(content, thinking, message_id) for message_id, (content, thinking) in partials.items()]
        self.transaction(
            lambda db: db.executemany(
                "UPDATE messages SET content = ?, thinking = ? WHERE id = ? AND status = 'streaming'", rows
            )
        )

    def interrupt(self, message_id: int, content: str, thinking: str) -> None:
        """An answer whose process died, with the text recovered for it. Only over what no one finished: a row
        still streaming, or marked interrupted with its checkpointed text (``mark_interrupted`` came first)."""
        self.execute(
            "UPDATE messages SET status = 'error', error = ?, content = ?, thinking = ? WHERE id = ? "
            "AND (status = 'streaming' OR (status = 'error' AND error = ?))",
            (INTERRUPTED, content, thinking, message_id, INTERRUPTED),
        )

    def mark_interrupted(self, conversation_id: str, started_before: float) -> None:
        """Answers still ``streaming`` that started (or were continued) before ``started_before`` and that nothing
        runs any more. Not by ``created_at`` alone: a continued answer is as old as its first part, and the request
        continuing it has reopened it before its generation is listed as running."""
        self.execute(
            "UPDATE messages SET status = 'error', error = ? WHERE conversation_id = ? AND status = 'streaming' "
            "AND coalesce(streaming_since, created_at) < ?",
            (INTERRUPTED, conversation_id, started_before),
        )

    def count_answer(self, owner: int | None, day: str, limit: int) -> bool:
        """Count one more answer for ``owner`` on ``day`` unless it has ``limit`` already (0: no limit); False
        when it has. One statement, so concurrent requests (other workers too) cannot both take the last one."""
        rows = self.execute(
            "INSERT INTO quota_answers (owner, day, answers) VALUES (?, ?, 1) ON CONFLICT (owner, day) DO UPDATE "
            "SET answers = quota_answers.answers + 1 WHERE ? = 0 OR quota_answers.answers < ? RETURNING answers",
            (0 if owner is None else owner, day, limit, limit),
        )
        return bool(rows)

    def uncount_answer(self, owner: int | None, day: str) -> None:
        """Give back an answer counted by ``count_answer`` that was then not admitted."""
        self.execute(
            "UPDATE quota_answers SET answers = answers - 1 WHERE owner = ? AND day = ? AND answers > 0",
            (0 if owner is None else owner, day),
        )

    # --- users and API keys (see accounts.py for the hashing) ---------------------------------------------------

    def add_user(self, name: str, password_hash: str) -> dict[str, Any]:
        return self.execute(
            "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?) RETURNING *",
            (name, password_hash, time.time()),
        )[0]

    def user(self, *, name: str | None = None, user_id: int | None = None) -> dict[str, Any] | None:
        column, value = ("name", name) if name is not None else ("id", user_id)
        rows = self.execute(f"SELECT * FROM users WHERE {column} = ?", (value,))
        return rows[0] if rows else None

    def users(self) -> list[dict[str, Any]]:
        return self.execute("SELECT * FROM users ORDER BY name")

    def update_user(self, user_id: int, **fields: Any) -> None:
        """``password_hash`` and/or ``disabled``."""
        values = {k: v for k, v in fields.items() if k in ("password_hash", "disabled")}
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.execute(f"UPDATE users SET {assignments} WHERE id = ?", (*values.values(), user_id))

    def add_key(
        self, user_id: int, name: str, prefix: str, digest: str, admin: bool = False, lane: str = "api"
    ) -> dict[str, Any]:
        return self.execute(
            "INSERT INTO api_keys (user_id, name, prefix, digest, created_at, admin, lane) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (user_id, name, prefix, digest, time.time(), int(admin), lane),
        )[0]

    def key(self, digest: str) -> dict[str, Any] | None:
        """The live key with this digest, with its user's name and state."""
        rows = self.execute(
            "SELECT api_keys.*, users.name AS user_name, users.disabled AS user_disabled FROM api_keys "
            "JOIN users ON users.id = api_keys.user_id WHERE digest = ? AND revoked_at IS NULL",
            (digest,),
        )
        return rows[0] if rows else None

    def keys(self, user_id: int | None = None) -> list[dict[str, Any]]:
        """Every key (or one user's), newest last; never the key itself."""
        where, params = _only({"api_keys.user_id = ?": user_id})
        return self.execute(
            "SELECT api_keys.id, prefix, api_keys.name, users.name AS user_name, api_keys.created_at, "
            f"last_used_at, revoked_at, admin, lane FROM api_keys JOIN users ON users.id = api_keys.user_id{where} "
            "ORDER BY api_keys.id",
            params,
        )

    def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        """Revoke a live key (only if it is ``user_id``'s, when given)."""
        where, params = _only({"id = ?": key_id, "user_id = ?": user_id})
        rows = self.execute(
            f"UPDATE api_keys SET revoked_at = ?{where} AND revoked_at IS NULL RETURNING id", (time.time(), *params)
        )
        return bool(rows)

    def touch_key(self, key_id: int) -> None:
        self.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (time.time(), key_id))

    # --- sessions (see sessions.py) --------------------------------------------------------------------------

    def add_session(self, digest: str, user_id: int, user_agent: str, address: str) -> dict[str, Any]:
        now = time.time()
        return self.execute(
            "INSERT INTO sessions (digest, user_id, created_at, last_seen_at, user_agent, address) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            (digest, user_id, now, now, user_agent, address),
        )[0]

    def session(self, digest: str, created_after: float) -> dict[str, Any] | None:
        """The live session with this digest, with its user's name and state."""
        rows = self.execute(
            "SELECT sessions.*, users.name AS user_name, users.disabled AS user_disabled FROM sessions "
            "JOIN users ON users.id = sessions.user_id WHERE digest = ? AND sessions.created_at > ?",
            (digest, created_after),
        )
        return rows[0] if rows else None

    def sessions(self, user_id: int) -> list[dict[str, Any]]:
        return self.execute("SELECT * FROM sessions WHERE user_id = ? ORDER BY last_seen_at DESC", (user_id,))

    def touch_session(self, session_id: int, address: str) -> None:
        self.execute(
            "UPDATE sessions SET last_seen_at = ?, address = ? WHERE id = ?", (time.time(), address, session_id)
        )

    def end_sessions(
        self, user_id: int, *, session_id: int | None = None, keep: int | None = None, digest: str | None = None
    ) -> int:
        """End one of the user's sessions (by id or digest), or all of them but ``keep``; returns how many."""
        where, params = _only({"user_id = ?": user_id, "id = ?": session_id, "digest = ?": digest, "id != ?": keep})
        rows = self.execute(f"DELETE FROM sessions{where} RETURNING id", params)
        return len(rows)

    def end_expired_sessions(self, created_before: float) -> None:
        self.execute("DELETE FROM sessions WHERE created_at <= ?", (created_before,))


def open_store(settings: Settings, mark_interrupted: bool = True) -> Store:
    """The store ``settings`` name (``CLAWWEB_DATABASE_URL``, else ``CLAWWEB_DB``), its pool sized from them."""
    return Store(settings.database, mark_interrupted, settings.db_pool_size, settings.db_pool_timeout_s)
