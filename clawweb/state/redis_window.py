"""Rate windows in Redis: a sorted set per key, each step one Lua script, so a limit holds across every worker
and host (timestamps from Redis' own clock)."""

from __future__ import annotations

import math
import secrets

import redis

from .base import Throttled
from .redis import PREFIX

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
    """``SlidingWindow``'s limit, shared by every process using it (``name`` tells windows apart)."""

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
