"""Generations: one answer, run in its own greenlet into an in-memory event log that readers follow.

The answer does not belong to a connection. Any number of readers (tabs, devices) follow the log; a reader
that reconnects with ``Last-Event-ID`` (or ``?after=N``) gets exactly the events it missed. When the last reader
leaves, the answer still finishes and is stored (or is cancelled after ``CLAWWEB_CANCEL_WITHOUT_READERS_S``).
Finished logs stay for ``CLAWWEB_GENERATION_TTL_S`` so late readers get the end, then they are freed.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event

from . import sse
from .relay import Queued, Relay
from .storage import Store
from .stream import CLOSED_EARLY, Failure

RETRY_MS = 2000  # EventSource reconnect delay after a dropped connection


class Stopped(Exception):
    """Raised inside a generation's greenlet by ``stop()``."""


def split_thinking(content: str) -> tuple[str, str]:
    """(thinking, answer) for models that put ``<think>...</think>`` inside the content (Ollama before 0.9)."""
    stripped = content.lstrip()
    if not stripped.startswith("<think>"):
        return "", content
    thinking, closed, answer = stripped[len("<think>") :].partition("</think>")
    return thinking.strip(), answer.lstrip() if closed else ""


class Generation:
    def __init__(
        self, conversation_id: str, owner: int | None, message_id: int, relay: Relay, store: Store, on_finish: Any
    ) -> None:
        self.id = secrets.token_hex(8)
        self.conversation_id = conversation_id
        self.owner = owner  # the user id, None in open mode: only the owner can follow or stop it
        self.message_id = message_id
        self.status = "queued"  # queued | streaming | done | stopped | error
        self.finished = False
        self.readers = 0
        self._log: list[tuple[str, bytes]] = []  # (event type, data); the SSE id of entry i is i + 1
        self._tick = gevent.event.Event()  # replaced on every append; readers wait on the current one
        self._relay = relay
        self._store = store
        self._on_finish = on_finish
        self._finalizing = False
        self._greenlet = gevent.spawn(self._run)

    @property
    def last_event_id(self) -> int:
        return len(self._log)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "status": self.status,
            "last_event_id": self.last_event_id,
            "events_url": f"/api/generations/{self.id}/events",
        }

    def _append(self, event: str, data: bytes) -> None:
        self._log.append((event, data))
        tick, self._tick = self._tick, gevent.event.Event()
        tick.set()

    def _run(self) -> None:
        content: list[str] = []
        thinking: list[str] = []
        final: dict[str, Any] = {}
        status, error = "error", CLOSED_EARLY
        try:
            for event in self._relay.events():
                if isinstance(event, bytes):
                    chunk = json.loads(event)
                    if chunk.get("done"):
                        final, status, error = chunk, "done", ""
                        continue
                    self.status = "streaming"
                    message = chunk.get("message") or {}
                    content.append(message.get("content") or "")
                    thinking.append(message.get("thinking") or "")
                    self._append("token", event)
                elif isinstance(event, Queued):
                    self._append("queued", json.dumps({"position": event.position, "active": event.active}).encode())
                elif isinstance(event, Failure):
                    error = event.message
        except Stopped:
            status, error = "stopped", ""
        finally:
            self._finalizing = True
            self._relay.close()  # closes the upstream response: Ollama stops generating
            self._finish(status, error, "".join(content), "".join(thinking), final)

    def _finish(self, status: str, error: str, content: str, thinking: str, final: dict[str, Any]) -> None:
        if not thinking:
            thinking, content = split_thinking(content)
        stats = self._relay.stats
        ttft_ms = None if stats.first_token_at is None else round((stats.first_token_at - stats.started) * 1000, 1)
        tokens = final.get("eval_count", stats.tokens)
        rate = stats.tokens_per_s()
        if final.get("eval_count") and final.get("eval_duration"):
            rate = final["eval_count"] / final["eval_duration"] * 1e9
        message = self._store.finish_message(
            self.message_id,
            content=content,
            thinking=thinking,
            status=status,
            error=error or None,
            ttft_ms=ttft_ms,
            tokens=tokens,
            tokens_per_s=None if rate is None else round(rate, 2),
        )
        self.status = status
        payload: dict[str, Any] = {"message": message}
        if status == "error":
            payload["error"] = error
        self._append(status, json.dumps(payload).encode())
        self.finished = True
        self._on_finish(self)

    def stop(self) -> None:
        """Stop the answer now: the upstream request is closed and the partial answer stored as stopped."""
        if not self._finalizing:
            self._greenlet.kill(Stopped, block=True, timeout=5)

    def join(self, timeout: float | None = None) -> None:
        self._greenlet.join(timeout)

    def follow(self, after: int, heartbeat_s: float) -> Iterator[bytes]:
        """SSE for one reader: every event after id ``after``, then live ones; ends after the final event."""
        self.readers += 1
        try:
            yield b"retry: %d\n" % RETRY_MS + sse.OPENING
            sent = after
            while True:
                while sent < len(self._log):
                    event, data = self._log[sent]
                    sent += 1
                    yield sse.frame(data, event=event, id=sent)
                if self.finished:
                    return
                if not self._tick.wait(heartbeat_s) and sent == len(self._log):
                    yield sse.HEARTBEAT
        finally:
            self.readers -= 1


class Generations:
    """The live generations of this process, and the finished ones until their log expires."""

    def __init__(self, store: Store, ttl_s: float, cancel_without_readers_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._cancel_without_readers_s = cancel_without_readers_s
        self._by_id: dict[str, Generation] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, conversation_id: str, owner: int | None, message_id: int, relay: Relay) -> Generation:
        generation = Generation(conversation_id, owner, message_id, relay, self._store, self._finished)
        self._by_id[generation.id] = generation
        if self._cancel_without_readers_s:
            gevent.spawn(self._cancel_if_unread, generation)
        return generation

    def get(self, generation_id: str) -> Generation | None:
        self.sweep()
        return self._by_id.get(generation_id)

    def running_for(self, conversation_id: str) -> Generation | None:
        return next((g for g in self._by_id.values() if g.conversation_id == conversation_id and not g.finished), None)

    def _finished(self, generation: Generation) -> None:
        self._expiry.append((time.monotonic() + self._ttl_s, generation.id))
        self.sweep()

    def sweep(self) -> None:
        """Free the logs of generations that finished more than ``ttl_s`` ago (oldest first: O(expired))."""
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            self._by_id.pop(self._expiry.popleft()[1], None)

    def _cancel_if_unread(self, generation: Generation) -> None:
        """Opt-in: stop an answer nobody has read for ``cancel_without_readers_s`` (frees the GPU)."""
        unread_since = time.monotonic()
        while not generation.finished:
            gevent.sleep(min(1.0, self._cancel_without_readers_s))
            if generation.readers:
                unread_since = time.monotonic()
            elif time.monotonic() - unread_since >= self._cancel_without_readers_s:
                generation.stop()
                return
