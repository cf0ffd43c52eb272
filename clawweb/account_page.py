"""``/account``: a user's own sessions, API keys and password, as a classic server-rendered page with forms.

Every change is a POST with the page's CSRF token, answered by a redirect back to the page (so a reload does
not repeat it), except creating a key: that answer shows the key, once, and is never stored.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, abort, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from . import accounts
from .auth import Identity, identity
from .guesses import check_password
from .i18n import LANG_TAGS, language, strings
from .services import services
from .state.base import Throttled

bp = Blueprint("account", __name__, url_prefix="/account")

MAX_KEY_NAME = 100


def _user() -> Identity:
    """The logged-in user; the page does not exist in open mode (there are no accounts)."""
    who = identity()
    if who.user_id is None:
        abort(404)
    return who


def _when(stamp: float | None) -> str:
    return "—" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"))
SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


def browser_label(user_agent: str) -> str:
    """ "Chrome on Linux" rather than a whole User-Agent line (which the cell's tooltip still shows)."""
    browser = next((name for token, name in BROWSERS if token in user_agent), "")
    system = next((name for token, name in SYSTEMS if token in user_agent), "")
    if browser and system:
        return f"{browser} · {system}"
    return browser or system or user_agent[:40] or "—"


def _page(status: int = 200, notice: str = "", error: str = "", new_key: str = "") -> Response:
    who, lang, store = _user(), language(), services().store
    assert who.user_id is not None
    html = render_template(
        "account.html",
        user=who.name,
        current_session=who.session_id,
        sessions=store.sessions(who.user_id),
        keys=[key for key in store.keys(who.user_id) if key["revoked_at"] is None],
        when=_when,
        browser_label=browser_label,
        notice=notice,
        error=error,
        new_key=new_key,
        lang_tag=LANG_TAGS[lang],
        t=strings(lang),
    )
    return Response(html, status, content_type="text/html; charset=utf-8")


def _back() -> BaseResponse:
    return redirect("/account", 303)


@bp.get("")
def show() -> Response:
    return _page()


@bp.post("/sessions/<int:session_id>/end")
def end_session(session_id: int) -> BaseResponse:
    who = _user()
    assert who.user_id is not None
    services().store.end_sessions(who.user_id, session_id=session_id)
    return _back()


@bp.post("/sessions/end-others")
def end_other_sessions() -> BaseResponse:
    who = _user()
    assert who.user_id is not None
    services().store.end_sessions(who.user_id, keep=who.session_id)
    return _back()


@bp.post("/keys")
def create_key() -> Response:
    who = _user()
    assert who.user_id is not None
    name = " ".join(request.form.get("name", "").split())[:MAX_KEY_NAME]
    key, _ = accounts.create_key(services().store, who.user_id, name)
    return _page(201, new_key=key)


@bp.post("/keys/<int:key_id>/revoke")
def revoke_key(key_id: int) -> BaseResponse:
    who = _user()
    assert who.user_id is not None
    services().store.revoke_key(key_id, who.user_id)  # somebody else's key id: nothing happens
    return _back()


@bp.post("/password")
def change_password() -> Response:
    who, t = _user(), strings(language())
    assert who.user_id is not None
    current, new, again = (request.form.get(field, "") for field in ("current", "new", "again"))
    try:
        user: dict[str, Any] | None = check_password(who.name, current)  # a stolen cookie must not guess freely
    except Throttled as exc:
        response = _page(429, error=t["login_throttled"].format(s=exc.retry_after))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if user is None:
        return _page(403, error=t["password_wrong"])
    if new != again:
        return _page(400, error=t["password_mismatch"])
    try:
        accounts.set_password(services().store, who.user_id, new, keep_session=who.session_id)
    except ValueError as exc:  # too short or too long
        return _page(400, error=str(exc))
    return _page(notice=t["password_changed"])
