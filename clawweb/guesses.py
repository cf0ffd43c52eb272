"""Password guesses, throttled: per user name and per address, or per known device, reserved before the hash.

Failed guesses are limited per user name and per address (``CLAWWEB_LOGIN_ATTEMPTS`` in 15 minutes, five
times that per address: an office behind one NAT shares it). Each guess takes its place in those windows
*before* the password is hashed, so concurrent guesses cannot slip past a check that has not counted them yet.

A browser that has logged in as a user before holds a signed cookie saying so. Its guesses for that user count
against a budget of its own, not the name's: a stranger's wrong passwords can then lock the name out for
unknown devices, but not its owner out of their own browser. The login page and the account page (changing a
password) both check passwords here.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

from flask import current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from . import accounts
from .services import services
from .state.base import Throttled, Window

LOGIN_WINDOW_S = 15 * 60
ADDRESS_FACTOR = 5  # an office behind one NAT address shares it: the address gets more attempts than a name
DEVICE_COOKIE = "clawweb_device"
DEVICE_MAX_AGE_S = 365 * 24 * 3600
DEVICE_NAMES = 10  # user names one browser is remembered for


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(str(current_app.secret_key), salt="clawweb known device")


def _device_cookie() -> dict[str, Any]:
    try:
        data = _devices().loads(request.cookies.get(DEVICE_COOKIE, ""), max_age=DEVICE_MAX_AGE_S)
    except BadSignature:
        return {}
    valid = isinstance(data, dict) and isinstance(data.get("d"), str) and isinstance(data.get("n"), list)
    return cast(dict[str, Any], data) if valid else {}


def remember_device(response: BaseResponse, name_key: str) -> None:
    known = _device_cookie()
    names = [name_key, *(name for name in known.get("n", []) if name != name_key)][:DEVICE_NAMES]
    value = _devices().dumps({"d": known.get("d") or secrets.token_urlsafe(16), "n": names})
    response.set_cookie(
        DEVICE_COOKIE, value, max_age=DEVICE_MAX_AGE_S, secure=request.is_secure, httponly=True, samesite="Lax"
    )


def _budgets(name_key: str) -> list[tuple[Window, str]]:
    """The windows a guess for ``name_key`` counts in: this browser's own if it knows the user, else the name's
    and the address's."""
    app = services()
    by_name, by_address = app.login_by_name, app.login_by_address
    known = _device_cookie()
    if name_key in known.get("n", []):
        return [(by_name, f"{name_key}\x00device:{known['d']}")]
    return [(by_name, name_key), (by_address, str(request.remote_addr))]


def check_password(name: str, password: str) -> dict[str, Any] | None:
    """The user if ``password`` is theirs, else None; raises ``Throttled`` (nothing hashed) over the limits."""
    budgets = _budgets(name.strip().lower())
    held: list[tuple[Window, str, str]] = []
    try:
        for window, key in budgets:
            held.append((window, key, window.reserve(key)))
    except Throttled:
        for window, key, token in held:
            window.release(key, token)
        raise
    user = accounts.authenticate(services().store, name, password)
    if user is not None:  # a right password is not a failure, and forgives this budget's earlier ones
        for window, key, token in held:
            window.release(key, token)
        budgets[0][0].clear(budgets[0][1])
    return user
