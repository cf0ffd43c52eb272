"""The relay: admission queue, then one upstream stream, as one typed event stream.

``Relay`` owns everything a request holds (its admission ticket, the upstream stream, its stats); its
``close`` releases all of it and is called from the ``finally`` of the response generator, which runs when the
stream ends, when the client leaves (the next write fails) and when the worker stops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, assert_never

import redis
import requests

from .. import lifecycle
from ..config import Settings
from ..errors import ApiError
from ..metrics import StreamStats
from ..state.base import Slots, Ticket
from ..state.redis import unavailable_message
from ..upstream.client import OllamaClient
from .events import Failure, Heartbeat, Outcome, Queued, RelayEvent
from .upstream_stream import UpstreamStream

# How long a request waits, before its stream starts, for Ollama to answer or refuse: a refused connection or an
# error status comes within milliseconds; a slow answer is a model loading, and heartbeats must flow meanwhile.
OPEN_WAIT_S = 0.25


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
        self.outcome: Outcome = "client_left"  # what `close` records unless the stream got further
        self._closed = False

    def wait_for_slot(self) -> Iterator[Queued | Heartbeat | Failure]:
        """While queued: ``Queued`` on every move, a heartbeat on silence; a ``Failure`` ends the wait."""
        ticket, heartbeat_s = self._ticket, self._settings.heartbeat_s
        deadline = ticket.created + self._settings.queue_timeout_s
        announced = 0
        with lifecycle.registered(ticket.changed.set):
            while not ticket.admitted:
                if lifecycle.stopping():
                    yield self._failed(Failure(lifecycle.RESTARTING, "shutdown"))
                    return
                if time.monotonic() >= deadline:
                    message = f"waited {self._settings.queue_timeout_s:g} s for a free slot; retry later"
                    yield self._failed(Failure(message, "queue_timeout", 503))
                    return
                try:  # the queue is in Redis, and Redis went away: an in-band error, not an exception mid-stream
                    if ticket.position != announced:
                        announced = ticket.position
                        yield Queued(ticket.position, self._admission.active)
                    changed = self._admission.wait(ticket, min(heartbeat_s, max(deadline - time.monotonic(), 0)))
                except redis.RedisError as exc:
                    yield self._failed(Failure(unavailable_message(exc), "shared_state", 503))
                    return
                if not changed:
                    yield Heartbeat.BEAT
        self.stats.admitted(ticket.queue_wait_s)

    def wait_admitted(self) -> Failure | None:
        """Wait in the queue silently (clients of a whole answer or of Ollama's NDJSON have no way to be told
        their place): None once admitted, else the ``Failure`` that ended the wait."""
        for event in self.wait_for_slot():
            if isinstance(event, Failure):
                return event
        return None

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
            self.fail(failure.kind)
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

    def events(self) -> Iterator[RelayEvent]:
        """The whole life: queue positions, then upstream lines; heartbeats throughout; at most one Failure."""
        for waiting in self.wait_for_slot():
            yield waiting
            if isinstance(waiting, Failure):
                return
        stream = self.stream or self.start()
        for event in stream.events():
            if isinstance(event, bytes):  # a token: first, outside the match (see the events module)
                if not stream.done:  # the final line carries statistics, not a token
                    self.stats.token()
                yield event
                continue
            match event:
                case Heartbeat.BEAT:
                    pass
                case Failure():
                    self._failed(event)
                case _:
                    assert_never(event)
            yield event
        if stream.done:
            self.outcome = "done"

    def fail(self, outcome: Outcome) -> None:
        """Record how the request ended, when that is decided outside the event stream (a refusal before it
        starts, a failed whole answer); ``close`` reports it."""
        self.outcome = outcome

    def _failed(self, failure: Failure) -> Failure:
        self.fail(failure.kind)
        return failure

    def cut(self) -> None:
        """The client accepted nothing for too long and is being cut off (``send_watch``)."""
        self.fail("slow_client")

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
