"""The network edge: which ``Host`` names are served (DNS rebinding), and how long a request body may take.

**Host.** A page on another site whose name is rebound to 127.0.0.1 talks to the gateway as a same-origin page
of *its* name: the browser sends ``Host: evil.example``, and in open mode nothing else would stop it listing,
reading and deleting conversations or running the model. So a request is only served when its ``Host`` (behind
trusted proxies: the ``X-Forwarded-Host`` ProxyFix applied) names a loopback address (``localhost``,
``*.localhost``, 127.0.0.0/8, ``[::1]``), the host of ``CLAWWEB_BIND``, or one of ``CLAWWEB_ALLOWED_HOSTS``,
with any port; a state-changing request's ``Origin`` must name one of them too. This is what Ollama itself
does. It is always on in open mode; with accounts on a rebound name is harmless (the session cookie belongs to
the real name and is not sent) and the check runs only when ``CLAWWEB_ALLOWED_HOSTS`` is set, as the deploy
kit does. ``/healthz`` answers every name: its answer is a constant, and a load balancer probes with whatever
name it likes.

**Body.** ``BodyDeadline`` bounds the time from a request's headers to the end of its body
(``CLAWWEB_BODY_TIMEOUT_S``): a read past it fails with a 408 and the connection is closed, so a client sending a
byte every few seconds cannot hold a greenlet (and a worker connection) for as long as it likes. It wraps
``wsgi.input`` itself, so every reader is covered: ``request.get_data``, werkzeug's form parser, anything else.

``POST /api/import`` alone gets more: a 64 MiB ``conversations.json`` needs 54 s at 10 Mbit/s, and only nginx
buffers a body before the gateway sees it (Caddy and a bare gateway pass the client's pace through). Its deadline
is ``CLAWWEB_IMPORT_TIMEOUT_S`` scaled by its announced ``Content-Length`` against ``CLAWWEB_MAX_IMPORT_BYTES``
(600 s for the full 64 MiB: 0.9 Mbit/s), never less than the usual one, so a small or unannounced (chunked) body
trickled into it is cut as soon as any other.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import gevent
from flask import Flask, request
from werkzeug.exceptions import RequestTimeout, TooManyRequests

from .config import Settings
from .errors import ApiError
from .services import services
from .worker import AddressBusy

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_HOST_ENDPOINTS = frozenset({"health.healthz"})
IMPORT_PATH = "/api/import"  # the one route whose body may be large (transfer_api.import_conversations)
MAX_LOGGED_NAMES = 100  # each refused name is logged once: a flood of made-up names must not flood the log
T = TypeVar("T")


def hostname(host: str) -> str:
    """The name in a ``Host`` value (``name``, ``name:port``, ``[v6]:port``): lower-case, no trailing dot, IP
    addresses in their canonical form."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    name = name.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


class AllowedHosts:
    """The names this gateway answers to: loopback ones always, the bind address, ``CLAWWEB_ALLOWED_HOSTS``."""

    def __init__(self, settings: Settings) -> None:
        names = {name for name in settings.allowed_hosts if not name.startswith(".")}
        self.suffixes = tuple(name for name in settings.allowed_hosts if name.startswith("."))
        bind = settings.bind.rpartition(":")[0]
        if not settings.bind.startswith("unix:") and bind:
            bound = hostname(bind)
            try:
                wildcard = ipaddress.ip_address(bound).is_unspecified  # 0.0.0.0 is no name anyone should browse to
            except ValueError:
                wildcard = False
            if not wildcard:
                names.add(bound)
        self.names = frozenset(names)
        self.enforced = not settings.auth_required or bool(settings.allowed_hosts)
        self.refused: set[str] = set()  # names refused so far, each logged once

    def __contains__(self, name: str) -> bool:
        if name == "localhost" or name.endswith(".localhost") or name in self.names:
            return True
        try:
            if ipaddress.ip_address(name).is_loopback:
                return True
        except ValueError:
            pass
        return any(name == suffix[1:] or name.endswith(suffix) for suffix in self.suffixes)


def _shown(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


def _check_host() -> None:
    allowed = services().allowed_hosts
    if not allowed.enforced or request.endpoint in ANY_HOST_ENDPOINTS:
        return
    name = hostname(request.host)  # werkzeug's: "" when the header is missing or holds characters no name has
    if name not in allowed:
        _log_refusal(allowed, name)
        raise ApiError(403, f"Host '{_shown(request.host)}' is not served here; add it to CLAWWEB_ALLOWED_HOSTS")
    origin = request.headers.get("Origin")
    if request.method in SAFE_METHODS or origin is None or origin == "null":
        return  # "null" (a sandboxed frame, a file:// page) is refused by auth's cross-site check
    try:
        origin_name = hostname(urlsplit(origin).netloc.rpartition("@")[2])
    except ValueError:
        origin_name = ""
    if origin_name not in allowed:
        _log_refusal(allowed, origin_name)
        raise ApiError(403, f"Origin '{_shown(origin)}' is not allowed here; add its host to CLAWWEB_ALLOWED_HOSTS")


def _log_refusal(allowed: AllowedHosts, name: str) -> None:
    if name not in allowed.refused and len(allowed.refused) < MAX_LOGGED_NAMES:
        allowed.refused.add(name)
        log.warning("refused requests for the host name %r (not in CLAWWEB_ALLOWED_HOSTS)", _shown(name))


class TimedInput:
    """``wsgi.input`` whose reads fail once the body's deadline has passed (``RequestTimeout``, a 408), or when
    the worker refuses to keep one more connection of this address waiting (``TooManyRequests``, a 429)."""

    def __init__(self, stream: IO[bytes], seconds: float, setting: str = "CLAWWEB_BODY_TIMEOUT_S") -> None:
        self._stream = stream
        self._seconds = seconds
        self._setting = setting
        self._deadline = time.monotonic() + seconds
        self.broken = False  # the body was not read to its end: the connection cannot carry another request

    def _timed(self, read: Callable[..., T], *args: Any) -> T:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._expired()
        # A greenlet blocked on the socket is woken by this timer; a read that does not block never notices it.
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            return read(*args)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise self._expired() from None
        except AddressBusy as exc:
            self.broken = True
            raise TooManyRequests(str(exc), retry_after=5) from None
        finally:
            timer.close()

    def _expired(self) -> RequestTimeout:
        self.broken = True
        return RequestTimeout(f"the request body did not arrive within {self._seconds:g} s ({self._setting})")

    def read(self, size: int | None = -1) -> bytes:
        return self._timed(self._stream.read, -1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._timed(self._stream.readline, -1 if size is None else size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._timed(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """WSGI middleware: the body must arrive within ``seconds`` of the headers (see ``TimedInput``). After a read
    failed the answer says ``Connection: close``: the unread rest of the body cannot be told from a next request
    (clawweb's gunicorn worker honours it; gunicorn itself drops the header)."""

    def __init__(self, app: WSGIApplication, settings: Settings) -> None:
        self.app, self.seconds = app, settings.body_timeout_s
        self.import_seconds, self.import_bytes = settings.import_timeout_s, settings.max_import_bytes

    def _timed_input(self, environ: WSGIEnvironment) -> TimedInput:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != IMPORT_PATH:
            return TimedInput(environ["wsgi.input"], self.seconds)
        try:
            announced = max(0, int(environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            announced = 0
        allowance = self.import_seconds * min(announced, self.import_bytes) / self.import_bytes
        if allowance <= self.seconds:
            return TimedInput(environ["wsgi.input"], self.seconds)
        return TimedInput(environ["wsgi.input"], round(allowance, 1), "CLAWWEB_IMPORT_TIMEOUT_S")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = self._timed_input(environ)
        environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
            if body.broken:
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def init_app(app: Flask, settings: Settings) -> None:
    """Call before any other ``before_request`` is registered: the host check must come first."""
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings)  # type: ignore[method-assign]
    app.before_request(_check_host)
