"""One upstream ``/api/chat`` stream: opened and read up to its first line in a greenlet of its own, then read by the
response generator itself.

Why a greenlet and a queue first: Ollama sends nothing, not even headers, until the model is loaded and the first
token exists. If the response generator blocked on that read, it could neither write heartbeats nor notice that
its client left. With the read elsewhere, the generator wakes at least every heartbeat, writes, and a failed write
closes it; its ``finally`` then kills the reader, which closes the upstream socket, which is what makes Ollama stop
generating.

Why not for every token: handing each line from one greenlet to another costs two more greenlet switches and a
hub callback per token, and the socket's own read timeout arms and cancels a timer on every read; together they
were a third of the relay's CPU per token (measured against bench/naive.py). Once tokens flow, the generator reads
the lines itself, as the naive relay does, and one timer per stream watches for silence (``CLAWWEB_READ_TIMEOUT_S``)
instead. Two cases go back to a reader greenlet and the queue: a client that falls behind (``read_ahead``: the
reader reads on into a bounded buffer, so that Ollama's part, and its slot, end whatever the client's pace), and a
host that fails once tokens have flowed: with several hosts the answer continues on another (``continuation``):
the reader keeps the lines relayed, sends them on as the text so far, and hands the next host's lines over again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Literal, Protocol, assert_never

import gevent
import gevent.event
import gevent.queue
import requests
from urllib3.exceptions import ReadTimeoutError

from .. import lifecycle
from ..metrics import FAILOVERS
from ..upstream.affinity import Result
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


@dataclass(frozen=True)
class _HandOver:
    """After a host's first line: the rest of its lines, for the generator to read itself."""

    lines: Iterator[bytes]
    sent_at: float  # when that host was sent the request


class _Interrupted(BaseException):
    """Thrown into the generator while it waits on an upstream read: the host was silent for the read timeout, or
    the worker is stopping. (A BaseException, like gevent's Timeout: nothing between catches it by accident.)"""

    def __init__(self, why: Literal["timeout", "shutdown"]) -> None:
        super().__init__(why)
        self.why = why


_Item = UpstreamEvent | _End | _HandOver


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
        """``buffer_bytes``: how much of the answer may wait here for a slow client (``read_ahead``); beyond it
        reading pauses (memory stays bounded; Ollama then waits too). ``on_end``: called once the upstream response
        is over, however much of it the client has still to read. ``progress``: says what the request waits for
        before its first line (``Status`` events). ``conversation``: the chat page's, for affinity."""
        self._client, self._path, self._body = client, path, body
        self._queue: _Queue = gevent.queue.Queue()
        self._buffered = 0  # bytes of lines read from upstream and not yet taken by ``events``
        self._buffer_bytes = buffer_bytes
        self._drained = gevent.event.Event()
        self._paused = False
        self._on_end = on_end
        self._upstream_over = False
        self._opened: Opened | None = None  # the response, and the host it counts against until closed
        self._read_timeout_s = client.read_timeout_s
        self.headers_received = gevent.event.Event()  # set when Ollama answered (or failed)
        self.first_failure: Failure | None = None
        self.done = False
        self.host: Host | None = None  # the host that answers (the last one, after a failover)
        self.affinity: Result = "none"  # what conversation affinity made of the first host's choice
        self._conversation = conversation
        self.failovers = 0  # hosts that failed midway and were left for another
        self._progress = progress
        self._begun = False  # a line was read: from then on the lines say what happens
        # Heartbeats come from one repeating timer rather than a timeout on every queue wait, which would arm and
        # cancel a timer per token (a tenth of the relay's CPU). A tick with no line since the previous one puts a
        # heartbeat, so silence gets one after between one and two intervals.
        self._heard = False
        self._ticker = gevent.get_hub().loop.timer(heartbeat_s, heartbeat_s)
        self._ticker.start(self._tick)
        # While the generator reads the lines itself (``_read_directly``): what it reads, whether it waits on a read
        # now (only then may the silence watch or a shutdown interrupt it), and when it last got a line.
        self._direct: _HandOver | None = None
        self._consumer: Any = None  # the generator's greenlet
        self._reading = False
        self._heard_at = 0.0
        self._silence: Any = None  # the silence watch's timer
        self._stopping = False
        # Mid-answer failover (several hosts only): the lines relayed so far, the hosts that failed this answer.
        self._kept: list[bytes] | None = [] if len(client.hosts) > 1 else None
        self._kept_before = 0  # lines relayed from the hosts before the current one
        self._failed_hosts: list[Host] = []
        self._splice: Splice | None = None  # set once a host failed: the done line's counters add its part
        self._first_at = self._last_heard_at = time.monotonic()
        self._greenlet = gevent.spawn(self._open)

    def _tick(self) -> None:
        if not self._heard and self._direct is None:
            self._queue.put(Heartbeat.BEAT)
        self._heard = False

    def _fail(self, failure: Failure) -> None:
        if not self.headers_received.is_set():
            self.first_failure = failure  # still reportable as a real HTTP status on the native path
        self._queue.put(failure)

    # --- the reader greenlet ------------------------------------------------------------------------------------------

    def _open(self) -> None:
        """The reader's first task: open the request (with several hosts, open_stream tries the next one while
        nothing has reached the client yet) and hand its lines over after the first."""
        handed_over = False
        try:
            sent_at = time.monotonic()
            self._opened = self._client.open_stream(self._path, self._body, self._sending, self._conversation)
            self.host, self.affinity, self._first_at = self._opened.host, self._opened.affinity, time.monotonic()
            response = self._opened.response
            if response.status_code != 200:
                self._fail(_status_failure(response))
                return
            self.headers_received.set()
            handed_over = self._pump(response.iter_lines(chunk_size=None), sent_at, hand_over=True)
        except OllamaUnreachable as exc:
            self._fail(Failure(exc.message, "unreachable", exc.status))
        except OllamaTimeout as exc:
            self._fail(Failure(exc.message, "timeout", exc.status))
        finally:
            self.headers_received.set()
            if self._progress is not None:
                self._progress.stop()
            if not handed_over:
                self._end_upstream()

    def _pump(self, lines: Iterator[bytes], sent_at: float, hand_over: bool) -> bool:
        """Read lines into the queue, with ``hand_over`` only up to each host's first; a host that fails once tokens
        have flowed is left for another that continues the answer (``_continue``). True once handed over."""
        while True:
            outcome = self._relay(lines, sent_at, hand_over)
            if isinstance(outcome, _HandOver):
                self._queue.put(outcome)
                return True
            if outcome is None:
                self._queue.put(_End.ENDED)
                return False
            continued = self._continue(outcome, sent_at)
            if continued is None:
                return False
            lines, sent_at = continued

    def _relay(self, lines: Iterator[bytes], sent_at: float, hand_over: bool) -> Failure | _HandOver | None:
        """Put one host's lines in the queue; with ``hand_over`` only the first, then the rest is the generator's to
        read (``_HandOver``). Else the failure that ended them early (connection closed or silent), or None (the done
        line came, or an error line that ``events`` reports)."""
        kept = self._kept
        try:
            for line in lines:
                if line:  # Ollama sends no blank lines; tolerate them anyway
                    self._heard = self._begun = True
                    self._buffered += len(line)
                    self._queue.put(line)
                    if kept is not None:
                        kept.append(line)
                    if hand_over:
                        return _HandOver(lines, sent_at)
                    if self._buffered > self._buffer_bytes:  # the client reads slower than Ollama writes
                        self._paused = True
                        self._drained.clear()
                        self._drained.wait()
        except requests.RequestException as exc:
            return self._broken(exc)
        return self._ended()

    def _broken(self, exc: requests.RequestException) -> Failure:
        """The failure a read raised: a timeout, or the connection closed."""
        if _is_timeout(exc):
            return self._timed_out()
        self._last_heard_at = time.monotonic()
        return Failure(CLOSED_EARLY, "closed", 502)

    def _timed_out(self) -> Failure:
        self._last_heard_at = time.monotonic() - self._read_timeout_s
        timeout = OllamaTimeout(self._read_timeout_s)  # the same message as a timeout before the headers
        return Failure(timeout.message, "timeout", timeout.status)

    def _ended(self) -> Failure | None:
        """The body ended: None when that is the answer's end as far as the reader can tell (one host: ``events``
        says what the end means; or the done or an error line came last), else the failure to continue from."""
        self._last_heard_at = time.monotonic()
        kept = self._kept
        if kept is None or (kept and classify(kept[-1]) != (False, None)):
            return None
        return Failure(CLOSED_EARLY, "closed", 502)

    def _continue(self, failure: Failure, sent_at: float) -> tuple[Iterator[bytes], float] | None:
        """The answer continued on another host after ``failure``: that host's lines and when it was sent; None once
        the failure is reported instead (one host, an answer that cannot be continued, no other host could)."""
        client, path, body = self._client, self._path, self._body
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
            self._opened = client.open_stream(
                path, sent, self._continuing, self._conversation, exclude=self._failed_hosts
            )
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

    def _resume(self, failure: Failure, sent_at: float) -> None:
        """The reader's task after the generator's own read failed midway: continue elsewhere, or report it."""
        handed_over = False
        try:
            continued = self._continue(failure, sent_at)
            if continued is not None:
                handed_over = self._pump(*continued, hand_over=True)
        finally:
            if not handed_over:
                self._end_upstream()

    def _read_on(self, lines: Iterator[bytes], sent_at: float) -> None:
        """The reader's task once the client fell behind: the rest of the answer into the queue (``read_ahead``)."""
        try:
            self._pump(lines, sent_at, hand_over=False)
        finally:
            self._end_upstream()

    def _finish(self, lines: Iterator[bytes]) -> None:
        """After the done line (or an error line) the generator read: the end of the body, so that the connection
        goes back to the pool, then Ollama's part is over."""
        try:
            for _ in lines:
                pass
        except requests.RequestException:
            pass
        finally:
            self._end_upstream()

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
        """Upstream is over: close its response (back to the pool, or Ollama stops) and tell the relay. Once."""
        if self._upstream_over:
            return
        self._upstream_over = True
        try:
            if self._opened is not None:
                self._opened.close()
            self._on_end()
        except Exception:  # a reader greenlet must not die with a traceback; the relay's close retries the release
            log.exception("ending an upstream stream")

    # --- the generator's side ---------------------------------------------------------------------------------------

    def _wake_for_shutdown(self) -> None:
        self._stopping = True
        self._queue.put(_End.SHUTDOWN)
        gevent.get_hub().loop.run_callback(self._interrupt, "shutdown")

    def _interrupt(self, why: Literal["timeout", "shutdown"]) -> None:
        """In the hub: end the generator's wait on an upstream read, if it is in one (at a ``yield`` it is not: the
        client's write is pending, and the next read checks ``_stopping``)."""
        if self._reading and self._consumer is not None:
            self._consumer.throw(_Interrupted(why))

    def _watch_silence(self, after_s: float) -> None:
        self._silence = gevent.get_hub().loop.timer(after_s)
        self._silence.start(self._check_silence)

    def _check_silence(self) -> None:
        """In the hub, once per read timeout while the generator reads: interrupt a read silent for that long."""
        if self._direct is None:
            return
        silent_s = time.monotonic() - self._heard_at
        if self._reading and silent_s >= self._read_timeout_s:
            self._interrupt("timeout")
        else:  # a line came meanwhile, or the generator is writing to its client: watch on
            self._watch_silence(max(self._read_timeout_s - silent_s, 0.0) if self._reading else self._read_timeout_s)

    def _socket_timeout(self, seconds: float | None) -> None:
        """The upstream socket's own read timeout: off while the generator reads (it would arm and cancel a timer on
        every read; the silence watch covers it), on while a reader greenlet does. A response without a real socket
        (tests' mocks) keeps whatever it has."""
        opened = self._opened
        connection = getattr(opened.response.raw, "connection", None) if opened is not None else None
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)

    def read_ahead(self) -> None:
        """The client fell behind (its writes wait: ``send_watch``): a reader greenlet reads on into the queue, up to
        ``buffer_bytes``, so that Ollama's part, and its slot, end whatever the client's pace. Only while the generator
        reads directly and sits at a ``yield`` (writing), never inside a read."""
        handover = self._direct
        if handover is None or self._reading:
            return
        self._direct = None
        self._socket_timeout(self._read_timeout_s)
        self._greenlet = gevent.spawn(self._read_on, handover.lines, handover.sent_at)

    def _last(self, line: bytes, message: str | None) -> UpstreamEvent:
        """The stream's last event, for the done line or (``message``) an error line."""
        if message is not None:
            return Failure(message, "error_line")
        self.done = True  # before it is yielded, so the relay can tell the final line apart
        return line if self._splice is None else self._splice.final(line)

    def _read_directly(self, handover: _HandOver) -> Generator[UpstreamEvent, None, bool]:
        """This host's lines after the first, read in the generator's own greenlet: True once the stream is over,
        False when the queue takes over again (the client fell behind, or the host failed and a reader continues
        the answer elsewhere or reports the failure)."""
        lines, kept = handover.lines, self._kept
        self._direct, self._consumer, self._heard_at = handover, gevent.getcurrent(), time.monotonic()
        self._socket_timeout(None)
        self._watch_silence(self._read_timeout_s)
        failure: Failure | None = None
        try:
            if self._stopping:
                raise _Interrupted("shutdown")
            self._reading = True
            for line in lines:
                self._reading = False
                if line:
                    self._heard_at = time.monotonic()
                    if kept is not None:
                        kept.append(line)
                    done, message = classify(line)
                    if message is not None or done:
                        self._direct = None
                        self._greenlet = gevent.spawn(self._finish, lines)
                        yield self._last(line, message)
                        return True
                    yield line
                    if self._direct is None:  # the client fell behind during that write: a reader reads ahead now
                        return False
                if self._stopping:
                    raise _Interrupted("shutdown")
                self._reading = True
            self._reading = False
            failure = self._ended() or Failure(CLOSED_EARLY, "closed")
        except requests.RequestException as exc:
            failure = self._broken(exc)
        except _Interrupted as interrupted:
            if interrupted.why == "shutdown":
                self._direct = None
                yield Failure(lifecycle.RESTARTING, "shutdown")
                return True
            failure = self._timed_out()
        finally:
            self._reading = False
            if self._silence is not None:
                self._silence.close()
        self._direct = None
        if kept is None:  # one host: nowhere to continue
            self._end_upstream()
            yield failure
            return True
        self._greenlet = gevent.spawn(self._resume, failure, handover.sent_at)
        return False

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
                    if message is not None or done:
                        yield self._last(item, message)
                        return
                    yield item
                    continue
                match item:
                    case _HandOver():
                        if (yield from self._read_directly(item)):
                            return
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
        if self._silence is not None:
            self._silence.close()
        if self._progress is not None:
            self._progress.stop()
        if self.done:
            # Let the reader consume the end of the chunked body so the connection goes back to the pool.
            self._greenlet.join(timeout=0.5)
        self._greenlet.kill(block=True, timeout=1)
        self._end_upstream()
