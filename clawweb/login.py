"""Logging in and out: the login page, the guess throttle, and the "known device" cookie.

Failed guesses are limited per user name and per address (``CLAWWEB_LOGIN_ATTEMPTS`` in 15 minutes, five
times that per address: an office behind one NAT shares it). Each guess takes its place in those windows
*before* the password is hashed, so concurrent guesses cannot slip past a check that has not counted them yet.

A browser that has logged in as a user before holds a signed cookie saying so. Its guesses for that user count
against a budget of its own, not the name's: a stranger's wrong passwords can then lock the name out for
unknown devices, but not its owner out of their own browser.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, cast

from flask import Blueprint, Response, current_app, redirect, render_template, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response as BaseResponse

from . import accounts, sessions
from .auth import identity
from .i18n import LANG_TAGS, language, strings
from .services import services
from .state.base import Throttled, Window

log = logging.getLogger(__name__)
bp = Blueprint("login", __name__)

LOGIN_WINDOW_S = 15 * 60
ADDRESS_FACTOR = 5  # an office behind one NAT address shares it: the address gets more attempts than a name
DEVICE_COOKIE = "clawweb_device"
DEVICE_MAX_AGE_S = 365 * 24 * 3600
DEVICE_NAMES = 10  # user names one browser is remembered for


def safe_next(target: str | None) -> str:
    """Where to go after the login: only a path on this site, read the way a browser reads a Location.

    Browsers drop tabs and newlines anywhere in a URL, trim control characters and spaces at its ends, and take
    a backslash for a slash: ``/\\t/evil.example`` is ``//evil.example`` to them, another site. So normalise
    first, then accept only a single leading slash; non-ASCII is percent-encoded (a header is Latin-1)."""
    cleaned = (target or "").strip("".join(map(chr, range(33)))).translate({9: None, 10: None, 13: None})
    cleaned = cleaned.replace("\\", "/")
    if not cleaned.startswith("/") or cleaned.startswith("//") or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        return "/"
    return iri_to_uri(cleaned)


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(str(current_app.secret_key), salt="clawweb known device")


def _device_cookie() -> dict[str, Any]:
    try:
        data = _devices().loads(request.cookies.get(DEVICE_COOKIE, ""), max_age=DEVICE_MAX_AGE_S)
    except BadSignature:
        return {}
    valid = isinstance(data, dict) and isinstance(data.get("d"), str) and isinstance(data.get("n"), list)
    return cast(dict[str, Any], data) if valid else {}


def _remember_device(response: BaseResponse, name_key: str) -> None:
    known = _device_cookie()
    names = [name_key, *(name for name in known.get("n", []) if name != name_key)][:DEVICE_NAMES]
    value = _devices().dumps({"d": known.get("d") or secrets.token_urlsafe(16), "n": names})
    response.set_cookie(
        DEVICE_COOKIE, value, max_age=DEVICE_MAX_AGE_S, secure=request.is_secure, httponly=True, samesite="Lax"
    )


def _budgets(name_key: str) -> list[tuple[Window, str]]:
    """The windows a guess for ``name_key`` counts in: this browser's own if it knows the user, else the name's
    and the address's."""
    by_name, by_address = services().login_by_name, services().login_by_address
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


def _login_page(error: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Response:
    lang = language()
    html = render_template(
        "login.html",
        error=error,
        next=safe_next(request.values.get("next")),
        name=request.form.get("name", ""),
        lang_tag=LANG_TAGS[lang],
        t=strings(lang),
    )
    return Response(html, status, headers, content_type="text/html; charset=utf-8")


@bp.get("/login")
def login_form() -> BaseResponse:
    if not services().settings.auth_required:
        return redirect("/")
    return _login_page()


@bp.post("/login")
def login() -> BaseResponse:
    if not services().settings.auth_required:
        return redirect("/")
    t = strings(language())
    name, password = request.form.get("name", ""), request.form.get("password", "")
    try:
        user = check_password(name, password)
    except Throttled as exc:
        wait = exc.retry_after
        return _login_page(t["login_throttled"].format(s=wait), 429, {"Retry-After": str(wait)})
    if user is None:
        log.warning("login failed from %s", request.remote_addr)  # never the name tried, nor the password
        return _login_page(t["login_failed"], 401)
    token, _ = sessions.start(services().store, user["id"], request.user_agent.string, str(request.remote_addr))
    session.clear()  # a fresh session (and CSRF token): nothing from before the login carries over
    session.update(sid=token, csrf=secrets.token_urlsafe(32))
    session.permanent = True
    log.info("login user=%s from %s", user["name"], request.remote_addr)
    response = redirect(safe_next(request.form.get("next")))
    _remember_device(response, user["name"].lower())
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    who = identity()
    if who.via == "session" and who.user_id is not None:
        sessions.end(services().store, who.user_id, session.get("sid"))
    session.clear()
    return redirect(url_for("login.login_form") if services().settings.auth_required else "/")
