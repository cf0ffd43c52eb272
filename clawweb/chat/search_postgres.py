"""Search hits on PostgreSQL: ``ILIKE`` over the tables themselves, which pg_trgm's GIN indexes serve for terms of
3 characters or more (``messages_content_trgm``, ``conversations_title_trgm``); what is searched and how it
ranks is said in search.py, and the suite holds both engines to it.

Each term is an escaped ``ILIKE`` pattern (search.like_pattern: ``%``, ``_`` and ``\\`` are text), so matching
is a substring match folded by ``lower()`` in the database's locale (Unicode letters in any UTF-8 locale; the
``C`` locale folds ASCII only). A short term reaches no trigram: it filters the rows the long terms found, or,
alone, the owner's messages read newest first.

Ranking stands in for FTS5's bm25 with its own term-frequency half: each long term's occurrences in the text,
saturated (k1) and normalised by the text's length against the hits' mean length (b), summed over the terms.
pg_trgm's ``word_similarity`` was the other choice, and a worse one here: it scores how well a term matches the
best stretch of text, so every message holding the term whole scores 1, however often and in however long a
text; it tells apart near-misses, which a substring search never returns. bm25's third part, a term's rarity
over the whole table, is left out: every hit holds every term, and knowing each term's document count would
cost a count per term. Ranking reads every hit, so it runs only while the terms are in at most ``COMMON``
messages (counted up to ``COMMON + 1``); beyond, hits come newest first, as on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..storage import Store
from ..storage.engine import Connection
from . import search  # its COMMON read at each call (a test lowers it)

T = TypeVar("T")
K1, B = 1.2, 0.75  # bm25's usual constants (FTS5's too)
# What the partial index messages_content_trgm holds: the same words in the query let the planner use it.
INDEXED = "m.status != 'streaming'"


def _patterns(column: str, words: list[str], prefix: str) -> tuple[str, dict[str, Any]]:
    """``column`` holding every word (ANDed ``ILIKE``s), and their parameters named ``prefix0``, ``prefix1``..."""
    sql = "".join(f" AND {column} ILIKE :{prefix}{i} ESCAPE '\\'" for i in range(len(words)))
    return sql, {f"{prefix}{i}": search.like_pattern(word) for i, word in enumerate(words)}


def _score(long: list[str]) -> str:
    """The bm25-like relevance (higher is better) of a hit for the long terms (parameters ``:w0``, ``:w1``...),
    from its columns ``folded`` (the text's ``lower()``), ``size`` (its length) and ``mean`` (the hits' mean)."""
    parts = []
    for i in range(len(long)):
        # Occurrences: how much shorter the text is without the term, in the term's lengths.
        tf = f"((length(folded) - length(replace(folded, lower(:w{i}), ''))) * 1.0 / length(lower(:w{i})))"
        parts.append(f"{tf} * {K1 + 1} / ({tf} + {K1} * ({1 - B} + {B} * size / mean))")
    return " + ".join(parts)


def _ranked(column: str) -> str:
    """The columns ``_score`` reads, of ``column``."""
    return f"lower({column}) AS folded, length({column}) AS size, avg(length({column})) OVER () AS mean"


def _planned_for(store: Store, queries: Callable[[Connection], T]) -> T:
    """``queries(db)`` in a read-only snapshot whose statements are planned for the terms they are given.

    psycopg prepares a statement run five times, and PostgreSQL then plans it once for any parameters: for
    ``content ILIKE $1`` that plan cannot know whether the pattern yields trigrams, and reads the whole table (a
    term in 81 of 20 000 messages: 55 to 240 ms instead of 7 to 9). Here every call is planned for its patterns.
    Repeatable read, read only: the count, and the hits it chooses the order of, see the same rows."""

    def run(db: Connection) -> T:
        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        db.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return queries(db)

    return store.transaction(run)


def title_hits(store: Store, owner: int | None, long: list[str], short: list[str]) -> list[str]:
    """The ids of every conversation of ``owner`` whose title matches, best first (an owner's titles are few)."""
    where, names = _patterns("c.title", long + short, "p")
    names.update({f"w{i}": word for i, word in enumerate(long)})
    order = "updated_at DESC"
    if long:
        order = f"{_score(long)} DESC, {order}"
    sql = (
        f"SELECT id FROM (SELECT c.id, c.updated_at, {_ranked('c.title')} "
        f"FROM conversations AS c WHERE c.user_id IS :owner{where}) AS hits ORDER BY {order}"
    )
    names["owner"] = owner
    return _planned_for(store, lambda db: [row["id"] for row in db.execute(sql, names)])


def count_query(long: list[str]) -> tuple[str, dict[str, Any]]:
    """How many messages (of every owner: a bound is enough to choose) hold the long terms, up to ``COMMON + 1``:
    the count stops there, so a common word costs no more to count than a rare one."""
    where, names = _patterns("m.content", long, "p")
    sql = f"SELECT count(*) AS hits FROM (SELECT 1 FROM messages AS m WHERE {INDEXED}{where} LIMIT :bound) AS found"
    return sql, {**names, "bound": search.COMMON + 1}


def _common(db: Connection, long: list[str]) -> bool:
    """Whether more than ``COMMON`` messages hold the long terms (then ranking them all would cost)."""
    return bool(db.execute(*count_query(long)).fetchone()["hits"] > search.COMMON)


def message_query(
    owner: int | None, long: list[str], short: list[str], ranked: bool, limit: int, offset: int
) -> tuple[str, dict[str, Any]]:
    """The query for one page of ``owner``'s matching message ids and its parameters: ``ranked`` by relevance,
    else newest first (the id's order: the primary key read backwards, or the hits sorted)."""
    where, names = _patterns("m.content", long + short, "p")
    names.update({f"w{i}": word for i, word in enumerate(long)})
    names.update({"owner": owner, "limit": limit, "offset": offset})
    hits = (
        "FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id "
        f"WHERE {INDEXED} AND c.user_id IS :owner{where}"
    )
    if not ranked:
        return f"SELECT m.id {hits} ORDER BY m.id DESC LIMIT :limit OFFSET :offset", names
    sql = (
        f"SELECT id FROM (SELECT m.id, {_ranked('m.content')} {hits}) AS ranked "
        f"ORDER BY {_score(long)} DESC, id DESC LIMIT :limit OFFSET :offset"
    )
    return sql, names


def message_hits(
    store: Store, owner: int | None, long: list[str], short: list[str], limit: int, offset: int
) -> list[int]:
    """The ids of ``owner``'s messages that match, best first (ranked; newest first without a long term or
    when the long terms are common)."""

    def hits(db: Connection) -> list[int]:
        ranked = bool(long) and not _common(db, long)
        return [row["id"] for row in db.execute(*message_query(owner, long, short, ranked, limit, offset))]

    return _planned_for(store, hits)
