"""Search over the titles and messages of one owner's conversations: ranked hits with a plain-text snippet.

What the user types is never FTS5 syntax: it is split on whitespace into terms, each term is quoted (its
quotes doubled) and the terms are ANDed, so ``"``, ``*``, ``NEAR(``, ``OR``, ``-`` are text like any other.

The trigram tokenizer matches terms of 3 characters or more (case-insensitively, Unicode letters too) in
``messages_search``; a shorter term (a Chinese word is often 2 characters: 中文) is one trigram of the spaced
text in ``messages_short`` (storage.py's migration 5): ``c`` is ``␁c␁``, ``ab`` is ``a␁b``. A query with
both kinds is the long terms' index hits that are also short-term hits. Titles (an owner has few) match short
terms with ``LIKE`` (ASCII-only case folding).

Ranking: title hits first (a conversation named after what is looked for is the likeliest target), then
message hits; each group by bm25 when a term reached the index, newest first otherwise. A term in more than
``COMMON`` messages (counted up to that many, which stops early) also ranks newest first: bm25 tells little
between thousands of messages that all hold the word, and ranking every one of them costs what finding the
newest few does not (a word in 15 000 of 20 000 messages: 37 ms for bm25, 0.4 ms newest first).

The snippet is cut from the text here, not by FTS5's ``snippet()``: the server never sends markup, only text
and the offsets of the matches in it (in UTF-16 code units, what JavaScript's ``String.slice`` takes).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InvalidField
from ..storage import SEPARATOR, Store

MAX_QUERY_CHARS = 500
MAX_TERMS = 16
TRIGRAM = 3  # the shortest term the trigram index can match
COMMON = 2000  # messages holding every term above which hits rank newest first, not by bm25
SNIPPET_CHARS = 200
SNIPPET_LEAD = 60  # characters of context kept before the first match
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # separators, like spaces: a NUL means nothing in a search


def terms(q: str | None) -> list[str]:
    """The distinct terms of the query ``q`` (case-insensitively distinct), or a 400 naming ``q``."""
    if q is None:
        raise InvalidField("q", "is required: the text to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise InvalidField("q", f"is longer than {MAX_QUERY_CHARS} characters")
    found: dict[str, str] = {}
    for word in _CONTROL.sub(" ", q).split():
        found.setdefault(word.casefold(), word)
    if not found:
        raise InvalidField("q", "must hold something to search for")
    if len(found) > MAX_TERMS:
        raise InvalidField("q", f"has more than {MAX_TERMS} words")
    return list(found.values())


def match_expression(words: list[str]) -> str:
    """An FTS5 query matching rows that hold every word as a substring: each word a quoted string."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def short_expression(words: list[str]) -> str:
    """The ``messages_short`` query for words of 1 or 2 characters: each one trigram of the spaced text."""
    return match_expression([SEPARATOR.join(w) if len(w) == 2 else SEPARATOR + w + SEPARATOR for w in words])


def like_pattern(word: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern for rows containing ``word``."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _utf16(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le", "surrogatepass")) // 2


def snippet(text: str, words: list[str]) -> tuple[str, list[list[int]]]:
    """About ``SNIPPET_CHARS`` of ``text`` around its first match, whitespace runs made one space, ``…`` where
    it was cut; and the ``[start, end)`` offsets (UTF-16) of every match in it."""
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)
    first = pattern.search(text)
    start = 0 if first is None else max(0, first.start() - SNIPPET_LEAD)
    end = start + SNIPPET_CHARS
    shown = ("…" if start > 0 else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")
    highlights = [[_utf16(shown, m.start()), _utf16(shown, m.end())] for m in pattern.finditer(shown)]
    return shown, highlights


def _likes(column: str, short: list[str]) -> str:
    return "".join(f" AND {column} LIKE :like{i} ESCAPE '\\'" for i in range(len(short)))


def _title_hits(store: Store, owner: int | None, long: list[str], short: list[str]) -> list[str]:
    """The ids of every conversation of ``owner`` whose title matches, best first (an owner's titles are few)."""
    names: dict[str, Any] = {"owner": owner, **{f"like{i}": like_pattern(w) for i, w in enumerate(short)}}
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
        (match, COMMON + 1),
    )
    return bool(rows[0]["hits"] > COMMON)


def _message_hits(
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


def search(store: Store, owner: int | None, words: list[str], limit: int, offset: int) -> tuple[list[Any], bool]:
    """One page of hits for ``words`` in ``owner``'s conversations, and whether more follow: title hits, then
    message hits (paged as one list)."""
    long = [word for word in words if len(word) >= TRIGRAM]
    short = [word for word in words if len(word) < TRIGRAM]
    titles = _title_hits(store, owner, long, short)
    wanted = limit + 1  # one more than the page: whether another page follows
    hits: list[tuple[str | None, int | None]] = [(cid, None) for cid in titles[offset : offset + wanted]]
    if len(hits) < wanted:
        found = _message_hits(store, owner, long, short, wanted - len(hits), max(0, offset - len(titles)))
        hits += [(None, message_id) for message_id in found]
    more, hits = len(hits) > limit, hits[:limit]
    # Ids first, text only for the page: a common short term may hit every message the owner has.
    message_ids = [message_id for _, message_id in hits if message_id is not None]
    messages = {
        row["id"]: row
        for row in store.execute(
            "SELECT id, conversation_id, role, content, created_at FROM messages "
            f"WHERE id IN ({', '.join('?' * len(message_ids))})",
            tuple(message_ids),
        )
    }
    conversation_ids = {cid for cid, _ in hits if cid} | {row["conversation_id"] for row in messages.values()}
    conversations = {
        row["id"]: row
        for row in store.execute(
            f"SELECT id, title, created_at FROM conversations WHERE id IN ({', '.join('?' * len(conversation_ids))})",
            tuple(conversation_ids),
        )
    }
    results = []
    for title_of, message_id in hits:
        message = messages.get(message_id)
        conversation = conversations.get(title_of or (message or {}).get("conversation_id"))
        if conversation is None or (message is None and message_id is not None):
            continue  # deleted between the queries
        text, highlights = snippet(message["content"] if message else conversation["title"], words)
        results.append(
            {
                "conversation_id": conversation["id"],
                "title": conversation["title"],
                "message_id": message_id,
                "role": message["role"] if message else None,
                "snippet": text,
                "highlights": highlights,
                "created_at": (message or conversation)["created_at"],
            }
        )
    return results, more
