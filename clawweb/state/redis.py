"""Redis, when ``CLAWWEB_REDIS_URL`` is set: the client, what its failures are called, the bus, lease renewal.

One client per process (redis-py's pool; its sockets are gevent's once the worker is patched), and one
subscriber greenlet that hands published messages (stop this generation, an admission slot was freed) to the
handlers registered in this process. Keys and channels all start with ``clawweb:``; their names and the Lua
scripts' semantics are shared by every gateway version on the same Redis (an upgrade runs old and new at once).
Admission, the event logs, the directory of running answers, the per-owner feeds and the rate windows are in
``redis_admission.py``, ``redis_log.py``, ``redis_answers.py``, ``redis_feed.py`` and ``redis_window.py``.

Redis going away is an expected fault, not a bug: every command is bounded (``COMMAND_TIMEOUT_S``, so a paused
redis-server cannot hang a request), a failure before a response starts is a 503 (``errors.py``), and one
inside a stream an in-band error. redis-py reconnects by itself once Redis answers again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..outage import Outage
from ..storage import StorageUnavailable

PREFIX = "clawweb:"
MAX_CONNECTIONS = 10_000  # per process; redis-server's own default limit (maxclients) is 10000 in all
COMMAND_TIMEOUT_S = 3.0  # Redis answers in microseconds; this long without an answer, it is stopped or gone
CONNECT_TIMEOUT_S = 2.0
BLOCK_MAX_S = COMMAND_TIMEOUT_S - 1  # a blocking read (XREAD BLOCK) must return before the socket times out


def connect(url: str) -> redis.Redis:
    # Every reader following an answer from another process holds a connection while it waits (XREAD BLOCK).
    return redis.Redis.from_url(
        url,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )


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


class RedisBus:
    """Publish/subscribe between the processes sharing one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._listener: gevent.Greenlet[[], None] | None = None

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        self._handlers.setdefault(PREFIX + channel, []).append(handler)

    def publish(self, channel: str, message: str) -> None:
        self._redis.publish(PREFIX + channel, message)

    def start(self) -> None:
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


class LeaseRenewer:
    """What keeps this process's leases (admission places, running answers) alive for the others: ``renew``
    every third of ``lease_s``, for ever from the first ``start`` (lazily: a process that never serves a request
    never connects). A round that fails (Redis, or the database, away) is tried again in the next one; the
    outage is logged when it starts and when it ends."""

    def __init__(self, what: str, lease_s: float, renew: Callable[[], None]) -> None:
        self._what = what
        self._lease_s = lease_s
        self._renew = renew
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        outage = Outage(self._what)
        while True:
            gevent.sleep(self._lease_s / 3)
            try:
                self._renew()
            except (redis.RedisError, StorageUnavailable) as exc:
                outage.failed(exc)
            else:
                outage.ok()
