"""A conversation is a tree of messages: each has a ``parent_id`` (None for a first message), and the conversation's
``current_id`` is the leaf of the branch shown. Editing a message or regenerating an answer adds a sibling, so
nothing written is ever replaced; the branch shown is the path root → ``current_id``, and only that path is
sent to Ollama.

Every query walks the tree in SQL (recursive CTEs over the ``(conversation_id, parent_id)`` index), so opening
a conversation of thousands of messages reads only its branch and the siblings along it. Message ids grow with
time and a child is always added after its parent, so the newest leaf under a message is the largest id
below it.
"""

from __future__ import annotations

from typing import Any

from ..errors import ApiError
from ..storage import Store
from ..storage.engine import Connection

# The ids under (and including) :message, in its conversation.
_SUBTREE = """
    WITH RECURSIVE subtree (id) AS (
        SELECT id FROM messages WHERE id = :message AND conversation_id = :conversation
        UNION ALL
        SELECT messages.id FROM messages JOIN subtree ON messages.parent_id = subtree.id
        WHERE messages.conversation_id = :conversation
    )
"""


def message(store: Store, owner: int | None, message_id: int) -> dict[str, Any] | None:
    """The message, if it is in one of ``owner``'s conversations (anyone else's is "not found")."""
    rows = store.execute(
        "SELECT messages.* FROM messages JOIN conversations ON conversations.id = messages.conversation_id "
        "WHERE messages.id = ? AND conversations.user_id IS ?",
        (message_id, owner),
    )
    return rows[0] if rows else None


def path(store: Store, conversation_id: str, message_id: int) -> list[dict[str, Any]]:
    """The messages root → ``message_id``: the history an answer under that message is given (no other branch)."""
    return store.execute(
        """
        WITH RECURSIVE path (id, depth) AS (
            SELECT id, 0 FROM messages WHERE conversation_id = :conversation AND id = :message
            UNION ALL
            SELECT messages.parent_id, path.depth + 1 FROM messages JOIN path ON messages.id = path.id
            WHERE messages.parent_id IS NOT NULL
        )
        SELECT messages.* FROM path JOIN messages ON messages.id = path.id ORDER BY path.depth DESC
        """,
        {"conversation": conversation_id, "message": message_id},
    )


def in_conversation(store: Store, conversation_id: str, message_id: int) -> dict[str, Any] | None:
    """The message if it is one of this conversation's (the caller found the conversation by its owner)."""
    rows = store.execute("SELECT * FROM messages WHERE id = ? AND conversation_id = ?", (message_id, conversation_id))
    return rows[0] if rows else None


def branch(store: Store, conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages root → the current leaf, each with ``siblings``: the ids with its parent, oldest first."""
    rows = store.execute(
        """
        WITH RECURSIVE path (id, depth) AS (
            SELECT id, 0 FROM messages WHERE conversation_id = :conversation AND id = coalesce(
                :current, (SELECT max(id) FROM messages WHERE conversation_id = :conversation))
            UNION ALL
            SELECT messages.parent_id, path.depth + 1 FROM messages JOIN path ON messages.id = path.id
            WHERE messages.parent_id IS NOT NULL
        )
        SELECT messages.* FROM path JOIN messages ON messages.id = path.id ORDER BY path.depth DESC
        """,
        {"conversation": conversation["id"], "current": conversation.get("current_id")},
    )
    # The siblings along the branch: the children of its messages' parents, grouped here.
    parents = sorted({row["parent_id"] for row in rows if row["parent_id"] is not None})
    listed = f" OR parent_id IN ({', '.join('?' * len(parents))})" if parents else ""
    children: dict[int | None, list[int]] = {}
    for child in store.execute(
        f"SELECT id, parent_id FROM messages WHERE conversation_id = ? AND (parent_id IS NULL{listed}) ORDER BY id",
        (conversation["id"], *parents),
    ):
        children.setdefault(child["parent_id"], []).append(child["id"])
    for row in rows:
        row["siblings"] = children.get(row["parent_id"], [row["id"]])
    return rows


def everything(store: Store, conversation_id: str) -> list[dict[str, Any]]:
    """Every message of the conversation, every branch, oldest first (parents before their children)."""
    return store.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))


def has_children(store: Store, conversation_id: str, message_id: int) -> bool:
    rows = store.execute(
        "SELECT 1 FROM messages WHERE conversation_id = ? AND parent_id = ? LIMIT 1", (conversation_id, message_id)
    )
    return bool(rows)


def show(store: Store, conversation_id: str, message_id: int) -> int | None:
    """Show the branch through ``message_id`` (down to its newest leaf); returns the new current leaf, or None
    when the message is not there (deleted meanwhile: one statement, so current_id never names a deleted
    message). Does not move the conversation up the list: looking at an old branch is not a change."""
    rows = store.execute(
        _SUBTREE + "UPDATE conversations SET current_id = (SELECT max(id) FROM subtree) "
        "WHERE id = :conversation AND EXISTS (SELECT 1 FROM subtree) RETURNING current_id",
        {"message": message_id, "conversation": conversation_id},
    )
    return int(rows[0]["current_id"]) if rows else None


def subtree(store: Store, conversation_id: str, message_id: int) -> list[int]:
    rows = store.execute(_SUBTREE + "SELECT id FROM subtree", {"message": message_id, "conversation": conversation_id})
    return [row["id"] for row in rows]


def remove(store: Store, conversation_id: str, message_id: int, streaming_too: bool = True) -> list[int]:
    """Delete the message and everything under it, in one transaction; returns the ids deleted. If the branch
    shown went with them, the newest branch left under the same parent is shown (else the parent itself).
    ``streaming_too=False``: a 409, deleting nothing, when an answer in it is streaming (one may have started
    since the caller looked)."""

    def delete(db: Connection) -> list[int]:
        store.lock(db, conversation_id)
        names = {"message": message_id, "conversation": conversation_id}
        gone = [row[0] for row in db.execute(_SUBTREE + "SELECT id FROM subtree", names)]
        if not gone:
            return []
        streaming = (
            _SUBTREE + "SELECT 1 FROM messages WHERE id IN (SELECT id FROM subtree) AND status = 'streaming' LIMIT 1"
        )
        if not streaming_too and db.execute(streaming, names).fetchone():
            raise ApiError(409, "an answer under this message is still being generated; stop it first")
        parent = db.execute("SELECT parent_id FROM messages WHERE id = ?", (message_id,)).fetchone()[0]
        # Children first is not needed: the foreign key is checked at the end of the statement.
        db.execute(_SUBTREE + "DELETE FROM messages WHERE id IN (SELECT id FROM subtree)", names)
        current = db.execute("SELECT current_id FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
        if current is None or current in gone:
            leaf = db.execute(
                "SELECT max(id) FROM messages WHERE conversation_id = ? AND parent_id IS ?", (conversation_id, parent)
            ).fetchone()[0]
            if leaf is not None:
                leaf = db.execute(
                    _SUBTREE + "SELECT max(id) FROM subtree", {"message": leaf, "conversation": conversation_id}
                ).fetchone()[0]
            db.execute("UPDATE conversations SET current_id = ? WHERE id = ?", (leaf or parent, conversation_id))
        return gone

    return store.transaction(delete)
