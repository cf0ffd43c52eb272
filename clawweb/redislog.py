"""``RedisLog``: a generation's event log as a Redis Stream, followed from any worker or host.

The writer names the entry ids itself (``<ms>-<seq>``, increasing) and keeps a copy in memory, so appending
costs no round trip: readers in its own process follow the copy, and one ``Flusher`` per process sends the
entries of every answer it runs to Redis together, every few milliseconds. Readers elsewhere
block on ``XREAD``. A stream expires ``ttl_s`` after its final entry (a live one after hours: a crashed writer
leaves nothing behind for good).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import gevent
import gevent.event
import redis

from . import lifecycle
from .eventlog import FINAL_EVENTS, START, Entry, MemoryLog, order

log = logging.getLogger("gunicorn.error")

MAX_ENTRIES = 100_000  # trimmed beyond this (approximately): an answer has far fewer
LIVE_TTL_MS = 6 * 3_600_000
LINGER_S = 0.005  # how far readers in other processes trail; fewer, fuller round trips to Redis


class Flusher:
    """Sends the pending entries of all this process's logs, in order, one pipeline at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._pending: list[tuple[str, str, dict[str, Any], int | None]] = []  # key, id, fields, ttl after
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def add(self, key: str, entry_id: str, fields: dict[str, Any], expire_ms: int | None) -> None:
        self._pending.append((key, entry_id, fields, expire_ms))
        self._wake.set()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            gevent.sleep(LINGER_S)  # let entries from other answers join this round trip
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for key, entry_id, fields, expire_ms in batch:
                pipe.xadd(key, cast(Any, fields), id=entry_id, maxlen=MAX_ENTRIES, approximate=True)
                if expire_ms is not None:
                    pipe.pexpire(key, expire_ms)
            try:
                pipe.execute()
            except redis.RedisError as exc:  # readers in other processes miss these; this process's do not
                log.warning("redis: %d event log entries not stored: %s", len(batch), exc)


class RedisLog:
    """A Redis Stream ``key`` of entries ``{e: event, d: data}``.

    With ``flusher`` this is the writer's log (it creates the empty stream at once, so a reader that comes
    before the first entry waits for it rather than finding nothing); without, a reader's view of it.
    """

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, flusher: Flusher | None = None) -> None:
        self._redis = client
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self._flusher = flusher
        self._mirror = MemoryLog() if flusher else None
        self._last = (0, 0)
        self.finished = False
        if flusher:
            pipe = self._redis.pipeline()
            pipe.xgroup_create(key, "created", id="$", mkstream=True)
            pipe.xgroup_destroy(key, "created")
            pipe.pexpire(key, LIVE_TTL_MS)
            pipe.execute()

    @property
    def last_id(self) -> str:
        if self._mirror is not None:
            return self._mirror.last_id
        last: Any = self._redis.xrevrange(self._key, count=1)
        return last[0][0].decode() if last else START

    def append(self, event: str, data: bytes) -> str:
        assert self._flusher is not None and self._mirror is not None, "only the writer appends"
        now_ms = int(time.time() * 1000)
        self._last = (now_ms, 0) if now_ms > self._last[0] else (self._last[0], self._last[1] + 1)
        entry_id = f"{self._last[0]}-{self._last[1]}"
        self.finished = self.finished or event in FINAL_EVENTS
        self._flusher.add(self._key, entry_id, {"e": event, "d": data}, self._ttl_ms if self.finished else None)
        return self._mirror.append(event, data, entry_id)

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        if self._mirror is not None:
            yield from self._mirror.follow(after, wait_s)
            return
        cursor = "0-0" if after == START else after
        while not lifecycle.stopping():  # else the reader reconnects (Last-Event-ID) to a worker that stays
            found: Any = self._redis.xread({self._key: cursor}, count=500, block=max(1, int(wait_s * 1000)))
            if not found:
                if self.caught_up(cursor):
                    return  # expired, never existed, or ended before the cursor: nothing will come
                yield None
                continue
            for raw_id, fields in found[0][1]:
                cursor = raw_id.decode()
                event = fields[b"e"].decode()
                yield cursor, event, fields[b"d"]
                if event in FINAL_EVENTS:
                    return

    def caught_up(self, after: str) -> bool:
        if self._mirror is not None:
            return self._mirror.caught_up(after)
        last: Any = self._redis.xrevrange(self._key, count=1)
        if not last:
            return not self._redis.exists(self._key)  # expired: nothing more will come; empty: the first will
        last_id, fields = last[0]
        return fields[b"e"].decode() in FINAL_EVENTS and order(after) >= order(last_id.decode())
