"""Owners for the conversations made in open mode (no owner): hidden once accounts are on, until adopted."""

from __future__ import annotations

from ..storage import Store
from ..storage.engine import Connection

# The bytes a conversation holds as quota_usage counts them (storage.py's quota migration).
_BYTES = """
    length(CAST(title AS BLOB)) + length(CAST(system_prompt AS BLOB)) + coalesce((
        SELECT sum(length(CAST(content AS BLOB)) + length(CAST(thinking AS BLOB))) FROM messages
        WHERE conversation_id = conversations.id), 0)
"""


def ownerless(store: Store) -> int:
    return int(store.execute("SELECT count(*) AS n FROM conversations WHERE user_id IS NULL")[0]["n"])


def adopt(store: Store, user_id: int, ids: list[str] | None = None) -> tuple[int, int]:
    """Give ``user_id`` the ownerless conversations (all, or those of ``ids``), in one transaction, moving their
    figures in the quota counts; returns (adopted, left out: the user imported the same one already)."""

    def move(db: Connection) -> tuple[int, int]:
        wanted = "" if ids is None else f" AND id IN ({', '.join('?' * len(ids))})"
        candidates = db.execute(
            f"SELECT id, source, {_BYTES} AS bytes FROM conversations WHERE user_id IS NULL{wanted}", tuple(ids or ())
        ).fetchall()
        mine = db.execute("SELECT source FROM conversations WHERE user_id = ? AND source IS NOT NULL", (user_id,))
        taken = {row[0] for row in mine}
        moving = [row for row in candidates if row["source"] is None or row["source"] not in taken]
        db.executemany("UPDATE conversations SET user_id = ? WHERE id = ?", [(user_id, row["id"]) for row in moving])
        # The quota triggers follow inserts and deletes, not a change of owner: the figures move here.
        count, size = len(moving), sum(row["bytes"] for row in moving)
        db.execute(
            "UPDATE quota_usage SET conversations = conversations - ?, bytes = bytes - ? WHERE owner = 0", (count, size)
        )
        db.execute("INSERT INTO quota_usage (owner) VALUES (?) ON CONFLICT DO NOTHING", (user_id,))
        db.execute(
            "UPDATE quota_usage SET conversations = conversations + ?, bytes = bytes + ? WHERE owner = ?",
            (count, size, user_id),
        )
        return count, len(candidates) - count

    return store.transaction(move)
