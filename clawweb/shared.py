"""Redis, when ``CLAWWEB_REDIS_URL`` is set: the state that several workers and hosts must share.

One client per process (redis-py's pool; its sockets are gevent's once the worker is patched), and one
subscriber greenlet that hands published messages (stop this generation, an admission slot was freed) to the
handlers registered in this process. Keys and channels all start with ``clawweb:``.

Redis going away is an expected fault, not a bug: every command is bounded (``COMMAND_TIMEOUT_S``, so a paused
redis-server cannot hang a request), a failure before a response starts is a 503 (``errors.py``), and one
inside a stream an in-band error. redis-py reconnects by itself once Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

import gevent
import redis
from flask import Flask, current_app
from redis.backoff import NoBackoff
from redis.retry import Retry

PREFIX = "clawweb:"
MAX_CONNECTIONS = 10_000  # per process; redis-server's own default limit (maxclients) is 10000 in all
COMMAND_TIMEOUT_S = 3.0  # Redis answers in microseconds; this long without an answer, it is stopped or gone
CONNECT_TIMEOUT_S = 2.0
BLOCK_MAX_S = COMMAND_TIMEOUT_S - 1  # a blocking read (XREAD BLOCK) must return before the socket times out
log = logging.getLogger("gunicorn.error")


def unavailable_reason(exc: redis.RedisError) -> str:
    """What a client is told: the kind of failure, not Redis' address (that goes to the log)."""
    if isinstance(exc, redis.BusyLoadingError):  # a ConnectionError too: test it first
        reason = "Redis is loading its data set"
    elif isinstance(exc, redis.TimeoutError):
        reason = f"Redis did not answer within {COMMAND_TIMEOUT_S:g} s"
    elif isinstance(exc, redis.ConnectionError):
        reason = "cannot reach Redis"
    elif isinstance(exc, redis.ResponseError):
        reason = f"Redis refused a command ({str(exc).split(chr(10))[0][:200]})"
    else:
        reason = f"Redis failed ({type(exc).__name__})"
    return f"{reason}; retry shortly"


def unavailable_message(exc: redis.RedisError) -> str:
    return f"shared state unavailable: {unavailable_reason(exc)}"


class Outage:
    """Logs a background step that keeps failing once when it starts failing and once when it works again,
    not on every retry (a Redis outage would otherwise write a warning per answer per second)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self._since is None:
            self._since = time.monotonic()
            log.warning("%s failed: %s; retrying", self._what, exc)

    def ok(self) -> None:
        if self._since is not None:
            log.warning("%s works again after %.1f s", self._what, time.monotonic() - self._since)
            self._since = None


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
        outage = Outage("redis subscriber")
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(*self._handlers)
                outage.ok()
                for message in pubsub.listen():
                    for handler in self._handlers.get(message["channel"].decode(), []):
                        handler(message["data"].decode())
            except redis.RedisError as exc:
                outage.failed(exc)
                gevent.sleep(1)
            finally:
                pubsub.close()


def init_app(app: Flask, redis_url: str) -> None:
    if redis_url:
        # Every reader following an answer from another process holds a connection while it waits (XREAD BLOCK).
        client = redis.Redis.from_url(
            redis_url,
            health_check_interval=30,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        app.extensions["clawweb.redis"] = client
        app.extensions["clawweb.bus"] = Bus(client)


def get_redis() -> redis.Redis | None:
    return cast("redis.Redis | None", current_app.extensions.get("clawweb.redis"))


def ping_problem(client: redis.Redis, timeout_s: float) -> str | None:
    """None if Redis answers PING within ``timeout_s`` on a connection of its own (a pooled one may sit behind
    a paused server for ``COMMAND_TIMEOUT_S``); else why not, for ``/readyz``."""
    pool: Any = client.connection_pool
    options = {**pool.connection_kwargs, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    options["retry"] = Retry(NoBackoff(), 0)
    connection = pool.connection_class(**options)
    try:
        connection.connect()
        connection.send_command("PING")
        connection.read_response()
    except redis.RedisError as exc:
        if isinstance(exc, redis.TimeoutError):
            return f"shared state unavailable: Redis did not answer PING within {timeout_s:g} s"
        return unavailable_message(exc)
    finally:
        connection.disconnect()
    return None


def shared_state_problem(timeout_s: float) -> str | None:
    """For ``/readyz``: None without Redis or when it answers."""
    client = get_redis()
    return None if client is None else ping_problem(client, timeout_s)
