"""Generations: one answer, run in its own greenlet into an event log that readers follow.

The answer does not belong to a connection. Any number of readers (tabs, devices) follow the log; a reader
that reconnects with ``Last-Event-ID`` (or ``?after=``) gets exactly the events it missed. When the last reader
leaves, the answer still finishes and is stored (or is cancelled after ``CLAWWEB_CANCEL_WITHOUT_READERS_S``).
Finished logs stay for ``CLAWWEB_GENERATION_TTL_S`` so late readers get the end, then they are freed.

The log and the directory that lists running answers are the shared state's (``state/``): in one process, memory;
with ``CLAWWEB_REDIS_URL``, Redis, so that any worker or host can follow an answer (``RemoteGeneration``) or stop it
(a message on the bus to the process that runs it).

Faults: ending an answer is a row of steps that each run whatever the one before did (a full disk, Redis away):
store it (retried in the background when that fails), write the final event (in memory first: readers in this
process always get it), bookkeeping, give the slot back. While it streams, the text so far is checkpointed to
the database about every ``CLAWWEB_CHECKPOINT_S`` (all answers in one transaction), so a killed worker loses at
most that much. With Redis the process running an answer renews its lease; when a process dies, whichever
other process notices first (a reader asking, or the lease round every process runs) ends its answers for
everyone: a final ``error`` entry in the log, and the exact text the log holds stored as interrupted.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, assert_never

import gevent

from ..outage import Outage
from ..relay import sse
from ..relay.events import Failure, Heartbeat, Queued, Status
from ..relay.relay import Relay
from ..relay.upstream_stream import CLOSED_EARLY
from ..state.base import Entry, Listed, LogLost, LogReader, LogUnavailable, LogWriter, State
from ..storage import FIGURES, INTERRUPTED, StorageUnavailable, Store
from . import feed

log = logging.getLogger(__name__)

# What ``new_id`` makes. Anything else names no generation, and must not reach Redis, where the id becomes part
# of a key: ``<id>:log`` would name the event log stream, not a generation's hash.
_ID = re.compile(r"[0-9a-f]{16}")


def new_id() -> str:
    return secrets.token_hex(8)


STORE_RETRY_S = 2.0  # an answer whose storing failed (a full disk) is tried again this often...
STORE_RETRY_FOR_S = 300.0  # ...for this long; then it is given up, logged


class Stopped(Exception):
    """Raised inside a generation's greenlet by ``stop()``."""


def split_thinking(content: str) -> tuple[str, str]:
    """(thinking, answer) for models that put ``<think>...</think>`` inside the content (Ollama before 0.9)."""
    stripped = content.lstrip()
    if not stripped.startswith("<think>"):
        return "", content
    thinking, closed, answer = stripped[len("<think>") :].partition("</think>")
    return thinking.strip(), answer.lstrip() if closed else ""


@dataclass(frozen=True)
class Resumed:
    """What a continued answer starts from: its stored text and figures (the new text and figures add to them)."""

    content: str
    thinking: str
    figures: dict[str, Any]  # storage.FIGURES

    @classmethod
    def of(cls, message: dict[str, Any]) -> Resumed:
        return cls(message["content"], message["thinking"], {name: message.get(name) for name in FIGURES})


def text_of(entries: Iterable[Entry]) -> tuple[str, str]:
    """(content, thinking) carried by an answer's ``continue`` entry (a continued answer's log starts with the
    text it continues) and ``token`` entries: exactly what its readers were shown."""
    content, thinking = [], []
    for _, event, data in entries:
        if event == "continue":
            start = json.loads(data)
            content.append(start.get("content") or "")
            thinking.append(start.get("thinking") or "")
        elif event == "token":
            message = json.loads(data).get("message") or {}
            content.append(message.get("content") or "")
            thinking.append(message.get("thinking") or "")
    return "".join(content), "".join(thinking)


def sse_follow(events: LogReader, after: str, heartbeat_s: float) -> Iterator[bytes]:
    """SSE for one reader: every event after ``after``, then live ones (``event: heartbeat`` during silences, which the
    page watches to tell a quiet stream from a dead one); ends after the final event, or with an ``event: error`` when
    it cannot go on (Redis failed, the log is lost)."""
    return sse.follow(
        events.follow(after, heartbeat_s),
        heartbeat=sse.HEARTBEAT_EVENT,
        failures=(LogLost, LogUnavailable, StorageUnavailable),
        failure_event="error",
    )


class _Answer:
    """What a reader sees of an answer, whichever process runs it."""

    id: str
    conversation_id: str
    message_id: int
    status: str
    log: LogReader
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
        resumed: Resumed | None = None,
    ) -> None:
        """``resumed``: the answer continues this stored text (Ollama was sent it as the last message)."""
        self.id = new_id()
        self.conversation_id = conversation_id
        self.owner = owner  # the user id, None in open mode: only the owner can follow or stop it
        self.message_id = message_id
        self.status = "queued"  # queued | streaming | done | stopped | error
        self.finished = False
        self.pieces = 0  # token chunks so far
        self.checkpointed = 0  # token chunks in the last checkpoint stored
        self._content: list[str] = [resumed.content] if resumed else []
        self._thinking: list[str] = [resumed.thinking] if resumed else []
        self._resumed = resumed
        self._registry = registry
        self.log: LogWriter = registry.logs.writer(self.id)
        if resumed is not None:  # first: a reader (and text_of) rebuilds the whole text from the log
            start = {"content": resumed.content, "thinking": resumed.thinking}
            self.log.append("continue", json.dumps(start).encode())
        self._relay = relay
        self._finalizing = False
        registry.publish(self)
        self._greenlet = gevent.spawn(self._run)

    def text(self) -> tuple[str, str]:
        """(content, thinking) so far. Joined once per call: the lists then hold one piece each, so the next
        checkpoint copies the text once more rather than joining every token again."""
        content, thinking = "".join(self._content), "".join(self._thinking)
        self._content, self._thinking = [content], [thinking]
        return content, thinking

    def _run(self) -> None:
        final: dict[str, Any] = {}
        status, error = "error", CLOSED_EARLY
        try:
            for event in self._relay.events():
                if isinstance(event, bytes):  # a token: first, outside the match (see relay.events)
                    chunk = json.loads(event)
                    if chunk.get("done"):
                        final, status, error = chunk, "done", ""
                        continue
                    if self.status != "streaming":
                        self.status = "streaming"
                        self._registry.publish(self)
                    message = chunk.get("message") or {}
                    self._content.append(message.get("content") or "")
                    self._thinking.append(message.get("thinking") or "")
                    self.pieces += 1
                    self.log.append("token", event)
                    continue
                match event:
                    case Queued(position=position, active=active):
                        self.log.append("queued", json.dumps({"position": position, "active": active}).encode())
                    case Status():
                        self.log.append("status", json.dumps(event.payload()).encode())
                    case Failure(message=message):
                        error = message
                    case Heartbeat.BEAT:
                        pass  # readers get their own heartbeats from the log
                    case _:
                        assert_never(event)
        except Stopped:
            status, error = "stopped", ""
        except Exception:  # a bug: the answer still ends, and says so
            log.exception("answer %s failed", self.id)
            status, error = "error", "internal error; the gateway log has the details"
        finally:
            self._finalizing = True
            self._end(status, error, final)

    def _end(self, status: str, error: str, final: dict[str, Any]) -> None:
        """Store, tell the readers, bookkeeping, give the slot back: each step runs whatever the one before did."""
        fields = self._final_fields(status, error, final)
        payload: dict[str, Any] = {}
        try:
            payload["message"] = self._registry.store.finish_message(self.message_id, **fields)
        except Exception as exc:  # a full disk, a removed database file: the answer still ends
            log.warning("answer %s (message %d) not stored: %s", self.id, self.message_id, exc)
            payload["message"] = {"id": self.message_id, "conversation_id": self.conversation_id, **fields}
            payload["warning"] = f"not saved yet ({exc}); the gateway keeps trying for a few minutes"
            store, message_id = self._registry.store, self.message_id
            self._registry.store_later(f"answer {self.id}", lambda: store.finish_message(message_id, **fields))
        self.status = status
        if status == "error":
            payload["error"] = error
        self.log.append(status, json.dumps(payload).encode())
        self.finished = True
        self._registry.finished(self)
        try:
            self._relay.close()  # closes the upstream response (Ollama stops generating), gives the slot back
        except Exception as exc:  # the admission's Redis is away: the slot's lease frees it
            log.warning("answer %s: giving back its slot: %s", self.id, exc)

    def _final_fields(self, status: str, error: str, final: dict[str, Any]) -> dict[str, Any]:
        content, thinking = self.text()
        if not thinking:
            thinking, content = split_thinking(content)
        figures = self._relay.figures()
        if self._resumed is not None:
            figures = _added(self._resumed.figures, figures)
        return {
            "content": content,
            "thinking": thinking,
            "status": status,
            "error": error or None,
            "done_reason": final.get("done_reason"),
            **figures,
        }

    def stop(self) -> None:
        """Stop the answer now: the upstream request is closed and the partial answer stored as stopped."""
        if not self._finalizing:
            self._greenlet.kill(Stopped, block=True, timeout=5)

    def join(self, timeout: float | None = None) -> None:
        self._greenlet.join(timeout)


def _added(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A continued answer's figures: the waits and the first token stay those of its first part (what its reader
    waited for first); tokens add up; the rate is all tokens over all generating time (the two rates' mean weighted
    by their tokens, harmonic: time is what adds up)."""
    added = {name: before[name] if before.get(name) is not None else after.get(name) for name in FIGURES}
    tokens, rate = after.get("tokens"), after.get("tokens_per_s")
    if not before.get("tokens"):
        return {**added, "tokens": tokens, "tokens_per_s": rate}
    added["tokens"] = total = before["tokens"] + (tokens or 0)
    if not tokens or not rate or not before.get("tokens_per_s"):  # one part's rate unknown: the other's
        added["tokens_per_s"] = before.get("tokens_per_s") or rate
    else:
        rate = total / (before["tokens"] / before["tokens_per_s"] + tokens / rate)
        added["tokens_per_s"] = round(rate, 2)
    return added


class RemoteGeneration(_Answer):
    """An answer another worker or host runs (or ran), seen through the shared state's directory."""

    def __init__(self, registry: Generations, listed: Listed) -> None:
        self.id = listed.id
        self.conversation_id = listed.conversation_id
        self.owner = listed.owner
        self.message_id = listed.message_id
        self.status = listed.status
        self.finished = listed.finished
        self._registry = registry
        self.log = registry.logs.reader(listed.id)

    def stop(self) -> None:
        """Ask the process that runs it to stop it, and wait (a few seconds at most) until it has."""
        self._registry.bus.publish("stop", self.id)
        deadline = time.monotonic() + 5
        while not self.finished and time.monotonic() < deadline:
            gevent.sleep(0.05)
            seen = self._registry.get(self.id)
            self.status, self.finished = (seen.status, seen.finished) if seen else ("stopped", True)


AnyGeneration = Generation | RemoteGeneration


class Generations:
    """The generations this process runs (and the finished ones until their log expires); through the shared
    state's directory, also those of every other process."""

    def __init__(
        self,
        store: Store,
        state: State,
        ttl_s: float,
        cancel_without_readers_s: float,
        checkpoint_s: float = 1.0,
    ) -> None:
        """``checkpoint_s``: how often the text of streaming answers is stored (0: only when they end)."""
        self.store = store
        self.logs = state.logs
        self.feeds = state.feeds
        self.bus = state.bus
        self._answers = state.answers
        self.lease_s = state.answers.lease_s
        self._ttl_s = ttl_s
        self._cancel_without_readers_s = cancel_without_readers_s
        self._checkpoint_s = checkpoint_s
        self._background = False
        self._by_id: dict[str, Generation] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self.bus.subscribe("stop", self._stop_requested)

    def __len__(self) -> int:
        return len(self._by_id)

    def start(
        self, conversation_id: str, owner: int | None, message_id: int, relay: Relay, resumed: Resumed | None = None
    ) -> Generation:
        self._start_background()
        generation = Generation(self, conversation_id, owner, message_id, relay, resumed)
        self._by_id[generation.id] = generation
        if self._cancel_without_readers_s:
            gevent.spawn(self._cancel_if_unread, generation)
        return generation

    def _start_background(self) -> None:
        """The checkpoint loop, the subscriber and the lease round: once, lazily (a process that never serves an
        answer never connects)."""
        if self._background:
            return
        self._background = True
        if self._checkpoint_s:
            gevent.spawn(self._checkpoint_loop)
        self.bus.start()
        self._answers.watch(self._by_id, self._end_abandoned)

    def get(self, generation_id: str) -> AnyGeneration | None:
        if not _ID.fullmatch(generation_id):
            return None
        self.sweep()
        local = self._by_id.get(generation_id)
        if local is not None:
            return local
        self._start_background()  # from now on this process also ends the answers of dead processes
        listed = self._answers.lookup(generation_id)
        if listed is None:
            return None
        if not listed.finished and not listed.held:  # its process stopped renewing it: it died
            listed = self._end_abandoned(listed)
        return RemoteGeneration(self, listed)

    def running_for(self, conversation_id: str) -> AnyGeneration | None:
        local = next((g for g in self._by_id.values() if g.conversation_id == conversation_id and not g.finished), None)
        if local is not None:
            return local
        running = self._answers.running(conversation_id)
        found = self.get(running) if running else None
        return found if found is not None and not found.finished else None

    def publish(self, generation: Generation) -> None:
        """Make the generation's state visible to the other processes. Never raises."""
        self._answers.publish(generation)

    def _end_abandoned(self, answer: Listed) -> Listed:
        """End, for everyone, an answer whose process stopped renewing its lease; its listing afterwards.

        The text is the log's (exactly what readers were shown), unless Redis lost the log's head (a restart):
        then the database's checkpoint, which it extends, is longer. If the dead process had stored the answer's
        end but not yet told Redis, that end is what readers get.
        """
        stored = self.store.message(answer.message_id) or {}
        if stored.get("conversation_id") != answer.conversation_id:
            # Not in this process's database: another installation shares the Redis (a different database, the
            # same keys). Its own processes end it; ending it here would overwrite an unrelated message.
            return answer
        content, thinking = text_of(self.logs.reader(answer.id).entries())
        if not content.startswith(stored.get("content") or ""):
            content, thinking = stored["content"], stored.get("thinking") or ""
        ended = stored.get("status") not in (None, "streaming") and stored.get("error") != INTERRUPTED
        if ended:
            status, message = str(stored["status"]), stored
        else:
            if not thinking:
                thinking, content = split_thinking(content)
            status = "error"
            message = {**stored, "content": content, "thinking": thinking, "status": status, "error": INTERRUPTED}
            # Stored before the final event is sent, so a reader who has it and reloads finds the same text. Every
            # process that notices writes the same text (the log's); a writer that was only late overwrites it
            # when it finishes.
            message_id = answer.message_id
            write = lambda: self.store.interrupt(message_id, content, thinking)  # noqa: E731
            self._store_now_or_later(f"interrupted answer {answer.id}", write)
        payload = {"message": message, **({"error": message["error"]} if status == "error" else {})}
        if self._answers.end_abandoned(answer, status, json.dumps(payload)) and not ended:
            log.warning("answer %s: its process stopped; interrupted at %d characters", answer.id, len(content))
        return self._answers.lookup(answer.id) or answer

    def _store_now_or_later(self, what: str, write: Callable[[], object]) -> None:
        try:
            write()
        except StorageUnavailable as exc:
            log.warning("%s not stored: %s", what, exc)
            self.store_later(what, write)

    def store_later(self, what: str, write: Callable[[], object]) -> None:
        """Try ``write`` again every ``STORE_RETRY_S`` for ``STORE_RETRY_FOR_S`` (a disk that filled up may have
        room again), then give up, logged."""

        def retry() -> None:
            deadline, last = time.monotonic() + STORE_RETRY_FOR_S, ""
            while time.monotonic() < deadline:
                gevent.sleep(STORE_RETRY_S)
                try:
                    write()
                except StorageUnavailable as exc:
                    last = str(exc)
                    continue
                log.warning("%s: stored after all", what)
                return
            log.error("%s: not stored, given up after %.0f s: %s", what, STORE_RETRY_FOR_S, last)

        gevent.spawn(retry)

    def _checkpoint_loop(self) -> None:
        """About every ``checkpoint_s``: the text so far of every answer that grew, in one transaction on the
        storage thread (the event loop only joins strings), so that a crash loses at most that interval."""
        outage = Outage("checkpointing answers")
        while True:
            gevent.sleep(self._checkpoint_s)
            grown = [g for g in self._by_id.values() if not g.finished and g.pieces > g.checkpointed]
            if not grown:
                continue
            marks = [(g, g.pieces) for g in grown]
            try:
                self.store.checkpoint({g.message_id: g.text() for g in grown})
            except StorageUnavailable as exc:  # a full disk: the next round tries again, with more text
                outage.failed(exc)
                continue
            outage.ok()
            for generation, pieces in marks:
                generation.checkpointed = pieces

    def finished(self, generation: Generation) -> None:
        self.publish(generation)
        feed.answer_ended(self.feeds, generation)  # the owner's other pages update their view
        self._expiry.append((time.monotonic() + self._ttl_s, generation.id))
        self.sweep()

    def sweep(self) -> None:
        """Free the logs of generations that finished more than ``ttl_s`` ago (oldest first: O(expired))."""
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            self._by_id.pop(self._expiry.popleft()[1], None)

    def counted(self, generation_id: str, frames: Iterator[bytes]) -> Iterator[bytes]:
        """``frames``, while counting the reader (in every process: ``cancel_without_readers_s`` counts them all)."""
        self._answers.reading(generation_id, 1)
        try:
            yield from frames
        finally:
            self._answers.reading(generation_id, -1)

    def readers(self, generation_id: str) -> int:
        return self._answers.readers(generation_id)

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
