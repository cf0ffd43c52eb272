"""Who is asking: a session cookie for the page, an API key (``Authorization: Bearer``) for programs.

Every request passes ``_identify`` first. With accounts on (``Settings.auth_required``) a request without valid
credentials gets 401 (API) or a redirect to the login page; in open mode everyone is the anonymous local user.
State-changing requests are refused when a browser says they come from another site, and cookie-authenticated
ones must also carry the session's CSRF token (``X-CSRF-Token`` header, or a form field for the login forms).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from flask import Flask, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from . import accounts, sessions
from .config import Settings
from .errors import ApiError
from .services import services

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_ENDPOINTS = frozenset({"login.login", "login.login_form", "health.healthz", "health.readyz"})
SHARED_PAGE = "shares.shared_page"  # a share link's page: public too when CLAWWEB_SHARE=anyone
KEY_TOUCH_EVERY_S = 60  # resolution of a key's "last used" time


@dataclass(frozen=True)
class Identity:
    user_id: int | None  # None: open mode, no accounts
    name: str
    via: str  # session | key | open
    session_id: int | None = None  # the server-side session, when via == "session"
    admin: bool = False  # an admin API key: may load and unload models for everyone (clawweb keys create --admin)
    lane: str = "api"  # an API key's admission lane: api, or batch (clawweb keys create --lane batch)


OPEN = Identity(None, "", "open")


def identity() -> Identity:
    """Who sent the current request (set for every request that got past ``_identify``)."""
    return cast(Identity, g.identity)


def owner() -> int | None:
    """The user id that owns what this request creates or sees; None in open mode."""
    return identity().user_id


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


class _Sessions(SecureCookieSessionInterface):
    """The cookie is ``Secure`` whenever the request came over TLS (directly, or per a trusted proxy). The signing
    serializer is made once: Flask builds a new one for every request (cookie or not, API calls included), and the
    key is set once at start-up (``init_app``)."""

    def __init__(self) -> None:
        self._serializer: URLSafeTimedSerializer | None = None

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if self._serializer is None:
            self._serializer = super().get_signing_serializer(app)
        return self._serializer


def _secret_key(settings: Settings) -> str:
    """``CLAWWEB_SECRET_KEY``, else the key file, created 0600 on first start.

    Workers start together on a new machine, so the file must never be seen half-written: the key is written
    to a temporary file that is then hard-linked into place. ``link`` (unlike ``rename``) fails when the name
    exists, so the first worker's key wins and every other worker reads that one.
    """
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.secret_key_file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(32))
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
            log.info("created the session key in %s", path)
        except FileExistsError:
            pass  # another worker was first: use its key
        finally:
            os.unlink(temporary)
    return path.read_text().strip()


def ollama_probe() -> bool:
    """``GET /`` or ``HEAD /`` from a program, not a browser: Ollama's clients probe it for "Ollama is running".
    Browsers always name ``text/html`` in ``Accept`` when they navigate; programs send ``*/*`` or nothing."""
    named = {mimetype.lower() for mimetype, q in request.accept_mimetypes if q > 0}  # media types ignore case
    return request.path == "/" and "text/html" not in named


def _wants_page() -> bool:
    if request.path.startswith(("/api/", "/v1/")) or request.path == "/metrics":
        return False
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) != "application/json"


def _from_key(header: str) -> Identity:
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "the Authorization header must be 'Bearer <API key>'", {"WWW-Authenticate": "Bearer"})
    row = accounts.user_for_key(services().store, key.strip())
    if row["last_used_at"] is None or time.time() - row["last_used_at"] > KEY_TOUCH_EVERY_S:
        services().store.touch_key(row["id"])  # not on every request: a write before each stream would cost latency
    return Identity(row["user_id"], row["user_name"], "key", admin=bool(row["admin"]), lane=row["lane"])


def _from_key_in_open_mode(header: str) -> Identity | None:
    """In open mode a header that is not a live clawweb key is ignored: Ollama's own OpenAI recipe sends
    ``api_key="ollama"`` ("required but ignored"), and many tools always send some key. A live key still says
    who is asking (their conversations, their limits)."""
    try:
        return _from_key(header)
    except ApiError:
        global _told_ignored
        if not _told_ignored:
            log.debug("open mode: ignoring an Authorization header that is not a clawweb API key")
            _told_ignored = True
        return None


_told_ignored = False


def _from_session() -> Identity | None:
    if "sid" not in session:
        return None
    row = sessions.resolve(services().store, session["sid"], str(request.remote_addr))
    if row is None:
        session.clear()  # logged out elsewhere, password changed, user disabled: this session is over
        return None
    return Identity(row["user_id"], row["user_name"], "session", row["id"])


def _cross_site() -> bool:
    """What the browser says about where the request comes from; programs send neither header."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    # Hostnames only: nginx passes $host, which has no port.
    return origin == "null" or urlsplit(origin).hostname != urlsplit("//" + request.host).hostname


def _check_csrf(who: Identity) -> None:
    if request.method in SAFE_METHODS:
        return
    if _cross_site():
        raise ApiError(403, "cross-site request refused")
    if who.via != "session" and request.endpoint != "login.login":
        return  # API keys are not sent by browsers on their own; open mode has no authority in its cookie
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        sent = request.form.get("csrf_token")
    expected = session.get("csrf")
    if not (isinstance(sent, str) and isinstance(expected, str) and _same(sent, expected)):
        raise ApiError(403, "missing or wrong CSRF token; reload the page")


def _same(sent: str, expected: str) -> bool:
    """Constant-time, as bytes: ``compare_digest`` refuses non-ASCII str, and a forged token may hold anything."""
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def _identify() -> BaseResponse | None:
    settings = services().settings
    if request.endpoint == "static":
        return None  # the page's own files: public, and no database lookup for each of them
    header = request.headers.get("Authorization")
    if not header:
        who = _from_session()
    elif settings.auth_required:
        who = _from_key(header)
    else:
        who = _from_key_in_open_mode(header)
    if who is None and not settings.auth_required:
        who = OPEN
    public = request.endpoint in PUBLIC_ENDPOINTS or ollama_probe()
    if who is None and not public and not _local_metrics() and not _open_share():
        if _wants_page():  # back to the page after the login; a form post cannot be replayed, so not to that
            back = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("login.login_form", next=back))
        message = "log in, or send an API key as 'Authorization: Bearer <key>'"
        raise ApiError(401, message, {"WWW-Authenticate": "Bearer"})
    g.identity = who or OPEN
    _check_csrf(g.identity)
    return None


def _open_share() -> bool:
    """With ``CLAWWEB_SHARE=anyone`` a share link opens without a login: whoever has the link may read it."""
    return request.endpoint == SHARED_PAGE and services().settings.share == "anyone"


def _local_metrics() -> bool:
    """Prometheus on this machine scrapes without a key; from elsewhere ``/metrics`` needs one."""
    return request.endpoint == "metrics.exposition" and request.remote_addr in ("127.0.0.1", "::1")


def init_app(app: Flask, settings: Settings) -> None:
    app.secret_key = _secret_key(settings)
    app.session_interface = _Sessions()
    app.config.update(
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_NAME="clawweb",
        PERMANENT_SESSION_LIFETIME=sessions.LIFETIME_S,
    )
    app.before_request(_identify)
    app.context_processor(lambda: {"csrf_token": csrf_token})
    if settings.auth_required:
        log.info("accounts required: log in on the page, or send an API key (clawweb users / clawweb keys)")
    elif settings.trusted_proxies:
        log.warning("open mode behind a proxy (CLAWWEB_AUTH=off): the proxy must authenticate every user")
    else:
        log.warning(
            "open mode: no accounts; anyone who can connect to %s may use the gateway (CLAWWEB_AUTH=required "
            "turns accounts on)",
            settings.bind,
        )
