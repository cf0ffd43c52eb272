"""Share links: a read-only snapshot of a conversation's branch at ``/s/<token>``, until it expires or is revoked.

The token is shown once, when the link is made; the ``shares`` table keeps only its SHA-256 digest (like API
keys and sessions), so a copy of the database opens no link. The token is 256 random bits, so a fast hash is
enough, and a lookup by digest is constant-time in what matters: timing says nothing about the token. The
snapshot is the branch as it was: the conversation going on, or being edited, changes no link made before.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from ..errors import ApiError, InvalidField
from ..storage import Store
from . import tree

MAX_EXPIRES_IN_S = 366 * 24 * 3600  # a year (and a day): a link meant to outlive that needs no expiry at all
MAX_LINKS = 20  # live links per conversation: each holds a copy of the branch, which no quota counts
MAX_TOKEN = 100  # token_urlsafe(32) is 43 characters; anything much longer is not one of ours
# What a reader sees of each message; ids and error details stay with the owner.
MESSAGE_FIELDS = ("role", "content", "thinking", "status", "model", "created_at", "ttft_ms", "tokens", "tokens_per_s")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def expires_in(body: dict[str, Any]) -> int | None:
    """``expires_in_s`` from a request body: absent or null (until revoked), else a positive whole number of
    seconds up to a year."""
    value = body.get("expires_in_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXPIRES_IN_S:
        raise InvalidField("expires_in_s", f"must be a whole number of seconds from 1 to {MAX_EXPIRES_IN_S}")
    return value


def snapshot(store: Store, conversation: dict[str, Any], sharer: str, now: float) -> dict[str, Any]:
    """What the link shows: the branch as it is now, without an answer still being written (it is not one yet)
    and without the system prompt (the owner's instructions, not part of the conversation read)."""
    messages = [
        {name: message[name] for name in MESSAGE_FIELDS}
        for message in tree.branch(store, conversation)
        if message["status"] != "streaming" and (message["role"] == "user" or message["content"])
    ]
    return {
        "title": conversation["title"],
        "model": conversation["model"],
        "sharer": sharer,
        "shared_at": now,
        "messages": messages,
    }


def create(
    store: Store, conversation: dict[str, Any], sharer: str, expires_in_s: int | None
) -> tuple[str, dict[str, Any]]:
    """A new link: its token (returned only here) and its row (``id, created_at, expires_at``); 409 when the
    conversation has ``MAX_LINKS`` live ones already."""
    now = time.time()
    if len(live(store, conversation["id"])) >= MAX_LINKS:
        raise ApiError(409, f"this conversation has {MAX_LINKS} live share links already; revoke them first")
    token = secrets.token_urlsafe(32)
    expires_at = None if expires_in_s is None else now + expires_in_s
    body = json.dumps(snapshot(store, conversation, sharer, now), ensure_ascii=False)
    store.execute("DELETE FROM shares WHERE expires_at <= ?", (now,))  # nothing opens them any more
    rows = store.execute(
        "INSERT INTO shares (digest, conversation_id, snapshot, created_at, expires_at) VALUES (?, ?, ?, ?, ?) "
        "RETURNING id, created_at, expires_at",
        (digest(token), conversation["id"], body, now, expires_at),
    )
    return token, rows[0]


def live(store: Store, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's links that still open, oldest first."""
    return store.execute(
        "SELECT id, created_at, expires_at FROM shares WHERE conversation_id = ? "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id",
        (conversation_id, time.time()),
    )


def revoke_all(store: Store, conversation_id: str) -> None:
    store.execute("DELETE FROM shares WHERE conversation_id = ?", (conversation_id,))


def opened(store: Store, token: str) -> dict[str, Any] | None:
    """The snapshot a token opens, or None: unknown, revoked, expired, or its conversation deleted."""
    if not token.isascii() or len(token) > MAX_TOKEN:
        return None
    rows = store.execute(
        "SELECT snapshot FROM shares WHERE digest = ? AND (expires_at IS NULL OR expires_at > ?)",
        (digest(token), time.time()),
    )
    return dict(json.loads(rows[0]["snapshot"])) if rows else None
