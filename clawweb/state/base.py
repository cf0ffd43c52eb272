"""The shared state's interfaces: what each backend (memory.py; Redis: redis.py and the redis_*.py modules) gives.

A process has one ``State``, built once by ``make_state`` (make.py) from the settings:

- ``slots``: admission, at most ``max_active`` answers upstream, a FIFO queue behind, a per-client cap;
  ``embed_slots`` the same for embedding requests, beside them;
- ``logs``: an answer's event log, appended by the greenlet that runs it, followed by any number of readers;
- ``bus``: messages between the processes (stop this answer; an admission place was freed);
- ``answers``: the directory of running answers, for the other processes to find, follow and stop;
- ``feeds``: per-owner feeds of what changed in their conversations, that every open page follows;
- ``window(name, limit, window_s)``: sliding-window limits (answers per minute, failed logins).

In memory all of it is this process's (one worker); with ``CLAWWEB_REDIS_URL`` every worker and host shares it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import gevent.event

from ..config import Settings
from ..errors import ApiError
from ..metrics import REFUSALS

# --- admission ------------------------------------------------------------------------------------------------

RETRY_AFTER_BUSY_S = 30  # the whole gateway is full: come back in a while
RETRY_AFTER_CLIENT_S = 5  # this client already has its share: one of its own streams will end soon


class Refused(ApiError):
    def __init__(self, status: int, reason: str, message: str, retry_after: int) -> None:
        super().__init__(status, message, {"Retry-After": str(retry_after)})
        REFUSALS.labels(reason).inc()


# One client's embedding requests active or queued at once: an indexing job may keep every embedding slot busy
# with a queue behind, while the others' still get a place (a RAG query sends one at a time).
EMBED_PER_CLIENT_FACTOR = 4
POOL_LIMIT = {
    "answers": "CLAWWEB_MAX_ACTIVE_PER_CLIENT",
    "embeddings": f"CLAWWEB_MAX_ACTIVE_PER_CLIENT or {EMBED_PER_CLIENT_FACTOR} × CLAWWEB_MAX_ACTIVE_EMBED",
}


def embed_per_client(settings: Settings) -> int:
    """How many embedding requests one client may have active or queued: its answers' limit, or four times the
    embedding slots when that is more."""
    return max(settings.max_active_per_client, EMBED_PER_CLIENT_FACTOR * settings.max_active_embed)


def client_limit(max_per_client: int, pool: str = "answers") -> Refused:
    return Refused(
        429,
        "client_limit",
        f"too many requests from this client at once ({max_per_client}, {POOL_LIMIT[pool]}); wait for one to finish",
        RETRY_AFTER_CLIENT_S,
    )


POOL_DOING = {"answers": "answering", "embeddings": "embedding"}  # admission's pools, as a refusal names them


def queue_full(max_active: int, max_queue: int, pool: str = "answers") -> Refused:
    return Refused(
        503,
        "queue_full",
        f"the gateway is at capacity ({max_active} {POOL_DOING[pool]}, {max_queue} waiting); retry later",
        RETRY_AFTER_BUSY_S,
    )


class Ticket:
    """One request's place: ``position`` 0 means admitted (upstream slot held), else how many will get a slot
    before it; ``reason`` says why it last grew (lanes.py: a higher lane's name, ``turns`` or ``share``)."""

    def __init__(self, client: str, lane: str = "api") -> None:
        self.id = secrets.token_hex(8)
        self.client = client
        self.lane = lane
        self.position = 0
        self.reason: str | None = None
        self.created = time.monotonic()
        self.admitted_at: float | None = None
        self.changed = gevent.event.Event()  # set whenever position changes (or the worker stops)

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None

    @property
    def queue_wait_s(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.created


class Slots(Protocol):
    """What the relay needs from admission: memory's ``Admission`` in one process, ``RedisAdmission`` across
    workers and hosts."""

    max_active: int

    @property
    def active(self) -> int: ...

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        ...

    def enter(self, client: str, lane: str = "api") -> Ticket:
        """Take a slot or a place in ``lane``'s queue, or raise ``Refused`` (before any stream starts)."""
        ...

    def release(self, ticket: Ticket) -> None:
        """Give back the slot, or the place in the queue. Idempotent; called from the generator's ``finally``."""

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Block until ``ticket``'s position changed (True) or ``timeout`` passed (False); ``ticket.position`` is
        then up to date."""
        ...


# --- event logs -----------------------------------------------------------------------------------------------

FINAL_EVENTS = frozenset({"done", "stopped", "error"})
START = "0"  # the cursor before the first entry, for both stores
Entry = tuple[str, str, bytes]  # (id, event type, data)

# ASCII digits only (``\d`` and ``int()`` also take "١"), each part within Redis's 64-bit stream id fields: a
# larger one, sent to XREAD, is an error in the middle of the response.
_CURSOR = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_PART_MAX = 2**64 - 1


class LogLost(Exception):
    """The log disappeared before its final entry (Redis restarted empty, or it expired): nothing more will come."""


class LogUnavailable(Exception):
    """The log's store failed while a reader followed it (Redis went away): the reader ends, and may come back."""


def order(entry_id: str) -> tuple[int, int]:
    """Ids compare as (milliseconds, sequence); memory ids are (n, 0)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_cursor(raw: str) -> bool:
    """An event id a reader may resume after: ``12`` (memory) or ``1732700000000-0`` (Redis), either store."""
    found = _CURSOR.fullmatch(raw)
    return found is not None and all(int(part) <= _PART_MAX for part in found.groups() if part is not None)


class LogReader(Protocol):
    """A generation's log as a reader sees it. Either way the SSE event id is the log id, and a reader that comes
    back with ``Last-Event-ID`` (or ``?after=``) gets exactly the entries after it."""

    @property
    def last_id(self) -> str: ...

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        """Entries after ``after``, live; ``None`` after ``wait_s`` without one; ends after a final event. Raises
        ``LogLost`` or ``LogUnavailable`` when it cannot go on."""
        ...

    def caught_up(self, after: str) -> bool:
        """Finished, and ``after`` is its last entry (nothing more will ever come)."""
        ...

    def entries(self) -> list[Entry]:
        """Every entry held (to recover the text of an answer whose writer died)."""
        ...


class LogWriter(LogReader, Protocol):
    """The log of an answer this process runs: appended by its greenlet, followed by this process's readers."""

    finished: bool

    def append(self, event: str, data: bytes) -> str:
        """Add an entry; its id. Costs no round trip (readers elsewhere get it a few milliseconds later)."""
        ...


class EventLogs(Protocol):
    def writer(self, generation_id: str) -> LogWriter:
        """A new log for an answer starting in this process."""
        ...

    def reader(self, generation_id: str) -> LogReader:
        """The log of an answer another process runs (or ran)."""
        ...


# --- bus ------------------------------------------------------------------------------------------------------


class Bus(Protocol):
    """Publish/subscribe between the processes sharing the state."""

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(message)`` for every message on ``channel``; register before the first ``start``."""

    def publish(self, channel: str, message: str) -> None: ...

    def start(self) -> None:
        """Start listening (once; lazily, so a process that never serves a request never connects)."""


# --- the directory of running answers -------------------------------------------------------------------------


class Answer(Protocol):
    """An answer as the directory shows it to the other processes."""

    @property
    def id(self) -> str: ...

    @property
    def conversation_id(self) -> str: ...

    @property
    def owner(self) -> int | None: ...

    @property
    def message_id(self) -> int: ...

    @property
    def status(self) -> str:
        """queued | streaming | done | stopped | error"""
        ...

    @property
    def finished(self) -> bool: ...


@dataclass(frozen=True)
class Listed:
    """An answer another process runs or ran, as the directory lists it. ``held``: its process still renews it
    (always True once it finished); a running answer nobody holds was abandoned: its process died."""

    id: str
    conversation_id: str
    owner: int | None
    message_id: int
    status: str
    held: bool = True

    @property
    def finished(self) -> bool:
        return self.status in FINAL_EVENTS


def answer_lease_s(settings: Settings) -> float:
    """How long an answer stays running for the other processes after its process last renewed it (every third
    of that): a killed worker's answer is known dead then. Three heartbeats (``CLAWWEB_HEARTBEAT_S``)."""
    return 3 * settings.heartbeat_s


class Directory(Protocol):
    """The answers every process runs, so that any process finds, follows and stops any of them, and the answers
    of a process that died are ended by one of the others. In memory (one process) it lists nothing."""

    lease_s: float  # a running answer stays listed as held this long after its process last renewed it

    def publish(self, answer: Answer) -> None:
        """Show the answer's state to the other processes. Never raises: what fails is shown in a later round."""

    def watch(self, local: Mapping[str, Answer], end: Callable[[Listed], object]) -> None:
        """From now on (once), every third of the lease: renew the running answers of ``local`` (this process's,
        by id), and hand to ``end`` those of other processes nobody renews any more."""

    def lookup(self, generation_id: str) -> Listed | None: ...

    def running(self, conversation_id: str) -> str | None:
        """The id of the answer running for the conversation, in whichever process."""
        ...

    def end_abandoned(self, answer: Listed, status: str, payload: str) -> bool:
        """End, for everyone, an abandoned answer: its final log entry (``status``, ``payload``), its state. Of all
        the processes that try at once one does (True); none does once it ended or was renewed."""
        ...

    def reading(self, generation_id: str, change: int) -> None:
        """Count a reader arriving (+1) or leaving (-1). Never raises: the count serves no reader."""

    def readers(self, generation_id: str) -> int:
        """Readers in every process (1 when unknown: never cancel an answer for want of a count)."""
        ...


# --- per-owner feeds -----------------------------------------------------------------------------------------

FEED_MAX_EVENTS = 500  # per owner; a page further behind than that reloads its lists (``reset``)
FEED_IDLE_S = 3600.0  # a feed nobody wrote or read for this long is freed (its next reader gets a reset)
FEED_OPENED = "opened"  # every feed's first entry: each cursor handed out is one of its ids, so any is checkable
RESET = "reset"


class Feeds(Protocol):
    """An owner's feed of changes (conversations, messages, answers), followed by each page the owner has open.

    Ids are ``<ms>-<seq>`` in both stores and only grow, across restarts too (the clock's). A reader resumes after
    a cursor: if entries after it are no longer held (it is older than the feed's first entry: trimmed at
    ``FEED_MAX_EVENTS``, or the feed was freed, or Redis restarted empty) or it is unknown (newer than the
    last), the reader gets a ``reset`` entry first, carrying the newest id, and follows from there: never a
    silent hole."""

    def publish(self, owner: str, event: str, data: bytes) -> None:
        """Append to ``owner``'s feed. Never raises: the change it tells of is stored already. A failed one
        (Redis away) is logged, and the owner's readers get a ``reset`` with the next entry."""

    def cursor(self, owner: str) -> str | None:
        """The newest id of ``owner``'s feed (opening it if need be): what a page just rendered follows after.
        None when the store cannot say (Redis away)."""
        ...

    def follow(self, owner: str, after: str, wait_s: float) -> Iterator[Entry | None]:
        """Entries after ``after`` (a ``reset`` first if some are gone), then live ones; ``None`` after ``wait_s``
        without one; ends only when the worker stops. Raises ``LogUnavailable`` when the store fails."""
        ...


def reset_entry(entry_id: str, reason: str) -> Entry:
    return entry_id, RESET, json.dumps({"reason": reason}).encode()


def feed_gap(after: str, first: str | None, last: str | None) -> str | None:
    """Why a reader at ``after`` cannot resume exactly in a feed holding ``first``..``last`` (None: it can)."""
    if first is None or last is None:
        return "the feed is new"
    if order(after) < order(first):
        return "the cursor is older than the events kept"
    if order(after) > order(last):
        return "the cursor is unknown"
    return None


# --- rate windows ---------------------------------------------------------------------------------------------


class Throttled(Exception):
    """The key is at its limit; ``retry_after`` is the whole seconds until a place frees."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry in {retry_after} s")
        self.retry_after = retry_after


class Window(Protocol):
    """At most ``limit`` attempts per key in any ``window_s``. A limit is counted *before* the work it guards:
    ``reserve`` takes a place (or raises ``Throttled``), and the caller ``release``-s it when the attempt turns out
    not to count (a login that succeeded, an answer the queue refused). Checking first and counting afterwards
    would let every request that arrives while the first is still being checked through: 60 concurrent password
    guesses would all be verified."""

    limit: int
    window_s: float

    def reserve(self, key: str) -> str:
        """Take a place for ``key``; returns its token. Raises ``Throttled`` when ``key`` is at the limit."""
        ...

    def release(self, key: str, token: str) -> None:
        """Give back one reservation (the attempt did not count)."""

    def clear(self, key: str) -> None:
        """Forget every attempt of ``key``."""


# --- the whole ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One process's shared state, memory or Redis (see the module's docstring)."""

    slots: Slots
    embed_slots: Slots  # embedding requests: slots of their own (CLAWWEB_MAX_ACTIVE_EMBED), never behind answers
    logs: EventLogs
    bus: Bus
    answers: Directory
    feeds: Feeds
    window: Callable[[str, int, float], Window]  # (name, limit, window_s): windows of one name are one
    problem: Callable[[float], str | None]  # for /readyz: None, or why the shared state cannot serve (timeout s)
    close: Callable[[], None]  # let go of its connections
