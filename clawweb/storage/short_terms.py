"""The text as SQLite's short-term index ``messages_short`` holds it (migration 5; chat/search_sqlite.py)."""

from __future__ import annotations

SEPARATOR = "\x01"  # in the short-term index: chat text does not hold it, and a search term never does


def spaced(text: str | None) -> str | None:
    """``text`` as the short-term index ``messages_short`` holds it: ``SEPARATOR`` before every character and at
    the end ("ab" is "␁a␁b␁"). Never change it on a database in use: the index's deletes must see what was
    indexed. Text that holds ``SEPARATOR`` itself is still searched right: its characters stay on the odd places,
    so ``␁c␁`` and ``a␁b`` (queries never hold one) only ever find ``c`` and ``ab``."""
    return None if text is None else SEPARATOR + SEPARATOR.join(text) + SEPARATOR
