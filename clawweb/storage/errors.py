"""What either engine raises for a fault of the database itself, not of the query (a 503, not a 500)."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database failed (a full disk, an I/O error, the file removed; PostgreSQL down or restarting, its
    connection pool exhausted): the request gets a 503 and the answer's text is stored again later."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"storage unavailable: {reason}")
        self.reason = reason


class Duplicate(Exception):
    """A unique key is taken: a concurrent request stored the same thing first (an import of the same file)."""
