"""The relay: admission queue, then one upstream stream, turned into SSE frames or Ollama-native NDJSON.

``Relay`` owns everything a request holds (its admission ticket, the upstream stream, its stats); its
``close`` releases all of it and is called from the ``finally`` of the response generator, which runs when the
stream ends, when the client leaves (the next write fails) and when the worker stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
import requests
from flask import Response, request

from . import lifecycle, sse
from .config import Settings, get_settings
from .errors import ApiError, error_response
from .metrics import StreamStats
from .send_watch import WATCH
from .state.base import RETRY_AFTER_BUSY_S, Slots, Ticket
from .state.redis import unavailable_message
from .stream import HEARTBEAT, Failure, UpstreamStream
from .upstream import OllamaClient

# How long a request waits, before its stream starts, for Ollama to answer or refuse: a refused connection or an
# error status comes within milliseconds; a slow answer is a model loading, and heartbeats must flow meanwhile.
OPEN_WAIT_S = 0.25


@dataclass(frozen=True)
class Queued:
    """The request's place in the admission queue changed (1 = next)."""

    position: int
    active: int


class Relay:
    def __init__(
        self,
        client: OllamaClient,
        body: dict[str, Any],
        admission: Slots,
        ticket: Ticket,
        settings: Settings,
        stats: StreamStats,
    ) -> None:
        self._client = client
        self._body = body
        self._admission = admission
        self._ticket = ticket
        self._settings = settings
        self.stats = stats
        self.stream: UpstreamStream | None = None
        self.outcome = "client_left"  # what `close` records unless the stream got further
        self._closed = False

    def wait_for_slot(self) -> Iterator[Queued | object | Failure]:
        """While queued: ``Queued`` on every move, ``HEARTBEAT`` on silence; a ``Failure`` ends the wait."""
        ticket, heartbeat_s = self._ticket, self._settings.heartbeat_s
        deadline = ticket.created + self._settings.queue_timeout_s
        announced = 0
        with lifecycle.registered(ticket.changed.set):
            while not ticket.admitted:
                if lifecycle.stopping():
                    yield self._fail(Failure(lifecycle.RESTARTING, "shutdown"))
                    return
                if time.monotonic() >= deadline:
                    message = f"waited {self._settings.queue_timeout_s:g} s for a free slot; retry later"
                    yield self._fail(Failure(message, "queue_timeout", 503))
                    return
                try:  # the queue is in Redis, and Redis went away: an in-band error, not an exception mid-stream
                    if ticket.position != announced:
                        announced = ticket.position
                        yield Queued(ticket.position, self._admission.active)
                    changed = self._admission.wait(ticket, min(heartbeat_s, max(deadline - time.monotonic(), 0)))
                except redis.RedisError as exc:
                    yield self._fail(Failure(unavailable_message(exc), "shared_state", 503))
                    return
                if not changed:
                    yield HEARTBEAT
        self.stats.admitted(ticket.queue_wait_s)

    def open_if_admitted(self, wait_s: float = OPEN_WAIT_S) -> None:
        """With a slot free at once, open the upstream request now and wait up to ``wait_s`` for its headers: what
        Ollama says that quickly (refused, the model missing, a 5xx) is then the request's own status, raised as
        ``ApiError`` before any stream starts. A model still loading just takes longer: the stream goes ahead."""
        if not self._ticket.admitted:
            return
        stream = self.start()
        stream.headers_received.wait(wait_s)
        failure = stream.first_failure
        if failure is not None:
            self.outcome = failure.kind
            self.close()
            raise ApiError(failure.status or 502, failure.message)

    def start(self) -> UpstreamStream:
        """Open the upstream request (in its own greenlet); call once admitted."""
        settings = self._settings
        self.stream = UpstreamStream(
            self._client, self._body, settings.heartbeat_s, settings.stream_buffer_bytes, self._upstream_ended
        )
        return self.stream

    def fetch_whole(self) -> requests.Response:
        """``stream: false``: one blocking request (once admitted); Ollama's status and body as they are."""
        response = self._client.request("POST", "/api/chat", self._body)
        self.outcome = "done" if response.status_code == 200 else "status"
        return response

    def events(self) -> Iterator[Queued | object | bytes | Failure]:
        """The whole life: queue positions, then upstream lines; heartbeats throughout; at most one Failure."""
        for event in self.wait_for_slot():
            yield event
            if isinstance(event, Failure):
                return
        stream = self.stream or self.start()
        for event in stream.events():
            if isinstance(event, bytes):
                if not stream.done:  # the final line carries statistics, not a token
                    self.stats.token()
            elif isinstance(event, Failure):
                self._fail(event)
            yield event
        if stream.done:
            self.outcome = "done"

    def _fail(self, failure: Failure) -> Failure:
        self.outcome = failure.kind
        return failure

    def cut(self) -> None:
        """The client accepted nothing for too long and is being cut off (``send_watch``)."""
        self.outcome = "slow_client"

    def _upstream_ended(self) -> None:
        """Ollama's part is over (done, failed, or stopped): its slot goes to the next request now, however much
        of the answer the client still has to read."""
        self._admission.release(self._ticket)

    def close(self) -> None:
        """Release everything: upstream connection (Ollama stops generating), slot or queue place, stats.

        Idempotent: the generator's ``finally`` calls it, and so does the response's close as a backstop.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.stream is not None:
                self.stream.close()
        finally:
            self._admission.release(self._ticket)
            self.stats.finish(self.outcome)


class _Body:
    """A streaming body the WSGI server iterates as it is.

    With ``direct_passthrough`` werkzeug hands this object straight to gunicorn instead of wrapping every chunk
    in two more generators (a tenth of the relay's CPU per token). gunicorn iterates ``chunks`` itself and calls
    ``close`` in every case, also when iteration never started: that closes the generator (its ``finally``
    runs) and then calls ``on_close``, the backstop for a generator that never ran.
    """

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None] | None) -> None:
        self._chunks = chunks
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if self._on_close is not None:
                self._on_close()


def streaming_response(
    chunks: Iterator[bytes],
    on_close: Callable[[], None] | None = None,
    on_cut: Callable[[], None] = lambda: None,
    **kwargs: Any,
) -> Response:
    """A ``Response`` that streams ``chunks`` (bytes, sent as they are yielded) and then calls ``on_close``.

    Under gunicorn a client that accepts nothing for ``CLAWWEB_SEND_TIMEOUT_S`` is cut (``on_cut`` says so)."""
    timeout_s = get_settings().send_timeout_s
    if timeout_s and "gunicorn.socket" in request.environ:
        chunks = WATCH.watch(chunks, timeout_s, on_cut)
    return Response(_Body(chunks, on_close), direct_passthrough=True, **kwargs)


def sse_response(relay: Relay) -> Response:
    return streaming_response(sse_events(relay), relay.close, relay.cut, headers=sse.HEADERS)


def sse_events(relay: Relay) -> Iterator[bytes]:
    """``id: N`` + ``data: <line>`` per upstream line, ``event: queued`` while waiting, ``event: error`` last."""
    try:
        yield sse.OPENING
        seq = 0
        for event in relay.events():
            if isinstance(event, bytes):
                seq += 1
                yield sse.line_frame(event, seq)
            elif event is HEARTBEAT:
                yield sse.HEARTBEAT
            elif isinstance(event, Queued):
                yield sse.json_frame({"position": event.position, "active": event.active}, event="queued")
            elif isinstance(event, Failure):
                yield sse.json_frame({"error": event.message}, event="error")
    finally:
        relay.close()


def ndjson_lines(relay: Relay) -> Iterator[bytes]:
    """Ollama-native: the upstream bytes unchanged; a late failure as an ``{"error": ...}`` line, as Ollama does."""
    try:
        for event in relay.events():
            if isinstance(event, bytes):
                yield event + b"\n"
            elif isinstance(event, Failure):
                yield json.dumps({"error": event.message}).encode() + b"\n"
            # HEARTBEAT: NDJSON has no comment syntax, and a blank line breaks Ollama's clients.
    finally:
        relay.close()


def native_response(relay: Relay, stream: bool) -> Response:
    """Ollama-native answer: NDJSON clients wait in the queue silently, then get Ollama's status and body."""
    handed_over = False
    try:
        for event in relay.wait_for_slot():
            if isinstance(event, Failure):
                return error_response(event.status or 503, event.message, {"Retry-After": str(RETRY_AFTER_BUSY_S)})
        if not stream:
            upstream = relay.fetch_whole()
            return Response(upstream.content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))
        # Ollama's status is only known once the model is loaded and the first token exists: wait for it.
        started = relay.stream or relay.start()
        started.headers_received.wait()
        failure = started.first_failure
        if failure is not None:
            relay.outcome = failure.kind
            if failure.body:
                return Response(failure.body, failure.status, content_type="application/json; charset=utf-8")
            return error_response(failure.status or 502, failure.message)
        handed_over = True
        return streaming_response(ndjson_lines(relay), relay.close, relay.cut, content_type="application/x-ndjson")
    finally:
        if not handed_over:
            relay.close()
