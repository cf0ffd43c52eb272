"""Sliding-window limits (answers per minute, failed logins), in memory or shared through Redis.

A limit is counted *before* the work it guards: ``reserve`` takes a place in the window (or raises
``Throttled``), and the caller ``release``-s it when the attempt turns out not to count (a login that
succeeded, an answer the queue refused). Checking first and counting afterwards would let every request that
arrives while the first is still being checked through: 60 concurrent password guesses would all be verified.

The in-memory window is one process's; with ``CLAWWEB_REDIS_URL`` the window is a sorted set per key and each
step one Lua script, so the limits hold across every worker and host (timestamps from Redis' own clock).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from typing import Protocol

import redis

from .shared import PREFIX

MAX_KEYS = 10_000


class Throttled(Exception):
    """The key is at its limit; ``retry_after`` is the whole seconds until a place frees."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry in {retry_after} s")
        self.retry_after = retry_after


class Window(Protocol):
    limit: int
    window_s: float

    def reserve(self, key: str) -> str:
        """Take a place for ``key``; returns its token. Raises ``Throttled`` when ``key`` is at the limit."""

    def release(self, key: str, token: str) -> None:
        """Give back one reservation (the attempt did not count)."""

    def clear(self, key: str) -> None:
        """Forget every attempt of ``key``."""


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


# KEYS[1]: the key's sorted set (score: time in ms). ARGV: window ms, limit, token.
# Returns 0 when reserved, else the milliseconds until the oldest entry leaves the window.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""


class RedisWindow:
    """The same window in Redis, shared by every process using it (``name`` tells windows apart)."""

    def __init__(self, client: redis.Redis, name: str, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._redis = client
        self._prefix = f"{PREFIX}limit:{name}:"
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, key: str) -> str:
        token = secrets.token_hex(8)
        wait_ms = int(self._reserve(keys=[self._prefix + key], args=[int(self.window_s * 1000), self.limit, token]))
        if wait_ms:
            raise Throttled(max(1, math.ceil(wait_ms / 1000)))
        return token

    def release(self, key: str, token: str) -> None:
        self._redis.zrem(self._prefix + key, token)

    def clear(self, key: str) -> None:
        self._redis.delete(self._prefix + key)


def make_window(client: redis.Redis | None, name: str, limit: int, window_s: float) -> Window:
    """Redis-shared when the app has Redis, else this process's own."""
    if client is None:
        return SlidingWindow(limit, window_s)
    return RedisWindow(client, name, limit, window_s)
