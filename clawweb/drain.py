"""Read what is left of a request body before the connection closes, so the client gets its answer.

A request refused before its body was read (413 for a body over the limit, 401 before a login, ...) leaves the
rest of the body unread on the socket. When the connection then closes (the client sent ``Connection: close``,
as Python's urllib does, or the response ends it), the kernel answers the unread bytes with a reset, and a
client that writes its whole body before reading (urllib, ``requests``, curl) sees "connection reset by peer"
instead of the JSON error that was sent. nginx reads and discards such a body for a while ("lingering close");
this does the same, within a bound of bytes and of time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gevent
from werkzeug.exceptions import HTTPException

from .closing import Closing

DRAIN_BYTES = 64 << 20  # beyond this a client sending junk gets the reset; a real client stops long before
DRAIN_S = 5.0

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def drain(body: Any) -> None:
    """Read and drop the rest of ``body`` (a WSGI input stream), at most ``DRAIN_BYTES`` within ``DRAIN_S``."""
    if getattr(body, "broken", False):
        return  # the body's deadline passed (edge.TimedInput): that answer closes the connection, unread
    left = DRAIN_BYTES
    with gevent.Timeout(DRAIN_S, False):
        try:
            while left > 0:
                chunk = body.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except (OSError, HTTPException):  # the client went away, or its body's deadline passed meanwhile
            return


class DrainBody:
    """WSGI middleware: every response's ``close`` drains the request body it did not read."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        response = self._app(environ, start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(response, file_wrapper):
            return response  # type: ignore[no-any-return]  # a static file: the server sends it with sendfile; a GET has no body to drain
        body = environ["wsgi.input"]
        return Closing(response, lambda: drain(body))  # the response as it is, then the drain
