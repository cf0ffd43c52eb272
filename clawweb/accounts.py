"""Accounts: local users with scrypt password hashes, and API keys for programs.

Password hashing runs on gevent's thread pool: scrypt is ~0.1 s of CPU by design, and on the event loop that
would pause every open stream of the worker for as long. API keys are long random strings, so a plain SHA-256
digest is enough to store them (a slow hash protects guessable secrets, not 256-bit ones).
"""

from __future__ import annotations

import hashlib
import secrets
from functools import cache
from typing import Any

import gevent
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import ApiError
from .storage import Store

KEY_PREFIX = "cw_"
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_NAME = 64


def _off_loop(fn: Any, *args: Any) -> Any:
    return gevent.get_hub().threadpool.apply(fn, args)


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return str(_off_loop(generate_password_hash, password, "scrypt"))


@cache
def _dummy_hash() -> str:
    return hash_password("not-a-real-password")


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "._-@" for c in name):
        raise ValueError(f"a user name has 1 to {MAX_NAME} letters, digits or . _ - @")
    return name


def authenticate(store: Store, name: str, password: str) -> dict[str, Any] | None:
    """The enabled user with this name and password, else None. An unknown name costs the same as a wrong
    password, so timing does not tell which names exist."""
    user = store.user(name=name.strip()) if len(name) <= MAX_NAME else None
    hashed = user["password_hash"] if user else _dummy_hash()
    matches = bool(_off_loop(check_password_hash, hashed, password[:MAX_PASSWORD]))
    return user if user and matches and not user["disabled"] else None


def set_password(store: Store, user_id: int, password: str, keep_session: int | None = None) -> None:
    """A new password ends every session of the user but ``keep_session`` (the one that changed it)."""
    store.update_user(user_id, password_hash=hash_password(password))
    store.end_sessions(user_id, keep=keep_session)


def set_disabled(store: Store, user_id: int, disabled: bool) -> None:
    """Disabling ends every session at once; enabling again brings none of them back."""
    store.update_user(user_id, disabled=int(disabled))
    if disabled:
        store.end_sessions(user_id)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    store: Store, user_id: int, name: str = "", admin: bool = False, lane: str = "api"
) -> tuple[str, dict[str, Any]]:
    """A new key: returned once here, stored only as its digest. ``admin``: it may send load requests; ``lane``:
    its requests' admission lane (api, or batch: behind the others, state/lanes.py)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, store.add_key(user_id, name, key[:10], key_digest(key), admin, lane)


def user_for_key(store: Store, key: str) -> dict[str, Any]:
    """The key's row (with ``user_name``); ``ApiError`` 401 for an unknown, revoked or disabled one."""
    found = store.key(key_digest(key)) if key.startswith(KEY_PREFIX) and len(key) < 100 else None
    if found is None or found["user_disabled"]:
        raise ApiError(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
    return found
