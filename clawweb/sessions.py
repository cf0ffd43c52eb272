"""Server-side login sessions: the cookie carries a random token, the database says whether it is still live.

A signed cookie alone cannot be taken back: a copy made before "Log out" would work until it expires. So the
cookie holds only a token, and the ``sessions`` table its SHA-256 digest with who, since when, from where and
with which browser. Logging out, a password change, disabling the user and ``clawweb users sessions --revoke``
delete rows; a deleted row never comes back (re-enabling a user starts with no sessions).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from .storage import Store

LIFETIME_S = 31 * 24 * 3600  # as the cookie's own lifetime: a login lasts a month at most
TOUCH_EVERY_S = 60  # resolution of "last seen": not a write for every request
MAX_USER_AGENT = 200


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def start(store: Store, user_id: int, user_agent: str, address: str) -> tuple[str, dict[str, Any]]:
    """A new session: the token for the cookie (shown nowhere else) and its row."""
    store.end_expired_sessions(time.time() - LIFETIME_S)
    token = secrets.token_urlsafe(32)
    return token, store.add_session(digest(token), user_id, user_agent[:MAX_USER_AGENT], address)


def resolve(store: Store, token: object, address: str) -> dict[str, Any] | None:
    """The live session (with ``user_name``) for a cookie's token, or None: unknown, ended, expired, or its user
    disabled. Records when and from where it was last used."""
    if not isinstance(token, str) or not token.isascii() or len(token) > 100:
        return None
    row = store.session(digest(token), time.time() - LIFETIME_S)
    if row is None or row["user_disabled"]:
        return None
    if time.time() - row["last_seen_at"] > TOUCH_EVERY_S or row["address"] != address:
        store.touch_session(row["id"], address)
    return row


def end(store: Store, user_id: int, token: object) -> None:
    if isinstance(token, str):
        store.end_sessions(user_id, digest=digest(token))
