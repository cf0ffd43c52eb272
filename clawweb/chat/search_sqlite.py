"""Search hits on SQLite: the FTS5 trigram indexes of migration 5 (``messages_search``, ``messages_short``,
``titles_search``); what is searched and how it ranks is said in search.py."""

from __future__ import annotations

from typing import Any

from ..storage import SEPARATOR, Store
from . import search  # its COMMON read at each call (a test lowers it)


def match_expression(words: list[str]) -> str:
    """An FTS5 query matching rows that hold every word as a substring: each word a quoted string."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def short_expression(words: list[str]) -> str:
    """The ``messages_short`` query for words of 1 or 2 characters: each one trigram of the spaced text."""
    return match_expression([SEPARATOR.join(w) if len(w) == 2 else SEPARATOR + w + SEPARATOR for w in words])


def _likes(column: str, short: list[str]) -> str:
    return "".join(f" AND {column} LIKE :like{i} ESCAPE '\\'" for i in range(len(short)))


def title_hits(store: Store, owner: int | None, long: list[str], short: list[str]) -> list[str]:
    """The ids of every conversation of ``owner`` whose title matches, best first (an owner's titles are few)."""
    names: dict[str, Any] = {"owner": owner, **{f"like{i}": search.like_pattern(w) for i, w in enumerate(short)}}
    if long:
        sql = (
            "SELECT c.id FROM titles_search JOIN conversations AS c ON c.id = titles_search.conversation_id "
            f"WHERE titles_search MATCH :match AND c.user_id IS :owner{_likes('c.title', short)} "
            "ORDER BY bm25(titles_search), c.updated_at DESC"
        )
        names["match"] = match_expression(long)
    else:
        sql = (
            f"SELECT id FROM conversations AS c WHERE user_id IS :owner{_likes('c.title', short)} "
            "ORDER BY updated_at DESC"
        )
    return [row["id"] for row in store.execute(sql, names)]


def _common(store: Store, match: str) -> bool:
    """Whether more than ``COMMON`` messages (of every owner: a bound is enough to choose) match ``match``;
    counting stops at ``COMMON + 1``, so a common word costs no more to count than a rare one."""
    rows = store.execute(
        "SELECT count(*) AS hits FROM (SELECT rowid FROM messages_search WHERE messages_search MATCH ? LIMIT ?)",
        (match, search.COMMON + 1),
    )
    return bool(rows[0]["hits"] > search.COMMON)


def message_hits(
    store: Store, owner: int | None, long: list[str], short: list[str], limit: int, offset: int
) -> list[int]:
    """The ids of ``owner``'s messages that match, best first (bm25; newest first without a long term)."""
    names: dict[str, Any] = {"owner": owner, "limit": limit, "offset": offset, "short": short_expression(short)}
    if long:
        shorts = " AND m.id IN (SELECT rowid FROM messages_short WHERE messages_short MATCH :short)" if short else ""
        # Newest first is the index's own order (rowid descending): read until the page is full, no sort.
        names["match"] = match_expression(long)
        order = "messages_search.rowid DESC" if _common(store, names["match"]) else "bm25(messages_search), m.id DESC"
        sql = (
            "SELECT m.id FROM messages_search JOIN messages AS m ON m.id = messages_search.rowid "
            "JOIN conversations AS c ON c.id = m.conversation_id "
            f"WHERE messages_search MATCH :match AND c.user_id IS :owner{shorts} "
            f"ORDER BY {order} LIMIT :limit OFFSET :offset"
        )
    else:
        # In the index's own order (rowid descending is the newest first): no sort, however common the term.
        sql = (
            "SELECT m.id FROM messages_short JOIN messages AS m ON m.id = messages_short.rowid "
            "JOIN conversations AS c ON c.id = m.conversation_id "
            "WHERE messages_short MATCH :short AND c.user_id IS :owner "
            "ORDER BY messages_short.rowid DESC LIMIT :limit OFFSET :offset"
        )
    return [row["id"] for row in store.execute(sql, names)]
