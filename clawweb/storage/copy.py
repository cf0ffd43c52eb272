"""``clawweb db copy``: an installation's rows moved from one database to another (SQLite to PostgreSQL, or
back), their ids kept, and then verified (verify.py).

Both ends are opened by clawweb's own storage (engine.py), so both are migrated to the current schema first
and hold the same tables and columns. The source is read inside one transaction (a consistent snapshot: on
SQLite that transaction holds the write lock, so a gateway still running gets 503s for its writes meanwhile)
and the target is written inside one transaction: a copy that fails leaves the target as empty as it was.
Rows go over in batches of ``BATCH`` read in key order (keyset pages, never ``OFFSET``), so a database of any
size passes through a few hundred rows at a time. Each batch is one multi-row ``INSERT``: the target's
triggers fill its quota counts and SQLite's search index as rows go in; PostgreSQL's search (GIN) indexes are
built once the rows are in, and its identity sequences are then set past the copied ids.

Two SQLite files are refused: each engine's transaction runs its work on the thread that owns its
connection, and SQLite's two would have to nest (``clawweb backup`` copies a SQLite file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import Connection, Database, is_postgres


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]  # the primary key: the order rows are read and paged in


# Parents before children: a message's parent has a lower id than it (it existed first), so messages in id order
# never point at a message not yet copied. quota_usage is not copied: the target's triggers recompute it.
TABLES = (
    Table("users", ("id",)),
    Table("conversations", ("id",)),
    Table("messages", ("id",)),
    Table("api_keys", ("id",)),
    Table("sessions", ("id",)),
    Table("shares", ("id",)),
    Table("quota_answers", ("owner", "day")),
)
IDENTITIES = ("users", "messages", "api_keys", "sessions", "shares")  # PostgreSQL's generated ids
BATCH = 500  # rows per read and per INSERT: at most 500 x 19 parameters, under both engines' limits

Rows = Callable[[str, Sequence[Any]], list[Any]]  # one query's rows: a Database's or a Connection's


class CopyRefused(Exception):
    """The copy would not give the target exactly the source's rows: nothing was written."""


def of(connection: Connection) -> Rows:
    return lambda sql, params: connection.execute(sql, params).fetchall()


def pages(rows: Rows, table: Table, where: str = "", columns: str = "*") -> Iterator[list[Any]]:
    """The rows of ``table`` (those ``where`` holds for) in key order, ``BATCH`` at a time: each page starts after
    the last one's key, so every read is a short walk of the primary key's index however far in it is."""
    key = ", ".join(table.key)
    after: tuple[Any, ...] | None = None
    while True:
        conditions = [f"({where})"] if where else []
        if after is not None:
            conditions.append(f"({key}) > ({', '.join('?' * len(after))})")
        filtered = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        page = rows(f"SELECT {columns} FROM {table.name}{filtered} ORDER BY {key} LIMIT ?", (*(after or ()), BATCH))
        if not page:
            return
        yield page
        after = tuple(page[-1][name] for name in table.key)


def _insert(target: Connection, table: str, page: list[Any]) -> None:
    columns = list(page[0].keys())
    one = f"({', '.join('?' * len(columns))})"
    target.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(page))}",
        [row[name] for row in page for name in columns],
    )


def count(rows: Rows, table: str, where: str = "") -> int:
    return int(rows(f"SELECT count(*) AS n FROM {table}{' WHERE ' + where if where else ''}", ())[0]["n"])


def _refusal(target: Rows, streaming: int, force: bool) -> str | None:
    held = [table.name for table in TABLES if count(target, table.name)]
    if held:
        # Copied ids would collide with the rows there, and two installations mixed could not be verified.
        return (
            f"the target already holds rows ({', '.join(held)}): copy into a new, empty database "
            "(createdb, or a SQLite file that does not exist yet)"
        )
    if streaming and not force:
        return (
            f"{streaming} answer(s) are streaming in the source: stop every gateway on it first (what one writes from "
            "now on would be missing from the copy); if none runs (one died mid-answer), --force copies them as they "
            "are, and the gateway on the target marks them interrupted"
        )
    return None


@dataclass
class Copied:
    rows: dict[str, int]  # per table
    streaming: int  # answers copied while still streaming (only with force)


def _copy(source: Connection, target: Connection, force: bool, progress: Callable[[str, int], None]) -> Copied:
    copied = Copied({}, count(of(source), "messages", "status = 'streaming'"))
    refused = _refusal(of(target), copied.streaming, force)
    if refused:
        raise CopyRefused(refused)
    for table in TABLES:
        copied.rows[table.name] = 0
        for page in pages(of(source), table):
            _insert(target, table.name, page)
            copied.rows[table.name] += len(page)
        progress(table.name, copied.rows[table.name])
    return copied


def _without_trigram_indexes(target: Connection, work: Callable[[], Copied]) -> Copied:
    """``work()`` with PostgreSQL's GIN (search) indexes dropped, then built again from the rows in one pass, as
    their migration defined them (pg_indexes keeps the definition): kept up row by row, a trigram index costs the
    copy most of its time. All in the copy's transaction: a failure brings them back as they were."""
    tables = tuple(table.name for table in TABLES)
    found = target.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        f"AND tablename IN ({', '.join('?' * len(tables))}) AND indexdef LIKE '% USING gin %'",
        tables,
    ).fetchall()
    for index in found:
        target.execute(f'DROP INDEX "{index["indexname"]}"', ())
    copied = work()
    target.execute("SET LOCAL maintenance_work_mem = '256MB'", ())  # the build sorts in memory, not on disk
    target.execute("SET LOCAL statement_timeout = 0", ())  # the pool's 30 s is for requests; a build takes longer
    for index in found:
        target.execute(index["indexdef"], ())
    return copied


def _sequences_past_ids(target: Connection) -> None:
    """PostgreSQL's identity sequences after the copied ids: rows inserted with their ids leave a sequence where it
    was, and the next new row would collide with a copied one. (SQLite's AUTOINCREMENT follows by itself.)"""
    for table in IDENTITIES:
        target.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}",
            (),
        )


def locations_problem(source: str, target: str) -> str | None:
    """Why a copy between these two locations cannot be made, before either is opened (or created)."""
    if not is_postgres(source) and not is_postgres(target):
        return "both are SQLite files: clawweb backup copies one"
    if source.rstrip("/") == target.rstrip("/"):
        return "the source and the target are the same database"
    return None


def copy(
    source: Database, target: Database, force: bool = False, progress: Callable[[str, int], None] = lambda t, n: None
) -> Copied:
    """Every row of ``source`` into the empty ``target``, in one transaction on each; ``progress(table, rows)``
    after each table. ``CopyRefused`` (nothing written) when the target holds rows already, or the source has
    answers streaming and not ``force``."""
    assert not source.engine == target.engine == "sqlite", "two SQLite files: see locations_problem"

    def into(read: Connection) -> Copied:
        def write(written: Connection) -> Copied:
            if target.engine == "sqlite":  # its FTS5 triggers fill the index as rows go in
                return _copy(read, written, force, progress)
            copied = _without_trigram_indexes(written, lambda: _copy(read, written, force, progress))
            _sequences_past_ids(written)
            return copied

        return target.transaction(write)

    return source.transaction(into)
