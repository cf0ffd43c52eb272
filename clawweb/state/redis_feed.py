"""Per-owner feeds as Redis Streams, so that a page follows its owner's changes whichever worker or host made them.

The stream of owner ``<owner>`` is ``clawweb:feed:<owner>``, its entries ``{e: event type, d: data}``, ids
Redis' own (``<ms>-<seq>``, so writers in several processes never collide). It holds at most
``FEED_MAX_EVENTS`` entries (trimmed exactly, in the same script that adds) and expires ``FEED_IDLE_S`` after
its last entry or its last reader's heartbeat. Its first entry is an ``opened`` marker, added by the script that
creates it, so a feed that expired (or a Redis that restarted empty) starts newer than every cursor handed out
before: those readers get a ``reset``, never a silent hole.

A publish that fails (Redis away) cannot be sent later in order with the others' (the ids are Redis'): the owner
is remembered, and the next entry that reaches the feed is preceded by a ``reset``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from .. import lifecycle
from .base import FEED_IDLE_S, FEED_MAX_EVENTS, FEED_OPENED, RESET, Entry, LogUnavailable, feed_gap, reset_entry
from .redis import BLOCK_MAX_S, PREFIX, unavailable_message

log = logging.getLogger(__name__)

# KEYS[1]: the stream. ARGV: event (empty: none, only open the feed), data, max entries, idle ms.
# Returns the id of the newest entry.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], '*', 'e', 'opened', 'd', '{}')
end
local id
if ARGV[1] ~= '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'e', ARGV[1], 'd', ARGV[2])
else
  id = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return id
"""


def feed_key(owner: str) -> str:
    return f"{PREFIX}feed:{owner}"


class RedisFeeds:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._append = client.register_script(_APPEND)
        self._lost: set[str] = set()  # owners with an entry that never reached Redis

    def _add(self, owner: str, event: str, data: bytes) -> str:
        args: list[str | bytes | int] = [event, data, FEED_MAX_EVENTS, int(FEED_IDLE_S * 1000)]
        return bytes(self._append(keys=[feed_key(owner)], args=args)).decode()

    def publish(self, owner: str, event: str, data: bytes) -> None:
        try:
            if owner in self._lost:
                self._add(owner, RESET, json.dumps({"reason": "events were lost while Redis was away"}).encode())
                self._lost.discard(owner)
            self._add(owner, event, data)
        except redis.RedisError as exc:
            self._lost.add(owner)
            log.warning("redis: a %s event was not published: %s", event, exc)

    def cursor(self, owner: str) -> str | None:
        try:
            return self._add(owner, "", b"")
        except redis.RedisError as exc:
            log.warning("redis: the feed's cursor is unknown: %s", exc)
            return None

    def follow(self, owner: str, after: str, wait_s: float) -> Iterator[Entry | None]:
        try:
            yield from self._follow(owner, after, wait_s)
        except redis.RedisError as exc:
            log.warning("redis: a reader stopped following its feed: %s", exc)
            raise LogUnavailable(unavailable_message(exc)) from exc

    def _ends(self, key: str) -> tuple[str | None, str | None]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        first, last = pipe.execute()
        return (first[0][0].decode() if first else None), (last[0][0].decode() if last else None)

    def _follow(self, owner: str, after: str, wait_s: float) -> Iterator[Entry | None]:
        key = feed_key(owner)
        first, last = self._ends(key)
        gap = feed_gap(after, first, last)
        if gap is not None:
            after = last or self._add(owner, "", b"")  # a feed that is gone is opened anew
            yield reset_entry(after, gap)
        heartbeat_at = time.monotonic() + wait_s
        while not lifecycle.stopping():  # else the reader reconnects (Last-Event-ID) to a worker that stays
            # In steps shorter than the socket timeout: a long BLOCK would look like a Redis that stopped answering.
            block_s = min(BLOCK_MAX_S, max(heartbeat_at - time.monotonic(), 0.001))
            found: Any = self._redis.xread({key: after}, count=FEED_MAX_EVENTS, block=max(1, int(block_s * 1000)))
            if not found:
                if time.monotonic() >= heartbeat_at - 0.005:
                    self._redis.pexpire(key, int(FEED_IDLE_S * 1000))  # a feed someone reads stays
                    heartbeat_at = time.monotonic() + wait_s
                    yield None
                continue
            first, last = self._ends(key)
            gap = feed_gap(after, first, last)
            if gap is not None:  # trimmed past the reader while it waited, or the feed expired and began anew
                after = str(last)
                yield reset_entry(after, gap)
                continue
            heartbeat_at = time.monotonic() + wait_s
            for raw_id, fields in found[0][1]:
                after = raw_id.decode()
                event = fields[b"e"].decode()
                if event != FEED_OPENED:
                    yield after, event, fields[b"d"]
