"""The relay: admission queue, then one upstream stream, as one typed event stream.

``Relay`` owns everything a request holds (its admission ticket, the upstream stream, its stats); its
``close`` releases all of it and is called from the ``finally`` of the response generator, which runs when the
stream ends, when the client leaves (the next write fails) and when the worker stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, assert_never

import requests

from ..config import Settings
from ..errors import ApiError
from ..metrics import StreamStats
from ..state.base import Slots, Ticket
from ..upstream.client import OllamaClient
from ..upstream.wire import model_key
from .estimates import Estimates
from .events import Failure, Heartbeat, Outcome, Queued, RelayEvent, Status
from .progress import Progress
from .stages import Stages
from .upstream_stream import UpstreamStream
from .waiting import waiting

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
        estimates: Estimates,
        path: str = "/api/chat",
        conversation: str | None = None,
    ) -> None:
        """``conversation``: the chat page's conversation id, which routes its answers to one host (affinity)."""
        self._client = client
        self._conversation = conversation
        self.path = path  # /api/chat or /api/generate: their lines differ, the relay's handling does not
        self._body = body
        self._admission = admission
        self._ticket = ticket
        self._settings = settings
        self.stats = stats
        self._estimates = estimates
        self.stages = Stages(ticket.created)
        self.final: dict[str, Any] = {}  # Ollama's last line, parsed: its durations and counts
        self.stream: UpstreamStream | None = None
        self.outcome: Outcome = "client_left"  # what `close` records unless the stream got further
        self._closed = False
        self._told_position = 0  # the last position the client was told

    def wait_for_slot(self) -> Iterator[Queued | Status | Heartbeat | Failure]:
        """While queued: ``Queued`` and its ``Status`` on every move, a heartbeat on silence; a ``Failure`` ends the
        wait."""
        for event in waiting(self._admission, self._ticket, self._settings):
            yield event
            if isinstance(event, Queued):
                yield self._queued(event.position)
            elif isinstance(event, Failure):
                self._failed(event)
                return
        self.stats.admitted(self._ticket.queue_wait_s, self._ticket.lane)

    def _queued(self, position: int) -> Status:
        """The place in the queue; when it grew (someone in a higher lane arrived, or another user's turn came
        first), ``reason`` says why (lanes.py's names)."""
        eta_s = self._estimates.queue_s(position, self._admission.max_active)
        info: tuple[tuple[str, object], ...] = (("position", position), ("ahead", position - 1))
        if 0 < self._told_position < position and self._ticket.reason:
            info += (("reason", self._ticket.reason),)
        self._told_position = position
        status = Status("queued", eta_s, info)
        self.stages.enter(status)
        return status

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
        progress = Progress(self._client, self._body, self._estimates)
        self.stream = UpstreamStream(
            self._client,
            self.path,
            self._body,
            settings.heartbeat_s,
            settings.stream_buffer_bytes,
            self._upstream_ended,
            progress,
            self._conversation,
        )
        return self.stream

    def fetch_whole(self) -> requests.Response:
        """``stream: false``: one blocking request (once admitted); Ollama's status and body as they are."""
        opened = self._client.answer_whole(self.path, self._body)
        if opened.host is not None:
            self.stats.routed(opened.host.label, opened.affinity)
        opened.release()
        self.outcome = "done" if opened.response.status_code == 200 else "status"
        return opened.response

    def events(self) -> Iterator[RelayEvent]:
        """The whole life: queue positions, then upstream lines; heartbeats throughout; at most one Failure."""
        for queued in self.wait_for_slot():
            yield queued
            if isinstance(queued, Failure):
                return
        stream = self.stream or self.start()
        for event in stream.events():
            if isinstance(event, bytes):  # a token: first, outside the match (see the events module)
                if stream.done:  # the final line carries statistics, not a token
                    self._learn(event, stream)
                else:
                    self.stats.token()
                    now_doing = self.stages.token(event)
                    if now_doing is not None:
                        yield now_doing
                yield event
                continue
            match event:
                case Status():
                    if not self.stages.enter(event):
                        continue
                case Heartbeat.BEAT:
                    pass
                case Failure():
                    self._failed(event)
                case _:
                    assert_never(event)
            yield event
        if stream.done:
            self.outcome = "done"

    def _learn(self, line: bytes, stream: UpstreamStream) -> None:
        """From Ollama's last line: what the next answers' estimates go by."""
        try:
            final = json.loads(line)
        except ValueError:
            return
        self.final = final if isinstance(final, dict) else {}
        host, key, now = stream.host, model_key(str(self._body["model"])), time.monotonic()
        if host is None:
            return
        host.in_use(key, now)
        load_s = self.stages.load_s(self.final)
        if load_s is not None:
            self._estimates.loaded(host.label, key, load_s)
        count, duration = self.final.get("prompt_eval_count"), self.final.get("prompt_eval_duration")
        if isinstance(count, int) and isinstance(duration, int | float):
            self._estimates.read_prompt(host.label, key, count, duration / 1e9)
        if self._ticket.admitted_at is not None:
            self._estimates.answered(now - self._ticket.admitted_at)

    def figures(self) -> dict[str, float | int | None]:
        """What the answer's figures line shows and the message keeps: the wait in the queue, the model load, the
        first token counted from admission, the thinking, and the tokens (thinking ones included) and their rate."""
        stats, final, admitted_at = self.stats, self.final, self._ticket.admitted_at
        ended = stats.last_token_at or time.monotonic()
        first_ms = None
        if stats.first_token_at is not None and admitted_at is not None:
            first_ms = round((stats.first_token_at - admitted_at) * 1000, 1)
        tokens: int = max(final.get("eval_count") or 0, stats.tokens)
        rate = stats.tokens_per_s()
        if final.get("eval_count") and final.get("eval_duration") and final["eval_count"] >= stats.tokens:
            rate = final["eval_count"] / final["eval_duration"] * 1e9  # Ollama's own count covers every token
        load_s, thinking_s = self.stages.load_s(final), self.stages.thinking_s(ended)
        return {
            "queue_ms": round(self._ticket.queue_wait_s * 1000, 1) if admitted_at is not None else None,
            "load_ms": None if load_s is None else round(load_s * 1000, 1),
            "ttft_ms": first_ms,
            "thinking_ms": None if thinking_s is None else round(thinking_s * 1000, 1),
            "tokens": tokens or None,
            "tokens_per_s": None if rate is None else round(rate, 2),
        }

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

    def read_ahead(self) -> None:
        """The client fell behind (``send_watch``): read on from Ollama without waiting for it."""
        if self.stream is not None:
            self.stream.read_ahead()

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
                self.stats.failovers = self.stream.failovers
                if self.stream.host is not None:
                    self.stats.routed(self.stream.host.label, self.stream.affinity)
                self.stream.close()
        finally:
            self._admission.release(self._ticket)
            self.stages.finish(self.final, self._ticket.admitted_at, time.monotonic())
            self.stats.finish(self.outcome)
