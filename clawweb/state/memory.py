"""The shared state in this process's memory: one worker, nobody to share with (the default).

Everything runs in one gevent hub, so plain attributes need no locks: nothing here yields except waiting.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence

import gevent.event

from .. import lifecycle
from ..config import Settings
from ..metrics import POOL_GAUGES, publish_lanes
from . import lanes
from .base import (
    FEED_IDLE_S,
    FEED_MAX_EVENTS,
    FEED_OPENED,
    FINAL_EVENTS,
    START,
    Answer,
    Entry,
    Listed,
    LogLost,
    State,
    Throttled,
    Ticket,
    Window,
    answer_lease_s,
    client_limit,
    embed_per_client,
    feed_gap,
    order,
    queue_full,
    reset_entry,
)
from .lanes import DEFAULT_SHARES

MAX_KEYS = 10_000  # per window; beyond, the keys whose attempts all expired are forgotten


class Admission:
    """At most ``max_active`` generations upstream, a bounded queue behind them served by lanes and turns
    (lanes.py), and a per-client cap, so a burst of users never piles onto Ollama (whose own queue gives no
    feedback at all)."""

    def __init__(
        self,
        max_active: int,
        max_queue: int,
        max_per_client: int,
        pool: str = "answers",
        shares: Sequence[tuple[str, float]] = DEFAULT_SHARES,
    ) -> None:
        self.pool = pool  # answers or embeddings: its gauges, and how a refusal names it
        self.max_active = max_active
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        self._caps = lanes.caps(max_active, shares)
        self._active: dict[str, Ticket] = {}  # by id, oldest first
        self._waiting: dict[str, Ticket] = {}  # by id, in arrival order
        # Their counts per lane, kept as tickets move (the gauges are set on every move: no pass over all).
        self._held_lanes: Counter[str] = Counter()
        self._waiting_lanes: Counter[str] = Counter()
        self._turns: dict[tuple[str, str], float] = {}  # (lane, user) of users waiting: when their turn came last
        self._tick = itertools.count(1)
        self._per_client: Counter[str] = Counter()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def enter(self, client: str, lane: str = "api") -> Ticket:
        if self._per_client[client] >= self.max_per_client:
            raise client_limit(self.max_per_client, self.pool)
        ticket = Ticket(client, lane)
        if len(self._active) < self.max_active and not self._waiting:
            self._admit(ticket)
        elif len(self._waiting) >= self.max_queue:
            raise queue_full(self.max_active, self.max_queue, self.pool)
        else:
            self._waiting[ticket.id] = ticket
            self._waiting_lanes[lane] += 1
            self._turns.setdefault((lane, client), next(self._tick))
            self._settle(lane)
        self._per_client[client] += 1
        self._publish()
        return ticket

    def release(self, ticket: Ticket) -> None:
        if ticket.position < 0:
            return
        if self._active.pop(ticket.id, None) is None:
            del self._waiting[ticket.id]
            self._waiting_lanes[ticket.lane] -= 1
        else:
            self._held_lanes[ticket.lane] -= 1
        ticket.position = -1
        self._per_client[ticket.client] -= 1
        if not self._per_client[ticket.client]:
            del self._per_client[ticket.client]
        if self._waiting:  # else there is nobody to move up (and no pass over every slot held)
            self._settle(None)
        else:
            self._turns.clear()  # (a waiter who left was the last: its user's turn is not kept)
        self._publish()

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        changed = bool(ticket.changed.wait(timeout))
        ticket.changed.clear()
        return changed

    def _admit(self, ticket: Ticket) -> None:
        self._active[ticket.id] = ticket
        self._held_lanes[ticket.lane] += 1
        ticket.position = 0
        ticket.admitted_at = time.monotonic()
        ticket.changed.set()

    def _settle(self, arrival_lane: str | None) -> None:
        """Free slots to the first in ``lanes.plan``'s order, then every waiter's position from it; a waiter moved
        back learns why (``arrival_lane``: the lane of the request that just arrived)."""
        active = [ticket.lane for ticket in self._active.values()]
        order, now = lanes.plan(active, list(self._waiting.values()), self._turns, self._caps, self.max_active)
        for ticket in order[:now]:
            del self._waiting[ticket.id]
            self._waiting_lanes[ticket.lane] -= 1
            self._admit(ticket)
        self._turns = {  # a user whose request got its slot goes to the back of its lane's ring
            (ticket.lane, ticket.client): self._turns.get((ticket.lane, ticket.client), 0.0)
            for ticket in self._waiting.values()
        }
        for ticket in order[:now]:
            if (ticket.lane, ticket.client) in self._turns:
                self._turns[ticket.lane, ticket.client] = next(self._tick)
        for position, ticket in enumerate(order[now:], start=1):
            if ticket.position != position:
                if 0 < ticket.position < position:
                    ticket.reason = lanes.reason(arrival_lane, ticket.lane)
                ticket.position = position
                ticket.changed.set()

    def _publish(self) -> None:
        active, queued = POOL_GAUGES[self.pool]
        active.set(len(self._active))
        queued.set(len(self._waiting))
        if self.pool == "answers":  # the embedding pool has one lane: its gauges say it all
            publish_lanes(self._held_lanes, self._waiting_lanes)


class MemoryLog:
    """Entries in this process. Ids are 1, 2, 3... unless the appender gives its own (a Redis mirror does)."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._orders: list[tuple[int, int]] = []  # the ids' order, for finding where a reader resumes
        self._tick = gevent.event.Event()  # replaced on every append; readers wait on the current one
        self.finished = False

    @property
    def last_id(self) -> str:
        return self._entries[-1][0] if self._entries else START

    def append(self, event: str, data: bytes, entry_id: str | None = None) -> str:
        entry_id = entry_id or str(len(self._entries) + 1)
        self._entries.append((entry_id, event, data))
        self._orders.append(order(entry_id))
        self.finished = self.finished or event in FINAL_EVENTS
        tick, self._tick = self._tick, gevent.event.Event()
        tick.set()
        return entry_id

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        sent = bisect.bisect_right(self._orders, order(after))
        while True:
            while sent < len(self._entries):
                entry = self._entries[sent]
                sent += 1
                yield entry
                if entry[1] in FINAL_EVENTS:
                    return
            if self.finished:
                return
            if not self._tick.wait(wait_s) and sent == len(self._entries):
                yield None

    def caught_up(self, after: str) -> bool:
        return self.finished and order(after) >= order(self.last_id)

    def entries(self) -> list[Entry]:
        return list(self._entries)


class MemoryLogs:
    """Logs in this process; a reader of one is its writer's log, while the generation keeps it."""

    def __init__(self) -> None:
        self._logs: weakref.WeakValueDictionary[str, MemoryLog] = weakref.WeakValueDictionary()

    def writer(self, generation_id: str) -> MemoryLog:
        log = self._logs[generation_id] = MemoryLog()
        return log

    def reader(self, generation_id: str) -> MemoryLog:
        log = self._logs.get(generation_id)
        if log is None:
            raise LogLost(f"the event log of {generation_id} is gone")
        return log


class MemoryBus:
    """Nobody else to tell: a message goes to this process's handlers, at once."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[str], None]]] = {}

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def publish(self, channel: str, message: str) -> None:
        for handler in self._handlers.get(channel, []):
            handler(message)

    def start(self) -> None:
        """Nothing to listen to."""


class MemoryDirectory:
    """One process: no other process to show its answers to, none whose answers it could find or end. Only the
    readers are counted (``cancel_without_readers_s``)."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._readers: dict[str, int] = {}

    def publish(self, answer: Answer) -> None:
        """Nobody else to show it to."""

    def watch(self, local: Mapping[str, Answer], end: Callable[[Listed], object]) -> None:
        """No lease to renew, no other process to die."""

    def lookup(self, generation_id: str) -> Listed | None:
        return None

    def running(self, conversation_id: str) -> str | None:
        return None

    def end_abandoned(self, answer: Listed, status: str, payload: str) -> bool:
        return False

    def reading(self, generation_id: str, change: int) -> None:
        self._readers[generation_id] = self._readers.get(generation_id, 0) + change
        if not self._readers[generation_id]:
            del self._readers[generation_id]

    def readers(self, generation_id: str) -> int:
        return self._readers.get(generation_id, 0)


class TimeIds:
    """``<ms>-<seq>`` ids that only grow (as Redis names stream entries): a restarted worker's ids are newer than
    any its predecessor handed out, so an old cursor is recognised as unknown rather than taken for a new one."""

    def __init__(self) -> None:
        self._last = (0, 0)

    def next(self) -> str:
        now_ms = int(time.time() * 1000)
        self._last = (now_ms, 0) if now_ms > self._last[0] else (self._last[0], self._last[1] + 1)
        return f"{self._last[0]}-{self._last[1]}"


class _Feed:
    def __init__(self, opened_id: str) -> None:
        self.entries: deque[Entry] = deque([(opened_id, FEED_OPENED, b"{}")], maxlen=FEED_MAX_EVENTS)
        self.readers = 0
        self.touched = time.monotonic()
        self._tick = gevent.event.Event()

    def wake(self) -> None:
        tick, self._tick = self._tick, gevent.event.Event()
        tick.set()

    def wait(self, timeout: float) -> bool:
        return bool(self._tick.wait(timeout))


class MemoryFeeds:
    """Each owner's last ``FEED_MAX_EVENTS`` entries in this process; a feed with no reader that saw no entry for
    ``FEED_IDLE_S`` is freed (looked for at most once a minute)."""

    SWEEP_EVERY_S = 60.0

    def __init__(self) -> None:
        self._feeds: dict[str, _Feed] = {}
        self._ids = TimeIds()
        self._swept = time.monotonic()

    def _feed(self, owner: str) -> _Feed:
        now = time.monotonic()
        if now - self._swept > self.SWEEP_EVERY_S:
            self._swept = now
            for name, idle in list(self._feeds.items()):
                if not idle.readers and now - idle.touched > FEED_IDLE_S:
                    del self._feeds[name]
        feed = self._feeds.get(owner)
        if feed is None:
            feed = self._feeds[owner] = _Feed(self._ids.next())
        feed.touched = now
        return feed

    def __len__(self) -> int:
        return len(self._feeds)

    def publish(self, owner: str, event: str, data: bytes) -> None:
        feed = self._feed(owner)
        feed.entries.append((self._ids.next(), event, data))
        feed.wake()

    def cursor(self, owner: str) -> str:
        return self._feed(owner).entries[-1][0]

    def follow(self, owner: str, after: str, wait_s: float) -> Iterator[Entry | None]:
        feed = self._feed(owner)
        feed.readers += 1
        try:
            with lifecycle.registered(feed.wake):
                while not lifecycle.stopping():
                    entries = feed.entries
                    gap = feed_gap(after, entries[0][0], entries[-1][0])
                    if gap is not None:  # trimmed past the reader (it fell behind), or a cursor of another feed
                        after = entries[-1][0]
                        yield reset_entry(after, gap)
                    newer = [entry for entry in entries if order(entry[0]) > order(after)]
                    for entry in newer:
                        after = entry[0]
                        yield entry
                    if not newer and not feed.wait(wait_s) and not lifecycle.stopping():
                        yield None
        finally:
            feed.readers -= 1
            feed.touched = time.monotonic()


class SlidingWindow:
    """In process memory: at most ``limit`` timestamps per key, exact. A reservation's token is its timestamp
    (two taken in the same instant are interchangeable), so a key costs a float per attempt, no more."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def reserve(self, key: str) -> str:
        now = time.monotonic()
        if len(self._hits) > MAX_KEYS:  # someone sprays names or addresses: forget the expired ones
            for stale in list(self._hits):
                if not self._recent(stale, now):
                    del self._hits[stale]
        hits = self._recent(key, now)
        if len(hits) >= self.limit:
            raise Throttled(max(1, math.ceil(hits[0] + self.window_s - now)))
        hits.append(now)
        return repr(now)

    def release(self, key: str, token: str) -> None:
        hits = self._hits.get(key)
        if hits is not None and float(token) in hits:
            hits.remove(float(token))

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)


def memory_state(settings: Settings) -> State:
    def window(name: str, limit: int, window_s: float) -> Window:
        return SlidingWindow(limit, window_s)  # each its own object: the name only matters when shared

    return State(
        slots=Admission(
            settings.max_active, settings.max_queue, settings.max_active_per_client, shares=settings.lane_shares
        ),
        embed_slots=Admission(
            settings.max_active_embed,
            settings.max_queue,
            embed_per_client(settings),
            "embeddings",
        ),
        logs=MemoryLogs(),
        bus=MemoryBus(),
        answers=MemoryDirectory(answer_lease_s(settings)),
        feeds=MemoryFeeds(),
        window=window,
        problem=lambda timeout_s: None,
        close=lambda: None,
    )
