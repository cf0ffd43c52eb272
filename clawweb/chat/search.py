"""Search over the titles and messages of one owner's conversations: ranked hits with a plain-text snippet.

What the user types is never FTS5 syntax: it is split on whitespace into terms, each term is quoted (its
quotes doubled) and the terms are ANDed, so ``"``, ``*``, ``NEAR(``, ``OR``, ``-`` are text like any other.

The trigram tokenizer matches terms of 3 characters or more (case-insensitively, Unicode letters too) in
``messages_search``; a shorter term (a Chinese word is often 2 characters: 中文) is one trigram of the spaced
text in ``messages_short`` (storage.py's migration 5): ``c`` is ``␁c␁``, ``ab`` is ``a␁b``. A query with
both kinds is the long terms' index hits that are also short-term hits. Titles (an owner has few) match short
terms with ``LIKE`` (ASCII-only case folding). On PostgreSQL (search_postgres.py) every term is an escaped
``ILIKE`` pattern that pg_trgm's GIN indexes serve from 3 characters on: the same hits, by the same rules of order.

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
from collections.abc import Collection
from typing import Any

from ..errors import InvalidField
from ..storage import Store
from . import search_postgres, search_sqlite

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


def _rows(store: Store, sql: str, ids: Collection[Any]) -> list[dict[str, Any]]:
    """``sql`` with ``IN ({})`` over ``ids`` (none: no query; an empty ``IN ()`` is SQLite's alone)."""
    return store.execute(sql.format(", ".join("?" * len(ids))), tuple(ids)) if ids else []


def search(store: Store, owner: int | None, words: list[str], limit: int, offset: int) -> tuple[list[Any], bool]:
    """One page of hits for ``words`` in ``owner``'s conversations, and whether more follow: title hits, then
    message hits (paged as one list)."""
    long = [word for word in words if len(word) >= TRIGRAM]
    short = [word for word in words if len(word) < TRIGRAM]
    index = search_postgres if store.engine == "postgresql" else search_sqlite
    titles = index.title_hits(store, owner, long, short)
    wanted = limit + 1  # one more than the page: whether another page follows
    hits: list[tuple[str | None, int | None]] = [(cid, None) for cid in titles[offset : offset + wanted]]
    if len(hits) < wanted:
        found = index.message_hits(store, owner, long, short, wanted - len(hits), max(0, offset - len(titles)))
        hits += [(None, message_id) for message_id in found]
    more, hits = len(hits) > limit, hits[:limit]
    # Ids first, text only for the page: a common short term may hit every message the owner has.
    message_ids = [message_id for _, message_id in hits if message_id is not None]
    messages = {
        row["id"]: row
        for row in _rows(
            store,
            "SELECT id, conversation_id, role, content, created_at FROM messages WHERE id IN ({})",
            message_ids,
        )
    }
    conversation_ids = {cid for cid, _ in hits if cid} | {row["conversation_id"] for row in messages.values()}
    conversations = {
        row["id"]: row
        for row in _rows(store, "SELECT id, title, created_at FROM conversations WHERE id IN ({})", conversation_ids)
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
