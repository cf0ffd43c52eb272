"""One upstream ``/api/chat`` stream, read in its own greenlet and handed over line by line through a queue.

Why a greenlet and a queue: Ollama sends nothing, not even headers, until the model is loaded and the first
token exists. If the response generator blocked on that read, it could neither write heartbeats nor notice
that its client left. With the read elsewhere, the generator wakes at least every heartbeat, writes, and a
failed write closes it; its ``finally`` then kills the reader, which closes the upstream socket, which is what
makes Ollama stop generating.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any, Protocol, assert_never

import gevent
import gevent.event
import gevent.queue
import requests
from urllib3.exceptions import ReadTimeoutError

from .. import lifecycle
from ..upstream.affinity import Result
from ..upstream.client import OllamaClient
from ..upstream.errors import OllamaTimeout, OllamaUnreachable
from ..upstream.failover import Opened
from ..upstream.hosts import Host
from ..upstream.wire import ollama_error_text
from .events import Failure, Heartbeat, Status, UpstreamEvent
from .progress import Progress

log = logging.getLogger(__name__)

CLOSED_EARLY = "Ollama closed the stream before the answer was done"


class _End(Enum):
    """Why the reader's queue ends without a line or a failure of its own."""

    ENDED = "ended"  # upstream body finished (normally right after the done line)
    SHUTDOWN = "shutdown"  # the worker is stopping


_Item = UpstreamEvent | _End


class _Queue(Protocol):
    """The reader's ``gevent.queue.Queue`` as typed here (gevent has no type hints)."""

    def put(self, item: _Item) -> None: ...

    def get(self) -> _Item: ...


TOKEN_LINE_END = b'"done":false}'


def classify(line: bytes) -> tuple[bool, str | None]:
    """(is the final chunk, the message of an ``{"error": ...}`` line) for one upstream line.

    Ollama ends every token line with ``"done":false}`` (its field order, no spaces): seeing that is far cheaper
    than parsing JSON, and a line that ends so is never the last one. Any other line is parsed, so an upstream
    that writes ``"done": true`` (Python's json), orders fields otherwise or puts the error elsewhere is read
    right: the shortcut may only ever skip work, never decide wrongly.
    """
    if line.endswith(TOKEN_LINE_END) and not line.startswith(b'{"error"'):
        return False, None
    try:
        chunk = json.loads(line)
    except ValueError:
        return False, f"Ollama sent a line that is not JSON: {line[:80]!r}"
    if not isinstance(chunk, dict):
        return False, f"Ollama sent a line that is not a JSON object: {line[:80]!r}"
    if "error" in chunk:
        return False, str(chunk["error"])
    return chunk.get("done") is True, None


def _status_failure(response: requests.Response) -> Failure:
    body = response.content
    message = ollama_error_text(body)
    if message is None:
        message = f"Ollama answered HTTP {response.status_code}" + ("" if body else " with an empty body")
    return Failure(message, "status", response.status_code, body)


def _is_timeout(exc: requests.RequestException) -> bool:
    # requests re-raises a read timeout met while iterating the body as ConnectionError(ReadTimeoutError).
    return isinstance(exc, requests.Timeout) or any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


class UpstreamStream:
    """One upstream ``/api/chat`` or ``/api/generate`` request. ``events()`` yields lines, heartbeats and at most
    one final ``Failure``."""

    def __init__(
        self,
        client: OllamaClient,
        path: str,
        body: dict[str, Any],
        heartbeat_s: float,
        buffer_bytes: int,
        on_end: Callable[[], None],
        progress: Progress | None = None,
        conversation: str | None = None,
    ) -> None:
        """``buffer_bytes``: how much of the answer may wait here for a slow client; beyond it reading pauses
        (memory stays bounded; Ollama then waits too). ``on_end``: called in the reader once the upstream response
        is over, however much of it the client has still to read. ``progress``: says what the request waits for
        before its first line (``Status`` events). ``conversation``: the chat page's, for affinity."""
        self._queue: _Queue = gevent.queue.Queue()
        self._buffered = 0  # bytes of lines read from upstream and not yet taken by ``events``
        self._buffer_bytes = buffer_bytes
        self._drained = gevent.event.Event()
        self._paused = False
        self._on_end = on_end
        self._opened: Opened | None = None  # the response, and the host it counts against until closed
        self._read_timeout_s = client.read_timeout_s
        self.headers_received = gevent.event.Event()  # set when Ollama answered (or failed)
        self.first_failure: Failure | None = None
        self.done = False
        self.host: Host | None = None  # the host that answered
        self.affinity: Result = "none"  # and what conversation affinity made of that choice
        self._conversation = conversation
        self._progress = progress
        self._begun = False  # a line was read: from then on the lines say what happens
        # Heartbeats come from one repeating timer rather than a timeout on every queue wait, which would arm and
        # cancel a timer per token (a tenth of the relay's CPU). A tick with no line since the previous one puts a
        # heartbeat, so silence gets one after between one and two intervals.
        self._heard = False
        self._ticker = gevent.get_hub().loop.timer(heartbeat_s, heartbeat_s)
        self._ticker.start(self._tick)
        self._greenlet = gevent.spawn(self._read, client, path, body)

    def _tick(self) -> None:
        if not self._heard:
            self._queue.put(Heartbeat.BEAT)
        self._heard = False

    def _fail(self, failure: Failure) -> None:
        if not self.headers_received.is_set():
            self.first_failure = failure  # still reportable as a real HTTP status on the native path
        self._queue.put(failure)

    def _read(self, client: OllamaClient, path: str, body: dict[str, Any]) -> None:
        try:
            # With several hosts, open_stream tries the next one while nothing has reached the client yet; from the
            # first token on, a failure is reported in-band below and never retried (the client has text already).
            self._opened = client.open_stream(path, body, self._sending, self._conversation)
            self.host, self.affinity = self._opened.host, self._opened.affinity
            response = self._opened.response
            if response.status_code != 200:
                self._fail(_status_failure(response))
                return
            self.headers_received.set()
            for line in response.iter_lines(chunk_size=None):
                if line:  # Ollama sends no blank lines; tolerate them anyway
                    self._heard = self._begun = True
                    self._buffered += len(line)
                    self._queue.put(line)
                    if self._buffered > self._buffer_bytes:  # the client reads slower than Ollama writes
                        self._paused = True
                        self._drained.clear()
                        self._drained.wait()
            self._queue.put(_End.ENDED)
        except OllamaUnreachable as exc:
            self._fail(Failure(exc.message, "unreachable", exc.status))
        except OllamaTimeout as exc:
            self._fail(Failure(exc.message, "timeout", exc.status))
        except requests.RequestException as exc:
            if _is_timeout(exc):
                timeout = OllamaTimeout(self._read_timeout_s)  # the same message as a timeout before the headers
                self._fail(Failure(timeout.message, "timeout", timeout.status))
            else:
                self._fail(Failure(CLOSED_EARLY, "closed", 502))
        finally:
            self.headers_received.set()
            if self._progress is not None:
                self._progress.stop()
            self._end_upstream()

    def _sending(self, host: Host) -> None:
        if self._progress is not None:
            self._progress.sending(host, self._say)

    def _say(self, status: Status) -> bool:
        if self._begun:
            return False
        self._queue.put(status)
        return True

    def _end_upstream(self) -> None:
        """Upstream is over: close its response (back to the pool, or Ollama stops) and tell the relay."""
        try:
            if self._opened is not None:
                self._opened.close()
            self._on_end()
        except Exception:  # a reader greenlet must not die with a traceback; the relay's close retries the release
            log.exception("ending an upstream stream")

    def _wake_for_shutdown(self) -> None:
        self._queue.put(_End.SHUTDOWN)

    def events(self) -> Iterator[UpstreamEvent]:
        """Lines as they arrive; heartbeats while silent; ends after done or failure."""
        with lifecycle.registered(self._wake_for_shutdown):
            while True:
                item = self._queue.get()
                if isinstance(item, bytes):  # a line: first, outside the match (see the events module)
                    self._buffered -= len(item)
                    if self._paused and self._buffered <= self._buffer_bytes // 2:
                        self._paused = False
                        self._drained.set()
                    done, message = classify(item)
                    if message is not None:
                        yield Failure(message, "error_line")
                        return
                    if done:
                        self.done = True  # before the yield, so the relay can tell the final line apart
                        yield item
                        return
                    yield item
                    continue
                match item:
                    case Heartbeat.BEAT | Status():
                        yield item
                    case _End.ENDED:
                        yield Failure(CLOSED_EARLY, "closed")
                        return
                    case _End.SHUTDOWN:
                        yield Failure(lifecycle.RESTARTING, "shutdown")
                        return
                    case Failure():
                        yield item
                        return
                    case _:
                        assert_never(item)

    def close(self) -> None:
        """Stop reading and close the upstream connection. Safe to call twice and from ``finally``."""
        self._ticker.close()
        if self._progress is not None:
            self._progress.stop()
        if self.done:
            # Let the reader consume the end of the chunked body so the connection goes back to the pool.
            self._greenlet.join(timeout=0.5)
        self._greenlet.kill(block=True, timeout=1)
        if self._opened is not None:
            self._opened.close()
