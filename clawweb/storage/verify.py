"""Whether two databases hold the same installation (``clawweb db copy`` checks its copy; ``clawweb db verify``
checks again later): every table's row count and a digest of its rows, and a checksum of every conversation.

A conversation's checksum is the SHA-256 of its row and its messages' rows in id order, as canonical JSON
(sorted keys, no spaces): both engines give the same Python values for the same stored row (integers, floats,
text, None), so equal rows make equal text. The other tables' digests add up each row's SHA-256 (modulo 2^256),
so they do not depend on the order rows come in (PostgreSQL sorts text by its collation, SQLite by bytes).
quota_usage is compared without its zero rows: an owner whose conversations were all deleted keeps one in the
source, and the target's triggers never make it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .copy import TABLES, Rows, Table, count, pages
from .engine import Database

CONVERSATIONS = Table("conversations", ("id",))
QUOTA_USAGE = Table("quota_usage", ("owner",))
NONZERO_USAGE = "conversations != 0 OR bytes != 0"
SHOWN = 10  # conversations named in a report of mismatches; the rest are counted


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def conversation_checksum(db: Database, conversation_id: str) -> str | None:
    """SHA-256 of the conversation's row and its messages' rows in id order; None if it is not there."""
    found = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
    if not found:
        return None
    messages = db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
    return hashlib.sha256(canonical([dict(found[0]), [dict(row) for row in messages]])).hexdigest()


def _rows(db: Database) -> Rows:
    return lambda sql, params: db.execute(sql, params)


def table_figures(db: Database, table: Table, where: str = "") -> tuple[int, int]:
    """(rows, the sum of their SHA-256 modulo 2^256): read a page at a time."""
    count = total = 0
    for page in pages(_rows(db), table, where):
        count += len(page)
        for row in page:
            total += int.from_bytes(hashlib.sha256(canonical(dict(row))).digest(), "big")
    return count, total % 2**256


@dataclass
class Verification:
    rows: dict[str, int] = field(default_factory=dict)  # per table, in the source
    conversations: int = 0  # conversations whose checksums are equal on both sides
    mismatches: list[str] = field(default_factory=list)  # what differs, said for a person

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _conversation_ids(db: Database) -> Iterator[str]:
    for page in pages(_rows(db), CONVERSATIONS, columns="id"):
        yield from (row["id"] for row in page)


def verify(source: Database, target: Database) -> Verification:
    checked = Verification()
    for table, where in [*((table, "") for table in TABLES if table.name != "messages"), (QUOTA_USAGE, NONZERO_USAGE)]:
        rows, digest = table_figures(source, table, where)
        their_rows, their_digest = table_figures(target, table, where)
        checked.rows[table.name] = rows
        if rows != their_rows:
            checked.mismatches.append(f"{table.name}: {rows} row(s) in the source, {their_rows} in the target")
        elif digest != their_digest:
            checked.mismatches.append(f"{table.name}: as many rows on both sides ({rows}), not the same rows")
    # Messages are counted here and compared through their conversations' checksums (read once, not twice).
    rows, their_rows = count(_rows(source), "messages"), count(_rows(target), "messages")
    checked.rows["messages"] = rows
    if rows != their_rows:
        checked.mismatches.append(f"messages: {rows} row(s) in the source, {their_rows} in the target")
    differing = 0
    for conversation_id in _conversation_ids(source):
        if conversation_checksum(source, conversation_id) == conversation_checksum(target, conversation_id):
            checked.conversations += 1
            continue
        differing += 1
        if differing <= SHOWN:
            checked.mismatches.append(f"conversation {conversation_id}: its row or its messages differ")
    if differing > SHOWN:
        checked.mismatches.append(f"... and {differing - SHOWN} more conversation(s) that differ")
    return checked
