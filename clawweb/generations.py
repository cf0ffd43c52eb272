"""Generations: one answer, run in its own greenlet into an event log that readers follow.

The answer does not belong to a connection. Any number of readers (tabs, devices) follow the log; a reader
that reconnects with ``Last-Event-ID`` (or ``?after=``) gets exactly the events it missed. When the last reader
leaves, the answer still finishes and is stored (or is cancelled after ``CLAWWEB_CANCEL_WITHOUT_READERS_S``).
Finished logs stay for ``CLAWWEB_GENERATION_TTL_S`` so late readers get the end, then they are freed.

In one process the log is in memory. With ``CLAWWEB_REDIS_URL`` it is a Redis Stream and the generation's state
a Redis hash, so any worker or host can follow it (``RemoteGeneration``) or stop it (a published message to the
process that runs it).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import gevent
import redis

from . import sse
from .eventlog import FINAL_EVENTS, EventLog, MemoryLog
from .redislog import Flusher, RedisLog
from .relay import Queued, Relay
from .shared import PREFIX, Bus
from .storage import Store
from .stream import CLOSED_EARLY, Failure

log = logging.getLogger("gunicorn.error")

RETRY_MS = 2000  # EventSource reconnect delay after a dropped connection
# What ``new_id`` makes. Anything else names no generation, and must not reach Redis, where the id becomes part
# of a key: ``<id>:log`` would name the event log stream, not a generation's hash.
_ID = re.compile(r"[0-9a-f]{16}")


def new_id() -> str:
    return secrets.token_hex(8)


class Stopped(Exception):
    """Raised inside a generation's greenlet by ``stop()``."""


def split_thinking(content: str) -> tuple[str, str]:
    """(thinking, answer) for models that put ``<think>...</think>`` inside the content (Ollama before 0.9)."""
    stripped = content.lstrip()
    if not stripped.startswith("<think>"):
        return "", content
    thinking, closed, answer = stripped[len("<think>") :].partition("</think>")
    return thinking.strip(), answer.lstrip() if closed else ""


def sse_follow(log: EventLog, after: str, heartbeat_s: float) -> Iterator[bytes]:
    """SSE for one reader: every event after ``after``, then live ones; ends after the final event."""
    yield b"retry: %d\n" % RETRY_MS + sse.OPENING
    for entry in log.follow(after, heartbeat_s):
        if entry is None:
            yield sse.HEARTBEAT
        else:
            entry_id, event, data = entry
            yield sse.frame(data, event=event, id=entry_id)


class _Answer:
    """What a reader sees of an answer, whichever process runs it."""

    id: str
    conversation_id: str
    message_id: int
    status: str
    log: EventLog
    _registry: Generations

    @property
    def last_event_id(self) -> str:
        return self.log.last_id

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "status": self.status,
            "last_event_id": self.last_event_id,
            "events_url": f"/api/generations/{self.id}/events",
        }

    def follow(self, after: str, heartbeat_s: float) -> Iterator[bytes]:
        return self._registry.counted(self.id, sse_follow(self.log, after, heartbeat_s))


class Generation(_Answer):
    """An answer running in this process."""

    def __init__(
        self,
        registry: Generations,
        conversation_id: str,
        owner: int | None,
        message_id: int,
        relay: Relay,
    ) -> None:
        self.id = new_id()
        self.conversation_id = conversation_id
        self.owner = owner  # the user id, None in open mode: only the owner can follow or stop it
        self.message_id = message_id
        self.status = "queued"  # queued | streaming | done | stopped | error
        self.finished = False
        self.abandoned = False  # only an answer of another process can be
        self._registry = registry
        self.log = registry.new_log(self.id)
        self._relay = relay
        self._finalizing = False
        registry.publish(self)
        self._greenlet = gevent.spawn(self._run)

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
                    if self.status != "streaming":
                        self.status = "streaming"
                        self._registry.publish(self)
                    message = chunk.get("message") or {}
                    content.append(message.get("content") or "")
                    thinking.append(message.get("thinking") or "")
                    self.log.append("token", event)
                elif isinstance(event, Queued):
                    position = {"position": event.position, "active": event.active}
                    self.log.append("queued", json.dumps(position).encode())
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
        message = self._registry.store.finish_message(
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
        self.log.append(status, json.dumps(payload).encode())
        self.finished = True
        self._registry.finished(self)

    def stop(self) -> None:
        """Stop the answer now: the upstream request is closed and the partial answer stored as stopped."""
        if not self._finalizing:
            self._greenlet.kill(Stopped, block=True, timeout=5)

    def join(self, timeout: float | None = None) -> None:
        self._greenlet.join(timeout)


class RemoteGeneration(_Answer):
    """An answer another worker or host runs, seen through Redis."""

    def __init__(
        self, registry: Generations, generation_id: str, state: dict[bytes, bytes], abandoned: bool = False
    ) -> None:
        """``abandoned``: not finished, but its process stopped renewing it (killed): it will never finish."""
        self.id = generation_id
        self.conversation_id = state[b"conversation_id"].decode()
        self.owner = int(state[b"owner"]) if state[b"owner"] else None
        self.message_id = int(state[b"message_id"])
        self.abandoned = abandoned
        self.status = "error" if abandoned else state[b"status"].decode()
        self.finished = self.status in FINAL_EVENTS
        self._registry = registry
        self.log = registry.new_log(generation_id, writer=False)

    def stop(self) -> None:
        """Ask the process that runs it to stop it, and wait (a few seconds at most) until it has."""
        self._registry.bus().publish("stop", self.id)
        deadline = time.monotonic() + 5
        while not self.finished and time.monotonic() < deadline:
            gevent.sleep(0.05)
            seen = self._registry.get(self.id)
            self.status, self.finished = (seen.status, seen.finished) if seen else ("stopped", True)


AnyGeneration = Generation | RemoteGeneration


class Generations:
    """The generations this process runs (and the finished ones until their log expires); with Redis, also
    those of every other process."""

    LIVE_TTL_S = 6 * 3600  # Redis state of a running answer outlives any answer; a crash leaves no garbage

    def __init__(
        self,
        store: Store,
        ttl_s: float,
        cancel_without_readers_s: float,
        client: redis.Redis | None = None,
        bus: Bus | None = None,
        lease_s: float = 45.0,
    ) -> None:
        """``lease_s``: with Redis, how long a running answer stays "running" for the other processes after the
        process that runs it last renewed it (every third of that): a killed worker's answer is known dead then."""
        self.store = store
        self._ttl_s = ttl_s
        self._cancel_without_readers_s = cancel_without_readers_s
        self._redis = client
        self._bus = bus
        self._flusher = Flusher(client) if client is not None else None
        self.lease_s = lease_s
        self._renewer: gevent.Greenlet[[], None] | None = None
        self._by_id: dict[str, Generation] = {}
        self._readers: dict[str, int] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        if bus is not None:
            bus.subscribe("stop", self._stop_requested)

    def __len__(self) -> int:
        return len(self._by_id)

    def bus(self) -> Bus:
        assert self._bus is not None
        return self._bus

    def new_log(self, generation_id: str, writer: bool = True) -> EventLog:
        if self._redis is None:
            return MemoryLog()
        key = f"{PREFIX}gen:{generation_id}:log"
        return RedisLog(self._redis, key, self._ttl_s, self._flusher if writer else None)

    def start(self, conversation_id: str, owner: int | None, message_id: int, relay: Relay) -> Generation:
        if self._bus is not None:
            self._bus.start()
        if self._redis is not None and self._renewer is None:
            self._renewer = gevent.spawn(self._renew_leases)
        generation = Generation(self, conversation_id, owner, message_id, relay)
        self._by_id[generation.id] = generation
        if self._cancel_without_readers_s:
            gevent.spawn(self._cancel_if_unread, generation)
        return generation

    def get(self, generation_id: str) -> AnyGeneration | None:
        if not _ID.fullmatch(generation_id):
            return None
        self.sweep()
        local = self._by_id.get(generation_id)
        if local is not None or self._redis is None:
            return local
        state: Any = self._redis.hgetall(f"{PREFIX}gen:{generation_id}")
        if b"conversation_id" not in state:
            return None
        running: Any = self._redis.get(f"{PREFIX}conv:{state[b'conversation_id'].decode()}:running")
        alive = state[b"status"].decode() in FINAL_EVENTS or running == generation_id.encode()
        return RemoteGeneration(self, generation_id, state, abandoned=not alive)

    def running_for(self, conversation_id: str) -> AnyGeneration | None:
        local = next((g for g in self._by_id.values() if g.conversation_id == conversation_id and not g.finished), None)
        if local is not None or self._redis is None:
            return local
        running: Any = self._redis.get(f"{PREFIX}conv:{conversation_id}:running")
        found = self.get(running.decode()) if running else None
        return found if found is not None and not found.finished else None

    def publish(self, generation: Generation) -> None:
        """Make the generation's state visible to the other processes (with Redis; else nothing to do)."""
        if self._redis is None:
            return
        ttl = self._ttl_s if generation.finished else self.LIVE_TTL_S
        key, running = f"{PREFIX}gen:{generation.id}", f"{PREFIX}conv:{generation.conversation_id}:running"
        pipe = self._redis.pipeline()
        state = {
            "conversation_id": generation.conversation_id,
            "owner": "" if generation.owner is None else str(generation.owner),
            "message_id": str(generation.message_id),
            "status": generation.status,
        }
        pipe.hset(key, mapping=cast(Any, state))
        pipe.expire(key, int(ttl) + 1)
        if generation.finished:
            pipe.delete(running)
        else:
            pipe.set(running, generation.id, px=int(self.lease_s * 1000))
        pipe.execute()

    def _renew_leases(self) -> None:
        """Keep this process's running answers "running" for the others; if it dies, their leases run out."""
        assert self._redis is not None
        while True:
            gevent.sleep(self.lease_s / 3)
            live = [g for g in self._by_id.values() if not g.finished]
            if not live:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for generation in live:
                key = f"{PREFIX}conv:{generation.conversation_id}:running"
                pipe.set(key, generation.id, px=int(self.lease_s * 1000))
            try:
                pipe.execute()
            except redis.RedisError as exc:  # the next round tries again, within the lease
                log.warning("redis: renewing %d answers' leases: %s", len(live), exc)

    def finished(self, generation: Generation) -> None:
        self.publish(generation)
        self._expiry.append((time.monotonic() + self._ttl_s, generation.id))
        self.sweep()

    def sweep(self) -> None:
        """Free the logs of generations that finished more than ``ttl_s`` ago (oldest first: O(expired))."""
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            self._by_id.pop(self._expiry.popleft()[1], None)

    def counted(self, generation_id: str, frames: Iterator[bytes]) -> Iterator[bytes]:
        """``frames``, while counting the reader (in Redis, so that readers on other processes count too)."""
        self._reading(generation_id, 1)
        try:
            yield from frames
        finally:
            self._reading(generation_id, -1)

    def _reading(self, generation_id: str, change: int) -> None:
        if self._redis is not None:
            key = f"{PREFIX}gen:{generation_id}:readers"  # its own key: a late reader must not recreate the state
            pipe = self._redis.pipeline()
            pipe.incrby(key, change)
            pipe.expire(key, self.LIVE_TTL_S)
            pipe.execute()
        self._readers[generation_id] = self._readers.get(generation_id, 0) + change
        if not self._readers[generation_id]:
            del self._readers[generation_id]

    def readers(self, generation_id: str) -> int:
        if self._redis is not None:
            return int(self._redis.get(f"{PREFIX}gen:{generation_id}:readers") or 0)
        return self._readers.get(generation_id, 0)

    def _stop_requested(self, generation_id: str) -> None:
        local = self._by_id.get(generation_id)
        if local is not None:
            gevent.spawn(local.stop)  # not in the subscriber: stopping waits for the answer to be stored

    def _cancel_if_unread(self, generation: Generation) -> None:
        """Opt-in: stop an answer nobody has read for ``cancel_without_readers_s`` (frees the GPU)."""
        unread_since = time.monotonic()
        while not generation.finished:
            gevent.sleep(min(1.0, self._cancel_without_readers_s))
            if self.readers(generation.id):
                unread_since = time.monotonic()
            elif time.monotonic() - unread_since >= self._cancel_without_readers_s:
                generation.stop()
                return
