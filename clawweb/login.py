"""Logging in and out: the login page and the form behind it; the guesses themselves are counted in guesses.py."""

from __future__ import annotations

import logging
import secrets

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response as BaseResponse

from . import sessions
from .auth import identity
from .guesses import check_password, remember_device
from .i18n import LANG_TAGS, language, strings
from .services import services
from .state.base import Throttled

log = logging.getLogger(__name__)
bp = Blueprint("login", __name__)


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
    remember_device(response, user["name"].lower())
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    who = identity()
    if who.via == "session" and who.user_id is not None:
        sessions.end(services().store, who.user_id, session.get("sid"))
    session.clear()
    return redirect(url_for("login.login_form") if services().settings.auth_required else "/")
