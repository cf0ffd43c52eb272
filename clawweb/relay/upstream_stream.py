"""One upstream ``/api/chat`` stream, read in its own greenlet and handed over line by line through a queue.

Why a greenlet and a queue: Ollama sends nothing, not even headers, until the model is loaded and the first
token exists. If the response generator blocked on that read, it could neither write heartbeats nor notice
that its client left. With the read elsewhere, the generator wakes at least every heartbeat, writes, and a
failed write closes it; its ``finally`` then kills the reader, which closes the upstream socket, which is what
makes Ollama stop generating.

With several hosts, a host that fails once tokens have flowed is left for another that continues the answer
(``continuation``): the reader keeps the lines it relayed, sends them on as the text so far, and the next host's
lines follow in the same queue.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from enum import Enum
from typing import Any, Protocol, assert_never

import gevent
import gevent.event
import gevent.queue
import requests
from urllib3.exceptions import ReadTimeoutError

from .. import lifecycle
from ..metrics import FAILOVERS
from ..upstream.client import OllamaClient
from ..upstream.errors import OllamaTimeout, OllamaUnreachable
from ..upstream.failover import Opened
from ..upstream.hosts import Host
from ..upstream.wire import ollama_error_text
from .continuation import Splice, after_thinking, continued_body, others
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
    ) -> None:
        """``buffer_bytes``: how much of the answer may wait here for a slow client; beyond it reading pauses
        (memory stays bounded; Ollama then waits too). ``on_end``: called in the reader once the upstream response
        is over, however much of it the client has still to read. ``progress``: says what the request waits for
        before its first line (``Status`` events)."""
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
        self.host: Host | None = None  # the host that answers (the last one, after a failover)
        self.failovers = 0  # hosts that failed midway and were left for another
        self._progress = progress
        self._begun = False  # a line was read: from then on the lines say what happens
        # Heartbeats come from one repeating timer rather than a timeout on every queue wait, which would arm and
        # cancel a timer per token (a tenth of the relay's CPU). A tick with no line since the previous one puts a
        # heartbeat, so silence gets one after between one and two intervals.
        self._heard = False
        self._ticker = gevent.get_hub().loop.timer(heartbeat_s, heartbeat_s)
        self._ticker.start(self._tick)
        # Mid-answer failover (several hosts only): the lines relayed so far, the hosts that failed this answer.
        self._kept: list[bytes] | None = [] if len(client.hosts) > 1 else None
        self._kept_before = 0  # lines relayed from the hosts before the current one
        self._failed_hosts: list[Host] = []
        self._splice: Splice | None = None  # set once a host failed: the done line's counters add its part
        self._first_at = self._last_heard_at = time.monotonic()
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
            # With several hosts, open_stream tries the next one while nothing has reached the client yet; once
            # tokens have flowed, a host that fails is left for another that continues the answer (``_continue``).
            sent_at = time.monotonic()
            self._opened = client.open_stream(path, body, self._sending)
            self.host, self._first_at = self._opened.host, time.monotonic()
            response = self._opened.response
            if response.status_code != 200:
                self._fail(_status_failure(response))
                return
            self.headers_received.set()
            lines: Iterator[bytes] = response.iter_lines(chunk_size=None)
            while True:
                failure = self._relay(lines)
                if failure is None:
                    break
                continued = self._continue(client, path, body, failure, sent_at)
                if continued is None:
                    return
                lines, sent_at = continued
            self._queue.put(_End.ENDED)
        except OllamaUnreachable as exc:
            self._fail(Failure(exc.message, "unreachable", exc.status))
        except OllamaTimeout as exc:
            self._fail(Failure(exc.message, "timeout", exc.status))
        finally:
            self.headers_received.set()
            if self._progress is not None:
                self._progress.stop()
            self._end_upstream()

    def _relay(self, lines: Iterator[bytes]) -> Failure | None:
        """Hand one host's lines over; the failure that ended them early (connection closed or silent), else None
        (the done line came, or an error line that ``events`` reports)."""
        kept = self._kept
        try:
            for line in lines:
                if line:  # Ollama sends no blank lines; tolerate them anyway
                    self._heard = self._begun = True
                    self._buffered += len(line)
                    self._queue.put(line)
                    if kept is not None:
                        kept.append(line)
                    if self._buffered > self._buffer_bytes:  # the client reads slower than Ollama writes
                        self._paused = True
                        self._drained.clear()
                        self._drained.wait()
        except requests.RequestException as exc:
            self._last_heard_at = time.monotonic()
            if _is_timeout(exc):
                self._last_heard_at -= self._read_timeout_s
                timeout = OllamaTimeout(self._read_timeout_s)  # the same message as a timeout before the headers
                return Failure(timeout.message, "timeout", timeout.status)
            return Failure(CLOSED_EARLY, "closed", 502)
        self._last_heard_at = time.monotonic()
        if kept is None or (kept and classify(kept[-1]) != (False, None)):
            return None  # one host (``events`` says what the end means), or the done or an error line came last
        return Failure(CLOSED_EARLY, "closed", 502)

    def _continue(
        self, client: OllamaClient, path: str, body: dict[str, Any], failure: Failure, sent_at: float
    ) -> tuple[Iterator[bytes], float] | None:
        """The answer continued on another host after ``failure``: that host's lines and when it was sent; None once
        the failure is reported instead (one host, an answer that cannot be continued, no other host could)."""
        kept, failed_host, opened = self._kept, self.host, self._opened
        plan = None if kept is None else continued_body(path, body, kept)
        if kept is None or plan is None:
            self._fail(failure)
            return None
        if failed_host is not None:
            self._failed_hosts.append(failed_host)
        self._splice = self._splice or Splice()
        self._splice.failed(len(kept) - self._kept_before, sent_at, self._first_at, self._last_heard_at)
        self._kept_before = len(kept)
        if opened is not None:
            self._opened = None
            opened.close()  # the failed host's connection, and its count
        where = (
            f"answer failed on {failed_host.label if failed_host else '?'} after {len(kept)} tokens ({failure.kind})"
        )
        if not others(client.hosts, str(body.get("model")), self._failed_hosts):
            self._give_up(failure, where)
            return None
        sent, fresh = plan
        sent_at = time.monotonic()
        try:
            self._opened = client.open_stream(path, sent, self._continuing, exclude=self._failed_hosts)
        except (OllamaUnreachable, OllamaTimeout) as exc:
            self._give_up(failure, where, exc.message)
            return None
        response = self._opened.response
        if response.status_code != 200:
            self._give_up(failure, where, _status_failure(response).message)
            return None
        self.host, self._first_at = self._opened.host, time.monotonic()
        self.failovers += 1
        FAILOVERS.labels("mid_answer", "continued").inc()
        fresh_note = " (thinking afresh, not relayed)" if fresh else ""
        log.warning("%s; continuing on %s%s", where, self.host.label if self.host else "?", fresh_note)
        lines: Iterator[bytes] = response.iter_lines(chunk_size=None)
        return (after_thinking(lines) if fresh else lines), sent_at

    def _give_up(self, failure: Failure, where: str, attempt: str | None = None) -> None:
        """No host can continue the answer: the failure is reported, with what the attempt on another got."""
        FAILOVERS.labels("mid_answer", "no_host").inc()
        log.warning("%s; not continued: %s", where, attempt or "no other host lists the model")
        if attempt is not None:
            failure = replace(failure, message=f"{failure.message}; no other host could continue it: {attempt}")
        self._fail(failure)

    def _continuing(self, host: Host) -> None:
        """The answer is about to be continued on ``host`` (again, if one fails before its first line)."""
        self._queue.put(Status("continuing", None, (("continuing_on", host.label),)))

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
                        yield item if self._splice is None else self._splice.final(item)
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
