"""clawweb's gunicorn worker: gevent's, plus a bound on the connections one address keeps waiting on its own bytes.

A gevent worker holds ``CLAWWEB_WORKER_CONNECTIONS`` connections; when they are all taken nobody else is served,
``/healthz`` included. Slow clients are cheap to make: connect and send nothing, or announce a body and send a
byte every few seconds. gunicorn bounds the headers of each request (``keepalive``, 5 s) and ``BodyDeadline``
the body (``CLAWWEB_BODY_TIMEOUT_S``), but a client that keeps opening such connections still takes them all.

So each connection counts, per peer address, while it waits for its client's bytes before the request is
answered: from the accept through headers and body (for a keep-alive request, from its headers on) until
``start_response``, and only while a read would block. A connection that would be one more than
``CLAWWEB_MAX_PENDING_PER_ADDRESS`` of its address waiting is answered ``429`` (JSON, ``Connection: close``).
Counting only reads that block is what keeps a legitimate burst safe: a thousand requests from one address
whose bytes have arrived wait on the *server*, not on the client, and never count (measured: of 1000 requests
sent at once from one address, at most 14 to 29 were ever counted together on an idle machine, but 13 of them
were refused at a bound of 128 while the other core was busy: hence 512, which still leaves seven eighths of
the default 4096 connections to everyone else); an idle
keep-alive connection between requests does not count either (gunicorn closes it after ``keepalive``).

Behind a trusted proxy (``CLAWWEB_TRUSTED_PROXIES`` > 0) every connection comes from the proxy's address, so
there is no per-client bound to apply here: the proxy does it (the deploy kit's nginx buffers bodies and limits
connections per address). Imported by the master (``worker_class``), so it imports nothing of the app but
``clawweb.config``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from .config import load_settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # one warning per refused address per this long, however many connections it opens
RETRY_AFTER_S = 5  # gunicorn's keepalive: by then the stalled headers of that address have been cut


class AddressBusy(Exception):
    """This connection would be one more of its address's waiting on their client: refused with a 429."""

    def __init__(self, address: str, limit: int) -> None:
        super().__init__(
            f"{limit} connections from {address} are already waiting for their requests to arrive; finish or "
            "close them first (CLAWWEB_MAX_PENDING_PER_ADDRESS)"
        )
        self.address = address


class Waiting:
    """How many connections of each address are waiting on their client right now, in this worker."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # None: no bound (behind a proxy)
        self.counts: dict[str, int] = {}
        self._logged: dict[str, float] = {}  # when each refused address was last logged

    def enter(self, address: str) -> None:
        count = self.counts.get(address, 0)
        if self.limit is not None and count >= self.limit:
            refused = AddressBusy(address, self.limit)
            self._log(refused)
            raise refused
        self.counts[address] = count + 1

    def leave(self, address: str) -> None:
        count = self.counts.pop(address) - 1
        if count:
            self.counts[address] = count

    def _log(self, refused: AddressBusy) -> None:
        now = time.monotonic()
        if now - self._logged.get(refused.address, float("-inf")) < LOG_EVERY_S:
            return
        if len(self._logged) > 1000:  # many addresses refused: forget those not refused lately
            self._logged = {a: t for a, t in self._logged.items() if now - t < LOG_EVERY_S}
        self._logged[refused.address] = now
        log.warning("refusing connections from %s: %s", refused.address, refused)


class Connection:
    """A client socket as gunicorn uses it, counted in ``Waiting`` while a read for an unanswered request blocks,
    and sending a response's headers with its first body bytes. Everything but ``recv`` and ``sendall`` goes to the
    socket unchanged (after any held headers)."""

    def __init__(self, sock: Any, address: str, waiting: Waiting) -> None:
        self._sock = sock
        self._waiting = waiting
        self.address = address
        self.pending = True  # a request is on its way and not answered yet; the first one from the accept on
        self.request: Any = None  # gunicorn's Request being served
        # gunicorn sends a response's headers and then each body chunk, one sendall each: the headers are held here
        # and go with the body's first bytes, one send and one TCP segment instead of two (a streamed answer's
        # first frame, most of all). Never later than this greenlet's run: the first other use of the socket, or
        # the hub's next turn, sends them alone.
        self._headers_next = False  # start_response was called: gunicorn's next sendall is the header block
        self._held = b""
        self._flusher: Any = None  # the greenlet sending held headers alone (nothing followed them in the run)

    def begin(self, request: Any) -> None:
        """A request's headers are in: it counts again until answered."""
        self.pending, self.request = True, request

    def answered(self, close: bool) -> None:
        self.pending = False
        self._headers_next = True
        if close and self.request is not None:
            self.request.must_close = True  # gunicorn then says "Connection: close" and closes after the response

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if self._headers_next:
            self._headers_next = False
            self._held = data
            gevent.get_hub().loop.run_callback(self._send_held_soon)
            return
        if self._flusher is not None:  # (tested inline: this runs once per token)
            self._join_flusher()
        if self._held:
            data, self._held = self._held + data, b""
        self._sock.sendall(data, flags)

    def _send_held_soon(self) -> None:
        """In the hub: the greenlet blocked before its body's first bytes (an empty body, a slow first chunk)."""
        if self._held and self._flusher is None:
            self._flusher = gevent.spawn(self._send_held_alone)

    def _send_held_alone(self) -> None:
        held, self._held = self._held, b""
        try:
            self._sock.sendall(held)
        except OSError:
            pass  # the client is gone: the serving greenlet's next write says so

    def _join_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    def _send_held(self) -> None:
        """Before any other use of the socket: the held headers go first."""
        self._join_flusher()
        if self._held:
            held, self._held = self._held, b""
            self._sock.sendall(held)

    def recv(self, size: int, flags: int = 0) -> bytes:
        data: bytes
        self._send_held()
        if not self.pending:
            data = self._sock.recv(size, flags)
            return data
        timeout = self._sock.gettimeout()
        self._sock.settimeout(0.0)  # first without waiting: bytes already here cost the client nothing
        try:
            data = self._sock.recv(size, flags)
            return data
        except BlockingIOError:
            pass
        finally:
            self._sock.settimeout(timeout)
        self._waiting.enter(self.address)
        try:
            data = self._sock.recv(size, flags)
            return data
        finally:
            self._waiting.leave(self.address)

    def __getattr__(self, name: str) -> Any:
        self._send_held()  # close, fileno (sendfile), setblocking...: after the headers
        return getattr(self._sock, name)


def _watch_answers(app: WSGIApplication) -> WSGIApplication:
    """The app, telling each ``Connection`` when its request is answered and whether it must close."""

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, Connection):
            return app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
            close = any(name.lower() == "connection" and value.lower() == "close" for name, value in headers)
            sock.answered(close)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wsgi


class EdgeWorker(GeventWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """``worker_class`` in gunicorn.conf.py."""

    waiting = Waiting(None)
    wsgi: WSGIApplication  # set by gunicorn's load_wsgi

    def init_process(self) -> None:
        settings = load_settings(os.environ)  # validated by the master already
        self.waiting = Waiting(None if settings.trusted_proxies else settings.max_pending_per_address)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = _watch_answers(self.wsgi)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if isinstance(addr, tuple) and not self.cfg.is_ssl:  # a unix socket has no peer address to count by
            client = Connection(client, str(addr[0]), self.waiting)
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        if isinstance(sock, Connection):
            sock.begin(req)
        super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, AddressBusy):
            super().handle_error(req, client, addr, exc)
            return
        # Refused while reading the headers (a refusal during the body is the app's 429, see edge.TimedInput).
        body = json.dumps({"error": str(exc)}).encode()
        head = (
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode() + body)
        except OSError:
            pass  # gone already
