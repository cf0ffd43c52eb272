"""PostgreSQL (``CLAWWEB_DATABASE_URL=postgresql://...``): the engine for several gateway hosts, which SQLite's
file cannot be shared between (its locking is unreliable on network filesystems).

psycopg 3 cooperates with gevent by itself (from 3.1.14: it waits on the socket through the patched
``select``), so a query in flight costs its greenlet only, never the event loop; no thread is needed. Each
worker keeps a pool of ``CLAWWEB_DB_POOL_SIZE`` connections; a request that finds none free within
``CLAWWEB_DB_POOL_TIMEOUT_S`` gets a 503, never a hang. psycopg prepares a statement on a connection once it
has run it five times (its ``prepare_threshold``): the store's queries are few and repeated, and
postgres_sql.py keeps their text stable, so the hot ones (checkpoints, key and session lookups) run prepared.

Statements run in autocommit, transactions at READ COMMITTED. What SQLite's one writer gives for free, that of
two requests starting an answer in one conversation exactly one does, comes from a row lock on the conversation
(``LOCK_CONVERSATION``, taken first by the store's transactions that change a conversation's tree): requests
on different conversations never wait for each other. SERIALIZABLE was tried first: with 100 answers starting
at once its predicate locks (index pages shared by many conversations) failed more than half of them after 8
retries (``make bench PART=engines``). A deadlock is retried. A lost connection (PostgreSQL restarted, the
network cut) is a fault, ``StorageUnavailable``, and the pool drops its dead connections at once.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import gevent
import psycopg
from psycopg import errors
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import redact_url
from . import pg_tools
from .engine import Connection, Cursor, Engine, Params
from .errors import Duplicate, StorageUnavailable
from .migrations import POSTGRES
from .postgres_sql import translate

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x636C6177  # pg_advisory_lock's key for clawweb's migrations ("claw")
RETRIES = 8  # a transaction run again after a deadlock (or a serialization failure), at most
CONNECT_TIMEOUT_S = 5
# The longest a statement may run (a lock another client holds, a runaway query): then it is cancelled and the
# request gets a 503 instead of waiting as long as the lock is held. Far above any query the store makes.
STATEMENT_TIMEOUT_MS = 30_000


class Row(dict[str, Any]):
    """A row read by name and by position (``row[0]``), as sqlite3.Row is."""

    __slots__ = ("positional",)
    positional: Sequence[Any]

    def __getitem__(self, key: str | int) -> Any:
        return self.positional[key] if isinstance(key, int) else dict.__getitem__(self, key)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = [column.name for column in cursor.description or ()]

    def make(values: Sequence[Any]) -> Row:
        row = Row(zip(names, values, strict=True))
        row.positional = values
        return row

    return make


class _Translating:
    """A transaction's connection that takes the store's dialect (postgres_sql.py)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return cast(Cursor, self._conn.execute(*translate(sql, params)))

    def executemany(self, sql: str, params: Iterable[Params]) -> None:
        with self._conn.cursor() as cursor:
            for one in params:  # each translated alone: an ``IS ?`` reads differently for a None
                cursor.execute(*translate(sql, one))


class PostgresDatabase:
    engine: Engine = "postgresql"
    LOCK_CONVERSATION = "SELECT 1 FROM conversations WHERE id = ? FOR UPDATE"

    def __init__(self, url: str, pool_size: int, pool_timeout_s: float) -> None:
        self.url = url
        self._where = redact_url(url)
        self._timeout_s = pool_timeout_s
        self._size = pool_size
        self._in_use = 0  # connections this worker's requests hold: all of them, or PostgreSQL unreachable?
        self._guard(self._migrate)
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout_s,
            kwargs={
                "autocommit": True,
                "row_factory": _rows,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
            name="clawweb",
            open=True,
        )

    def _migrate(self) -> None:
        """Every migration not yet run, under an advisory lock: of processes starting together on a new database,
        one migrates and the others wait for it, then find nothing left to do."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                version = int(found[0]) if found else 0
                for number, script in enumerate(POSTGRES[version:], start=version + 1):
                    with conn.transaction():
                        conn.execute(script.encode())  # bytes: several statements, no parameters
                        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
                    log.info("PostgreSQL schema migrated to version %d", number)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def _guard(self, fn: Callable[[], T]) -> T:
        """``fn()``, PostgreSQL's faults raised as ``StorageUnavailable`` (a 503) and a unique key taken as
        ``Duplicate``; bugs (a bad query) stay what they are."""
        try:
            return fn()
        except PoolTimeout as exc:
            if self._in_use < self._size:  # a connection was free to make, and the pool could not make it
                raise StorageUnavailable(
                    f"cannot connect to PostgreSQL at {self._where} (tried for {self._timeout_s:g} s)"
                ) from exc
            raise StorageUnavailable(
                f"no database connection free within {self._timeout_s:g} s (all {self._size} of this worker's in "
                "use: CLAWWEB_DB_POOL_SIZE)"
            ) from exc
        except errors.UniqueViolation as exc:
            raise Duplicate(str(exc)) from exc
        except (errors.SerializationFailure, errors.DeadlockDetected):  # ``transaction`` runs it again
            raise
        except (psycopg.OperationalError, errors.ReadOnlySqlTransaction) as exc:
            pool = getattr(self, "_pool", None)
            if pool is not None:
                gevent.spawn(pool.check)  # the other idle connections died too, most likely: replaced now
            raise StorageUnavailable(f"{str(exc).strip()} ({self._where})") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        with self._pool.connection() as conn:
            self._in_use += 1
            try:
                yield conn
            finally:
                self._in_use -= 1

    def execute(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with self._connection() as conn:
                cursor = conn.execute(*translate(sql, params))
                return cast(list[dict[str, Any]], cursor.fetchall()) if cursor.description else []

        return self._guard(run)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self._connection() as conn, conn.transaction():
                return work(_Translating(conn))

        for attempt in range(RETRIES):
            try:
                return self._guard(run)
            except (errors.SerializationFailure, errors.DeadlockDetected) as exc:
                if attempt == RETRIES - 1:
                    raise StorageUnavailable(f"a transaction kept conflicting with others ({RETRIES} tries)") from exc
                gevent.sleep(random.uniform(0, 0.005 * 2**attempt))  # the others finish meanwhile
        raise AssertionError("unreachable")

    def problem(self) -> str | None:
        try:
            rows = self.execute("SHOW transaction_read_only")
        except StorageUnavailable as exc:
            return str(exc)
        if rows and rows[0]["transaction_read_only"] == "on":
            return f"the database at {self._where} is read-only (a standby?)"
        return None

    def backup(self, destination: str) -> None:
        """``pg_dump --format=custom`` into a new file ``destination`` (0600): one snapshot of the whole database
        (a REPEATABLE READ transaction), consistent however the gateways write meanwhile, never blocking them."""
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over an older backup
        os.close(fd)
        pg_tools.run("pg_dump", self.url, ["--format=custom", f"--file={destination}"])  # 0600 kept: it exists

    def close(self) -> None:
        self._pool.close()
