"""The one interface both engines implement (``sqlite.SqliteDatabase``, ``postgres.PostgresDatabase``): the
store's domain code (store.py) and the chat modules speak it, in SQLite's dialect, and never know which runs.

Queries are written once, in the subset both engines share: ``?`` and ``:name`` parameters, ``coalesce``,
``ON CONFLICT``, ``RETURNING``, ``WITH RECURSIVE``, ``x IS ?`` for owners (None is open mode). PostgreSQL's
implementation translates the few spellings that differ (postgres_sql.py); what cannot be shared (the schema,
search indexes) lives per engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
Engine = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What a transaction's work is given: rows come back as mappings that an index reads too (``row[0]``)."""

    def execute(self, sql: str, params: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Params], /) -> Any: ...


class Database(Protocol):
    engine: Engine
    # The first statement of a transaction that changes one conversation's messages (``?``: its id): such
    # transactions on one conversation run one after the other, on different ones side by side. Empty: the
    # engine's transactions are one at a time already.
    LOCK_CONVERSATION: str

    def execute(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """One statement in its own transaction; its rows as dicts."""
        ...

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction: all of it is stored, or none. A transaction that reads a
        conversation's messages to decide what to write locks the conversation first (``LOCK_CONVERSATION``)."""
        ...

    def problem(self) -> str | None:
        """Why the database cannot take writes now (``/readyz``, doctor), or None."""
        ...

    def backup(self, destination: str) -> None:
        """A consistent copy of everything, taken while the gateway runs (``clawweb backup``)."""
        ...

    def close(self) -> None: ...


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def sqlite_path(location: str) -> str:
    """The file of ``sqlite:///abs/path`` (as ``file://`` URLs: the third slash begins the path),
    ``sqlite://rel/path``, or a plain path (``CLAWWEB_DB``)."""
    return location.removeprefix("sqlite://")


def open_database(location: str, pool_size: int = 8, pool_timeout_s: float = 5.0) -> Database:
    """The engine ``location`` names (a PostgreSQL URL, else a SQLite file), opened and migrated."""
    if is_postgres(location):
        from .postgres import PostgresDatabase

        return PostgresDatabase(location, pool_size, pool_timeout_s)
    from .sqlite import SqliteDatabase

    return SqliteDatabase(sqlite_path(location))
