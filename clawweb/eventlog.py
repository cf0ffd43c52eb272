"""A generation's event log: appended by the one greenlet that runs the answer, followed by any number of readers.

Two stores with one interface: ``MemoryLog`` (the default) lives in this process, ids 1, 2, 3...; ``RedisLog``
(redislog.py) is a Redis Stream that a reader on any worker or host can follow, ids like ``1732700000000-0``.
Either way the SSE event id is the log id, and a reader that comes back with ``Last-Event-ID`` (or ``?after=``)
gets exactly the entries after it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from typing import Protocol

import gevent.event

FINAL_EVENTS = frozenset({"done", "stopped", "error"})
START = "0"  # the cursor before the first entry, for both stores
Entry = tuple[str, str, bytes]  # (id, event type, data)

# ASCII digits only (``\d`` and ``int()`` also take "١"), each part within Redis's 64-bit stream id fields: a
# larger one, sent to XREAD, is an error in the middle of the response.
_CURSOR = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_PART_MAX = 2**64 - 1


class LogLost(Exception):
    """The log disappeared before its final entry (Redis restarted empty, or it expired): nothing more will come."""


def order(entry_id: str) -> tuple[int, int]:
    """Ids compare as (milliseconds, sequence); memory ids are (n, 0)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_cursor(raw: str) -> bool:
    """An event id a reader may resume after: ``12`` (memory) or ``1732700000000-0`` (Redis), either store."""
    found = _CURSOR.fullmatch(raw)
    return found is not None and all(int(part) <= _PART_MAX for part in found.groups() if part is not None)


class EventLog(Protocol):
    finished: bool

    @property
    def last_id(self) -> str: ...

    def append(self, event: str, data: bytes) -> str: ...

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        """Entries after ``after``, live; ``None`` after ``wait_s`` without one; ends after a final event."""
        ...

    def caught_up(self, after: str) -> bool:
        """Finished, and ``after`` is its last entry (nothing more will ever come)."""
        ...


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
