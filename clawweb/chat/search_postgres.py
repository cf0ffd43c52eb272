"""Search hits on PostgreSQL: trigram indexes (pg_trgm) over the tables themselves; what is searched and how it
ranks is said in search.py, and the suite holds both engines to it."""

from __future__ import annotations

from ..storage import Store


def title_hits(store: Store, owner: int | None, long: list[str], short: list[str]) -> list[str]:
    raise NotImplementedError


def message_hits(
    store: Store, owner: int | None, long: list[str], short: list[str], limit: int, offset: int
) -> list[int]:
    raise NotImplementedError
