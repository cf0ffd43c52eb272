"""SQLite, the embedded engine (``CLAWWEB_DB``): one file, created and migrated at start-up; ``make run`` needs
nothing else.

Every query runs on one dedicated OS thread (a gevent ``ThreadPool`` of size 1): sqlite3 is blocking C code
that gevent cannot patch, and a slow fsync or checkpoint on the event loop would stall every open stream.
One thread also means one connection and no locking of our own; WAL keeps readers and the writer apart.

The disk failing (full, I/O errors, read-only) is a fault, not a bug: ``StorageUnavailable`` (a 503, see
errors.py) instead of a 500. The file being deleted or replaced under a running gateway is noticed before
every write (its device and inode against the opened file's): writes are refused from then on, since they
would go into a file that no longer has a name and is lost at the next start.

One file is for one host: SQLite's locking is unreliable on network filesystems, so several gateway hosts
share PostgreSQL instead (postgres.py), never a database file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from gevent.threadpool import ThreadPool

from ..config import ConfigError, data_path_problem
from ..offload import captured
from .engine import Connection, Engine, Params
from .errors import Duplicate, StorageUnavailable
from .migrations import SQLITE
from .short_terms import spaced

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
# A unique key taken (a primary key, a UNIQUE index): a concurrent request stored the same thing first.
DUPLICATES = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})


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


def copy_database(source: sqlite3.Connection, destination: str) -> None:
    """SQLite's online backup of ``source`` into the new file ``destination`` (0600, never over an existing
    file): one read transaction over every page, so the copy is consistent however others write meanwhile (WAL:
    they are never blocked). One self-contained file: the copied header says WAL, which would give the copy -wal
    and -shm companions wherever it is opened (even to check it)."""
    fd = os.open(destination, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
    finally:
        target.close()


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


class SqliteDatabase:
    engine: Engine = "sqlite"
    # A transaction holds the one write lock from its start (BEGIN IMMEDIATE): nothing more to lock.
    LOCK_CONVERSATION = ""

    def __init__(self, path: str) -> None:
        self._pool = ThreadPool(1)
        self._db: sqlite3.Connection | None = None
        self._path = path
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._gone: str | None = None  # set once the file was removed or replaced: why writes are refused
        self._call(self._open, path)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the storage thread. Its exception is raised here, in the caller: one raised in the
        thread would also be printed by gevent as a traceback, and a full disk is a fault, not a bug."""
        failure, result = self._pool.apply(captured, (fn, args))
        if failure is None:
            return cast(T, result)
        code = getattr(failure, "sqlite_errorcode", 0) if isinstance(failure, sqlite3.Error) else 0
        if code & 0xFF in FAULTS:
            raise StorageUnavailable(f"{failure} ({self._path})") from failure
        if code in DUPLICATES:
            raise Duplicate(str(failure)) from failure
        raise failure

    def _open(self, path: str) -> None:
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
            for number, script in enumerate(SQLITE[version:], start=version + 1):
                db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
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

    def execute(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """One statement on the storage thread, its rows as dicts."""

        def run() -> list[dict[str, Any]]:
            assert self._db is not None
            if not sql.lstrip().startswith("SELECT"):  # a WITH may write: checked
                self._check_file()
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

        return self._call(run)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` on the storage thread in one transaction: all of it is stored, or none. SQLite
        has one writer at a time, so transactions are serializable as they are."""

        def run() -> T:
            assert self._db is not None
            self._check_file()
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now: no deadlock upgrading a read later
            try:
                result = work(cast(Connection, self._db))
                self._db.execute("COMMIT")
                return result
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

        return self._call(run)

    def backup(self, destination: str) -> None:
        """SQLite's online backup into a new file ``destination`` (``copy_database``)."""

        def run() -> None:
            assert self._db is not None
            copy_database(self._db, destination)

        self._call(run)

    def close(self) -> None:
        def run() -> None:
            if self._db is not None:
                self._db.close()

        self._call(run)
        self._pool.kill()
