"""Redis, when ``CLAWWEB_REDIS_URL`` is set: the state that several workers and hosts must share.

One client per process (redis-py's pool; its sockets are gevent's once the worker is patched), and one
subscriber greenlet that hands published messages (stop this generation, an admission slot was freed) to the
handlers registered in this process. Keys and channels all start with ``clawweb:``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import gevent
import redis
from flask import Flask, current_app

PREFIX = "clawweb:"
MAX_CONNECTIONS = 10_000  # per process; redis-server's own default limit (maxclients) is 10000 in all
log = logging.getLogger("gunicorn.error")


class Bus:
    """Publish/subscribe between the processes sharing one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._listener: gevent.Greenlet[[], None] | None = None

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(message)`` for every message on ``channel``; register before the first ``start``."""
        self._handlers.setdefault(PREFIX + channel, []).append(handler)

    def publish(self, channel: str, message: str) -> None:
        self._redis.publish(PREFIX + channel, message)

    def start(self) -> None:
        """Start listening (once; lazily, so a process that never serves a request never connects)."""
        if self._listener is None:
            self._listener = gevent.spawn(self._listen)

    def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(*self._handlers)
                for message in pubsub.listen():
                    for handler in self._handlers.get(message["channel"].decode(), []):
                        handler(message["data"].decode())
            except redis.RedisError as exc:
                log.warning("redis subscriber: %s; retrying in 1 s", exc)
                gevent.sleep(1)
            finally:
                pubsub.close()


def init_app(app: Flask, redis_url: str) -> None:
    if redis_url:
        # Every reader following an answer from another process holds a connection while it waits (XREAD BLOCK).
        client = redis.Redis.from_url(redis_url, health_check_interval=30, max_connections=MAX_CONNECTIONS)
        app.extensions["clawweb.redis"] = client
        app.extensions["clawweb.bus"] = Bus(client)


def get_redis() -> redis.Redis | None:
    return cast("redis.Redis | None", current_app.extensions.get("clawweb.redis"))
