"""A generation's event log as a Redis Stream, followed from any worker or host.

The writer names the entry ids itself (``<ms>-<seq>``, increasing) and keeps a copy in memory, so appending
costs no round trip: readers in its own process follow the copy, and one ``Flusher`` per process sends the
entries of every answer it runs to Redis together, every few milliseconds. Readers elsewhere
block on ``XREAD``. A stream expires ``ttl_s`` after its final entry (a live one after hours: a crashed writer
leaves nothing behind for good).

While Redis is away the flusher keeps the entries and sends them, in order, once it answers again: readers
elsewhere get a late answer, never one with a hole. A reader whose Redis fails gets ``LogUnavailable`` (the
caller turns it into a final in-band ``event: error``).

The stream of generation ``<id>`` is ``clawweb:gen:<id>:log``, its entries ``{e: event type, d: data}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import gevent
import gevent.event
import redis

from .. import lifecycle
from ..outage import Outage
from .base import FINAL_EVENTS, START, Entry, LogLost, LogUnavailable, order
from .memory import MemoryLog
from .redis import BLOCK_MAX_S, PREFIX, unavailable_message

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000  # trimmed beyond this (approximately): an answer has far fewer
LIVE_TTL_MS = 6 * 3_600_000
LINGER_S = 0.005  # how far readers in other processes trail; fewer, fuller round trips to Redis
RETRY_S = 0.5  # while Redis is away, how often the flusher tries again
MAX_PENDING = 200_000  # entries kept for a Redis that is away (~20 MB); the oldest are dropped beyond


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
        outage = Outage("redis: sending event log entries")
        retrying = False
        while True:
            self._wake.wait()
            gevent.sleep(LINGER_S)  # let entries from other answers join this round trip
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                self._send(batch, retrying)
            except redis.RedisError as exc:  # this process's readers have them already (the mirror)
                outage.failed(exc)
                self._pending[:0] = batch
                if len(self._pending) > MAX_PENDING:
                    log.error("redis: %d event log entries dropped", len(self._pending) - MAX_PENDING)
                    del self._pending[: len(self._pending) - MAX_PENDING]
                retrying = True
                self._wake.set()
                gevent.sleep(RETRY_S)
            else:
                outage.ok()
                retrying = False

    def _send(self, batch: list[tuple[str, str, dict[str, Any], int | None]], retrying: bool) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, entry_id, fields, expire_ms in batch:
            pipe.xadd(key, cast(Any, fields), id=entry_id, maxlen=MAX_ENTRIES, approximate=True)
            if expire_ms is not None:
                pipe.pexpire(key, expire_ms)
        if retrying:  # Redis may have restarted empty: a stream the XADDs recreate must still expire
            ended = {key for key, _, _, expire_ms in batch if expire_ms is not None}
            for key in {key for key, _, _, _ in batch} - ended:
                pipe.pexpire(key, LIVE_TTL_MS)
        for result in pipe.execute(raise_on_error=False):
            # After a lost reply the same entries are sent again: Redis refuses those it has, which is fine.
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                log.warning("redis: an event log entry was refused: %s", result)


def log_key(generation_id: str) -> str:
    return f"{PREFIX}gen:{generation_id}:log"


class RedisLogs:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        """``ttl_s``: how long a stream stays after its final entry."""
        self._redis = client
        self._ttl_s = ttl_s
        self._flusher = Flusher(client)

    def writer(self, generation_id: str) -> RedisLogWriter:
        return RedisLogWriter(self._redis, log_key(generation_id), self._ttl_s, self._flusher)

    def reader(self, generation_id: str) -> RedisLogReader:
        return RedisLogReader(self._redis, log_key(generation_id))


class RedisLogWriter:
    """The writer's log: a copy in memory that this process's readers follow, sent to the stream ``key`` by the
    flusher. It creates the empty stream at once, so a reader that comes before the first entry waits for it
    rather than finding nothing."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, flusher: Flusher) -> None:
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self._flusher = flusher
        self._mirror = MemoryLog()
        self._last = (0, 0)
        self.finished = False
        pipe = client.pipeline()
        pipe.xgroup_create(key, "created", id="$", mkstream=True)
        pipe.xgroup_destroy(key, "created")
        pipe.pexpire(key, LIVE_TTL_MS)
        pipe.execute()

    @property
    def last_id(self) -> str:
        return self._mirror.last_id

    def append(self, event: str, data: bytes) -> str:
        now_ms = int(time.time() * 1000)
        self._last = (now_ms, 0) if now_ms > self._last[0] else (self._last[0], self._last[1] + 1)
        entry_id = f"{self._last[0]}-{self._last[1]}"
        self.finished = self.finished or event in FINAL_EVENTS
        self._mirror.append(event, data, entry_id)  # first: this process's readers get it whatever Redis does
        self._flusher.add(self._key, entry_id, {"e": event, "d": data}, self._ttl_ms if self.finished else None)
        return entry_id

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        return self._mirror.follow(after, wait_s)

    def caught_up(self, after: str) -> bool:
        return self._mirror.caught_up(after)

    def entries(self) -> list[Entry]:
        return self._mirror.entries()


class RedisLogReader:
    """A reader's view of the stream ``key``, in a process other than the writer's: it blocks on ``XREAD``."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._redis = client
        self._key = key

    @property
    def last_id(self) -> str:
        last: Any = self._redis.xrevrange(self._key, count=1)
        return last[0][0].decode() if last else START

    def follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        try:
            yield from self._follow(after, wait_s)
        except redis.RedisError as exc:
            log.warning("redis: a reader stopped following an answer: %s", exc)
            raise LogUnavailable(unavailable_message(exc)) from exc

    def _follow(self, after: str, wait_s: float) -> Iterator[Entry | None]:
        cursor = "0-0" if after == START else after
        heartbeat_at = time.monotonic() + wait_s
        while not lifecycle.stopping():  # else the reader reconnects (Last-Event-ID) to a worker that stays
            # In steps shorter than the socket timeout: a long BLOCK would look like a Redis that stopped answering.
            block_s = min(BLOCK_MAX_S, max(heartbeat_at - time.monotonic(), 0.001))
            found: Any = self._redis.xread({self._key: cursor}, count=500, block=max(1, int(block_s * 1000)))
            if not found:
                if time.monotonic() < heartbeat_at - 0.005:
                    continue
                if not self._redis.exists(self._key):
                    raise LogLost(f"the event log {self._key} is gone before its end")
                if self.caught_up(cursor):
                    return  # it ended before the cursor: nothing will come
                heartbeat_at = time.monotonic() + wait_s
                yield None
                continue
            heartbeat_at = time.monotonic() + wait_s
            for raw_id, fields in found[0][1]:
                cursor = raw_id.decode()
                event = fields[b"e"].decode()
                yield cursor, event, fields[b"d"]
                if event in FINAL_EVENTS:
                    return

    def caught_up(self, after: str) -> bool:
        last: Any = self._redis.xrevrange(self._key, count=1)
        if not last:
            return not self._redis.exists(self._key)  # expired: nothing more will come; empty: the first will
        last_id, fields = last[0]
        return fields[b"e"].decode() in FINAL_EVENTS and order(after) >= order(last_id.decode())

    def entries(self) -> list[Entry]:
        found: Any = self._redis.xrange(self._key)
        return [(raw_id.decode(), fields[b"e"].decode(), fields[b"d"]) for raw_id, fields in found]
