"""Per-user request rate and login throttling, in memory (per worker process, like admission).

Both are sliding windows of timestamps: exact, tiny (at most ``limit`` floats per key), and they answer with
the time until the oldest entry leaves the window, which becomes ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections import deque

MAX_KEYS = 10_000


class SlidingWindow:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits

    def retry_after(self, key: str) -> int:
        """0 when ``key`` is under its limit, else the whole seconds until it is."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return 0
        return max(1, math.ceil(hits[0] + self.window_s - now))

    def hit(self, key: str) -> None:
        now = time.monotonic()
        if len(self._hits) > MAX_KEYS:  # someone sprays names or addresses: forget the expired ones
            for stale in list(self._hits):
                self._recent(stale, now)
        self._recent(key, now)
        self._hits.setdefault(key, deque()).append(now)

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)
