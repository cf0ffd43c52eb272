"""Conversations and messages in SQLite (``CLAWWEB_DB``), created and migrated at start-up.

Every query runs on one dedicated OS thread (a gevent ``ThreadPool`` of size 1): sqlite3 is blocking C code
that gevent cannot patch, and a slow fsync or checkpoint on the event loop would stall every open stream.
One thread also means one connection and no locking of our own; WAL keeps readers and the writer apart.

The disk failing (full, I/O errors, read-only) is a fault, not a bug: ``StorageUnavailable`` (a 503, see
errors.py) instead of a 500. The file being deleted or replaced under a running gateway is noticed before
every write (its device and inode against the opened file's): writes are refused from then on, since they
would go into a file that no longer has a name and is lost at the next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from gevent.threadpool import ThreadPool

from .config import ConfigError, data_path_problem
from .offload import captured

T = TypeVar("T")
log = logging.getLogger(__name__)

# SQLite's primary result codes that mean the disk or the file failed, not the query (those stay bugs: 500).
FAULTS = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit an entry once released.
MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_updated ON conversations (updated_at DESC);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL DEFAULT '',
        thinking TEXT NOT NULL DEFAULT '',
        model TEXT,
        status TEXT NOT NULL DEFAULT 'done',   -- done | streaming | stopped | error
        error TEXT,
        ttft_ms REAL,
        tokens INTEGER,
        tokens_per_s REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, id);
    """,
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        prefix TEXT NOT NULL,         -- the key's first characters, to tell keys apart in lists
        digest TEXT NOT NULL UNIQUE,  -- SHA-256 of the key: the key itself is shown once and never stored
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    -- NULL: made in open mode (no accounts); such conversations are only visible in open mode.
    ALTER TABLE conversations ADD COLUMN user_id INTEGER REFERENCES users (id) ON DELETE CASCADE;
    CREATE INDEX conversations_user ON conversations (user_id, updated_at DESC);
    """,
    """
    -- A login: the cookie holds a random token, this table only its SHA-256 digest (like API keys). Ending a
    -- session deletes its row, so a copied cookie stops working at once, and nothing brings it back.
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        user_agent TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    """,
    # Quotas (quotas.py): what each owner stores, kept up to date by triggers on every write, so checking a quota
    # is one primary-key lookup however much is stored, and no code path can forget to count. Owner 0 is open
    # mode (user ids start at 1). Bytes are UTF-8: titles and system prompts, messages' content and thinking.
    """
    CREATE TABLE quota_usage (
        owner INTEGER PRIMARY KEY,
        conversations INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO quota_usage (owner, conversations, bytes)
        SELECT ifnull(user_id, 0), count(*), sum(length(CAST(title AS BLOB)) + length(CAST(system_prompt AS BLOB))
            + ifnull((SELECT sum(length(CAST(content AS BLOB)) + length(CAST(thinking AS BLOB))) FROM messages
                      WHERE conversation_id = conversations.id), 0))
        FROM conversations GROUP BY ifnull(user_id, 0);
    CREATE TRIGGER quota_conversation_added AFTER INSERT ON conversations BEGIN
        INSERT OR IGNORE INTO quota_usage (owner) VALUES (ifnull(NEW.user_id, 0));
        UPDATE quota_usage SET conversations = conversations + 1,
            bytes = bytes + length(CAST(NEW.title AS BLOB)) + length(CAST(NEW.system_prompt AS BLOB))
            WHERE owner = ifnull(NEW.user_id, 0);
    END;
    CREATE TRIGGER quota_conversation_changed AFTER UPDATE OF title, system_prompt ON conversations BEGIN
        UPDATE quota_usage SET bytes = bytes
            + length(CAST(NEW.title AS BLOB)) + length(CAST(NEW.system_prompt AS BLOB))
            - length(CAST(OLD.title AS BLOB)) - length(CAST(OLD.system_prompt AS BLOB))
            WHERE owner = ifnull(NEW.user_id, 0);
    END;
    -- The messages first, while their conversation still says whose they are (ON DELETE CASCADE would delete
    -- them after it, when the message trigger below can no longer find the owner).
    CREATE TRIGGER quota_conversation_deleting BEFORE DELETE ON conversations BEGIN
        DELETE FROM messages WHERE conversation_id = OLD.id;
    END;
    CREATE TRIGGER quota_conversation_deleted AFTER DELETE ON conversations BEGIN
        UPDATE quota_usage SET conversations = conversations - 1,
            bytes = bytes - length(CAST(OLD.title AS BLOB)) - length(CAST(OLD.system_prompt AS BLOB))
            WHERE owner = ifnull(OLD.user_id, 0);
    END;
    CREATE TRIGGER quota_message_added AFTER INSERT ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes + length(CAST(NEW.content AS BLOB)) + length(CAST(NEW.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = NEW.conversation_id);
    END;
    CREATE TRIGGER quota_message_changed AFTER UPDATE OF content, thinking ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes
            + length(CAST(NEW.content AS BLOB)) + length(CAST(NEW.thinking AS BLOB))
            - length(CAST(OLD.content AS BLOB)) - length(CAST(OLD.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = NEW.conversation_id);
    END;
    CREATE TRIGGER quota_message_deleted AFTER DELETE ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes - length(CAST(OLD.content AS BLOB)) - length(CAST(OLD.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = OLD.conversation_id);
    END;
    -- Answers started per owner and day (the server's local date): a counter, not a count of stored answers,
    -- so deleting conversations or regenerating does not give answers back.
    CREATE TABLE quota_answers (
        owner INTEGER NOT NULL,
        day TEXT NOT NULL,  -- YYYY-MM-DD
        answers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (owner, day)
    );
    """,
    # Conversations as trees (chat/tree.py), search (chat/search.py), imports (chat/transfer.py), share links
    # (chat/shares.py). Databases from before were linear: each message's parent is the one before it.
    """
    ALTER TABLE messages ADD COLUMN parent_id INTEGER REFERENCES messages (id);  -- NULL: the first message
    UPDATE messages SET parent_id = (SELECT max(p.id) FROM messages AS p
                                     WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id);
    CREATE INDEX messages_parent ON messages (conversation_id, parent_id);  -- children, and a conversation's roots
    ALTER TABLE messages ADD COLUMN done_reason TEXT;  -- Ollama's: stop | length (a length-cut answer can continue)
    -- When a continued answer began streaming again (NULL: at created_at). An answer is taken for one a dead process
    -- left streaming only once it streams for longer than the lease without being listed: a continued one is old.
    ALTER TABLE messages ADD COLUMN streaming_since REAL;
    ALTER TABLE conversations ADD COLUMN current_id INTEGER;  -- the leaf of the branch shown
    UPDATE conversations SET current_id = (SELECT max(id) FROM messages WHERE conversation_id = conversations.id);
    ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN source TEXT;  -- an imported one's origin (chatgpt:<id>): imports once
    CREATE UNIQUE INDEX conversations_source ON conversations (ifnull(user_id, 0), source) WHERE source IS NOT NULL;
    DROP INDEX conversations_user;
    CREATE INDEX conversations_user ON conversations (user_id, pinned DESC, updated_at DESC, id);  -- the list's order

    -- Search over what is written, not what is being written: an answer is indexed once it stops streaming (a
    -- checkpoint every second would re-index every running answer). Trigram: Chinese and code identifiers match
    -- inside words. External content (the text is stored once, in messages); the triggers only ever remove
    -- what they added, which FTS5 requires of an external-content index.
    CREATE VIRTUAL TABLE messages_search USING fts5 (content, content = 'messages', content_rowid = 'id',
                                                     tokenize = 'trigram');
    INSERT INTO messages_search (rowid, content) SELECT id, content FROM messages WHERE status != 'streaming';
    -- Terms of 1 or 2 characters (Chinese words are often 2: 模型), which trigrams cannot match: a second trigram
    -- index over the text with U+0001 before every character and at the end (clawweb_spaced, storage.spaced),
    -- where "模" is the trigram "␁模␁" and "模型" is "模␁型". Contentless (it keeps no copy of the text) and
    -- detail=none (only which messages hold a trigram, no positions: a short term is always one trigram).
    -- A contentless index's 'delete' must be given exactly the values indexed, hence spaced(OLD.content).
    -- clawweb_spaced is registered on clawweb's own connection (Store._open): any other connection (the sqlite3
    -- shell) reads everything, and a .dump loads (triggers come last), but a write to messages, or deleting a
    -- conversation, fails there ("no such function: clawweb_spaced").
    CREATE VIRTUAL TABLE messages_short USING fts5 (content, content = '', detail = 'none', tokenize = 'trigram');
    INSERT INTO messages_short (rowid, content)
        SELECT id, clawweb_spaced(content) FROM messages WHERE status != 'streaming';
    CREATE TRIGGER messages_search_added AFTER INSERT ON messages WHEN NEW.status != 'streaming' BEGIN
        INSERT INTO messages_search (rowid, content) VALUES (NEW.id, NEW.content);
        INSERT INTO messages_short (rowid, content) VALUES (NEW.id, clawweb_spaced(NEW.content));
    END;
    CREATE TRIGGER messages_search_changed AFTER UPDATE OF content, status ON messages BEGIN
        INSERT INTO messages_search (messages_search, rowid, content)
            SELECT 'delete', OLD.id, OLD.content WHERE OLD.status != 'streaming';
        INSERT INTO messages_short (messages_short, rowid, content)
            SELECT 'delete', OLD.id, clawweb_spaced(OLD.content) WHERE OLD.status != 'streaming';
        INSERT INTO messages_search (rowid, content) SELECT NEW.id, NEW.content WHERE NEW.status != 'streaming';
        INSERT INTO messages_short (rowid, content)
            SELECT NEW.id, clawweb_spaced(NEW.content) WHERE NEW.status != 'streaming';
    END;
    CREATE TRIGGER messages_search_deleted AFTER DELETE ON messages WHEN OLD.status != 'streaming' BEGIN
        INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', OLD.id, OLD.content);
        INSERT INTO messages_short (messages_short, rowid, content)
            VALUES ('delete', OLD.id, clawweb_spaced(OLD.content));
    END;
    -- Titles are few and short: a plain index keyed by the conversation's id (its rowid is not stable).
    CREATE VIRTUAL TABLE titles_search USING fts5 (conversation_id UNINDEXED, title, tokenize = 'trigram');
    INSERT INTO titles_search (conversation_id, title) SELECT id, title FROM conversations;
    CREATE TRIGGER titles_search_added AFTER INSERT ON conversations BEGIN
        INSERT INTO titles_search (conversation_id, title) VALUES (NEW.id, NEW.title);
    END;
    CREATE TRIGGER titles_search_changed AFTER UPDATE OF title ON conversations BEGIN
        UPDATE titles_search SET title = NEW.title WHERE conversation_id = NEW.id;
    END;
    CREATE TRIGGER titles_search_deleted AFTER DELETE ON conversations BEGIN
        DELETE FROM titles_search WHERE conversation_id = OLD.id;
    END;

    -- A share link: the token is shown once, only its SHA-256 digest is kept; the branch as it was when shared.
    CREATE TABLE shares (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL UNIQUE,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        snapshot TEXT NOT NULL,  -- JSON: title, model, messages of the branch
        created_at REAL NOT NULL,
        expires_at REAL  -- NULL: until revoked
    );
    CREATE INDEX shares_conversation ON shares (conversation_id);
    """,
    # The figures of an answer's wait (chat/generations.py): in the queue, for a model load, and its thinking.
    """
    ALTER TABLE messages ADD COLUMN queue_ms REAL;
    ALTER TABLE messages ADD COLUMN load_ms REAL;
    ALTER TABLE messages ADD COLUMN thinking_ms REAL;
    """,
    # Keys that may send load requests (a model loaded or unloaded for everyone): `clawweb keys create --admin`.
    """
    ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    """,
    # The admission lane of a key's requests (state/lanes.py): api, or batch for `clawweb keys create --lane batch`.
    """
    ALTER TABLE api_keys ADD COLUMN lane TEXT NOT NULL DEFAULT 'api';
    """,
]

CONVERSATION_FIELDS = ("title", "model", "system_prompt")
# One page of an owner's conversations: pinned ones first, then the newest (the index conversations_user's order).
CONVERSATION_PAGE = (
    "SELECT * FROM conversations WHERE user_id IS ? ORDER BY pinned DESC, updated_at DESC, id LIMIT ? OFFSET ?"
)
INTERRUPTED = "interrupted: the gateway process running this answer stopped"
SEPARATOR = "\x01"  # in the short-term index: chat text does not hold it, and a search term never does


def spaced(text: str | None) -> str | None:
    """``text`` as the short-term index ``messages_short`` holds it: ``SEPARATOR`` before every character and at
    the end ("ab" is "␁a␁b␁"). Never change it on a database in use: the index's deletes must see what was
    indexed. Text that holds ``SEPARATOR`` itself is still searched right: its characters stay on the odd places,
    so ``␁c␁`` and ``a␁b`` (queries never hold one) only ever find ``c`` and ``ab``."""
    return None if text is None else SEPARATOR + SEPARATOR.join(text) + SEPARATOR


def _conversation_row(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation as the API shows it: SQLite has no booleans, JSON does."""
    row["pinned"] = bool(row["pinned"])
    return row


def _append(
    db: sqlite3.Connection,
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


def _set_system_prompt(db: sqlite3.Connection, conversation_id: str, system_prompt: str) -> None:
    """The conversation's system prompt, in the caller's transaction (the quota triggers count its bytes)."""
    db.execute("UPDATE conversations SET system_prompt = ? WHERE id = ?", (system_prompt, conversation_id))


class StorageUnavailable(Exception):
    """The disk or the database file failed (full, an I/O error, removed): the request gets a 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"storage unavailable: {reason}")
        self.reason = reason


def private_file(path: str) -> str:
    """``path``, created empty with mode 0600 if missing, whatever the umask (else ``tighten``-ed).

    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode, so a private database
    means private companions: the database file must not be left to sqlite3 to create (0644 minus the umask).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten(path)
        return path
    try:
        os.fchmod(fd, 0o600)  # a umask such as 0277 would have taken the owner's write bit
    finally:
        os.close(fd)
    return path


def tighten(path: str) -> None:
    """An existing file that every local user may read (a database made before ``private_file``, under umask
    022) loses the others' bits; the group's are the operator's choice."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o007:
            os.chmod(path, mode & ~0o007)
            log.warning("%s was readable by every local user (mode %04o); now %04o", path, mode, mode & ~0o007)
    except FileNotFoundError:
        pass
    except PermissionError:  # not ours: say so, but a read-only command must still work
        log.warning("%s is readable by every local user; chmod o-rwx it", path)


@contextmanager
def _migration_lock(path: str) -> Iterator[None]:
    """One migrator at a time: several workers start together on a new database (executescript commits any
    open transaction, so SQLite's own locking cannot hold the read of user_version and the migration together)."""
    if path == ":memory:":
        yield
        return
    with open(private_file(f"{path}.migrate-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Store:
    def __init__(self, path: str, mark_interrupted: bool = True) -> None:
        """``mark_interrupted``: answers left ``streaming`` by a dead process are marked as errors at start (their
        text so far, checkpointed while they streamed, is kept). Only where this process is the only one: another
        worker's (or host's) answers may be streaming right now."""
        self._pool = ThreadPool(1)
        self._db: sqlite3.Connection | None = None
        self._path = path
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._gone: str | None = None  # set once the file was removed or replaced: why writes are refused
        self._call(self._open, path, mark_interrupted)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the storage thread. Its exception is raised here, in the caller: one raised in the
        thread would also be printed by gevent as a traceback, and a full disk is a fault, not a bug."""
        failure, result = self._pool.apply(captured, (fn, args))
        if failure is None:
            return cast(T, result)
        if isinstance(failure, sqlite3.Error) and getattr(failure, "sqlite_errorcode", 0) & 0xFF in FAULTS:
            raise StorageUnavailable(f"{failure} ({self._path})") from failure
        raise failure

    def _open(self, path: str, mark_interrupted: bool) -> None:
        problem = data_path_problem("CLAWWEB_DB", path)
        if problem:
            raise ConfigError(problem)
        if path != ":memory:":
            # A new data directory is the service's alone (an existing one, maybe /tmp, is left as it is).
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            private_file(path)
            for companion in (f"{path}-wal", f"{path}-shm"):  # left by a process from before this check
                tighten(companion)
        db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit transactions where needed
        db.row_factory = sqlite3.Row
        db.create_function("clawweb_spaced", 1, spaced, deterministic=True)  # migration 5's short-term index
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL keeps the file consistent
        db.execute("PRAGMA foreign_keys = ON")
        with _migration_lock(path):
            # Under the lock too: switching a new file to WAL needs it exclusively, and SQLite answers "database
            # is locked" at once, without waiting out busy_timeout, when another process opens it meanwhile.
            db.execute("PRAGMA journal_mode = WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        if mark_interrupted:  # they cannot resume: say so instead of "streaming"
            db.execute("UPDATE messages SET status = 'error', error = ? WHERE status = 'streaming'", (INTERRUPTED,))
        if path != ":memory:":
            found = os.stat(path)
            self._identity = (found.st_dev, found.st_ino)
        self._db = db

    def _check_file(self) -> None:
        """Refuse to write once the path no longer names the file opened (one stat: microseconds)."""
        if self._gone is None and self._identity is not None:
            try:
                found = os.stat(self._path)
                replaced = (found.st_dev, found.st_ino) != self._identity
            except FileNotFoundError:
                replaced = True
            if replaced:
                self._gone = (
                    f"the database file {self._path} was removed or replaced since clawweb opened it; restart "
                    "clawweb (nothing is written meanwhile: it would be lost with the old file)"
                )
        if self._gone is not None:
            raise StorageUnavailable(self._gone)

    def problem(self) -> str | None:
        """Why the database cannot take writes (for ``/readyz``), or None."""
        try:
            self._call(self._check_file)
        except StorageUnavailable as exc:
            return str(exc)
        return None

    def execute(self, sql: str, params: tuple[Any, ...] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """One statement on the storage thread, its rows as dicts (the chat modules' queries use this too)."""

        def run() -> list[dict[str, Any]]:
            assert self._db is not None
            if not sql.lstrip().startswith("SELECT"):  # a WITH may write: checked
                self._check_file()
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

        return self._call(run)

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` on the storage thread in one transaction: all of it is stored, or none."""

        def run() -> T:
            assert self._db is not None
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now: no deadlock upgrading a read later
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

        return self._call(run)

    def close(self) -> None:
        def run() -> None:
            if self._db is not None:
                self._db.close()

        self._call(run)
        self._pool.kill()

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
            "SELECT ifnull((SELECT conversations FROM quota_usage WHERE owner = ?), 0) AS conversations, "
            "ifnull((SELECT bytes FROM quota_usage WHERE owner = ?), 0) AS bytes, "
            "ifnull((SELECT answers FROM quota_answers WHERE owner = ? AND day = ?), 0) AS answers_today",
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

        def add(db: sqlite3.Connection) -> dict[str, Any]:
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

        def start(db: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any]] | Literal["busy", "gone"]:
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

        def reopen(db: sqlite3.Connection) -> dict[str, Any] | None:
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
            "AND ifnull(streaming_since, created_at) < ?",
            (INTERRUPTED, conversation_id, started_before),
        )

    def count_answer(self, owner: int | None, day: str, limit: int) -> bool:
        """Count one more answer for ``owner`` on ``day`` unless it has ``limit`` already (0: no limit); False
        when it has. One statement, so concurrent requests (other workers too) cannot both take the last one."""
        rows = self.execute(
            "INSERT INTO quota_answers (owner, day, answers) VALUES (?, ?, 1) ON CONFLICT (owner, day) "
            "DO UPDATE SET answers = answers + 1 WHERE ? = 0 OR answers < ? RETURNING answers",
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
        return self.execute(
            "SELECT api_keys.id, prefix, api_keys.name, users.name AS user_name, api_keys.created_at, "
            "last_used_at, revoked_at, admin, lane FROM api_keys JOIN users ON users.id = api_keys.user_id "
            "WHERE ? IS NULL OR api_keys.user_id = ? ORDER BY api_keys.id",
            (user_id, user_id),
        )

    def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        """Revoke a live key (only if it is ``user_id``'s, when given)."""
        rows = self.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL AND (? IS NULL OR user_id = ?) "
            "RETURNING id",
            (time.time(), key_id, user_id, user_id),
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
        rows = self.execute(
            "DELETE FROM sessions WHERE user_id = ? AND (? IS NULL OR id = ?) AND (? IS NULL OR digest = ?) "
            "AND (? IS NULL OR id != ?) RETURNING id",
            (user_id, session_id, session_id, digest, digest, keep, keep),
        )
        return len(rows)

    def end_expired_sessions(self, created_before: float) -> None:
        self.execute("DELETE FROM sessions WHERE created_at <= ?", (created_before,))
