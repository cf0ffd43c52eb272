"""Admission shared through Redis: the same limits as memory's ``Admission``, over every worker and host.

State (all under ``clawweb:adm:``): ``active`` (tickets holding a slot), ``queue`` (waiting tickets by arrival),
``owner`` (ticket → client) and ``clients`` (client → tickets held), and ``leases``: every ticket's holder
renews its lease, so the places of a worker that died free themselves within ``LEASE_S``. Each change is one
Lua script, so two processes never both take the last slot. A release is published; processes wake their
queued tickets, which ask for their new position (and take a slot when they may).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from ..metrics import POOL_GAUGES
from .base import Bus, Ticket, client_limit, queue_full
from .redis import PREFIX, LeaseRenewer

LEASE_S = 30.0
log = logging.getLogger(__name__)
ADMISSION = PREFIX + "adm:"  # the answers' pool (the doctor reads these keys too); other pools below it
NAMES = ("active", "queue", "owner", "clients", "leases", "seq")


def pool_keys(pool: str) -> list[str]:
    """The keys of one pool of slots: answers under ``clawweb:adm:`` as before pools existed, others under
    ``clawweb:adm:<pool>:``."""
    prefix = ADMISSION if pool == "answers" else f"{ADMISSION}{pool}:"
    return [prefix + name for name in NAMES]


# Drop the tickets whose lease ran out (their process died), then the command's own work.
_PURGE = """
local active, queue, owner, clients, leases, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local function hold(ticket, who)  -- count a ticket against its client
  redis.call('HSET', owner, ticket, who)
  redis.call('HINCRBY', clients, who, 1)
end
local function enqueue(ticket)  -- at the end of the queue
  redis.call('ZADD', queue, redis.call('INCR', seq), ticket)
end
local function forget(ticket)
  redis.call('ZREM', active, ticket); redis.call('ZREM', queue, ticket); redis.call('ZREM', leases, ticket)
  local who = redis.call('HGET', owner, ticket)
  if who then
    redis.call('HDEL', owner, ticket)
    if redis.call('HINCRBY', clients, who, -1) <= 0 then redis.call('HDEL', clients, who) end
  end
end
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do forget(dead) end
"""
# ARGV: now, ticket, client, lease deadline, max_active, max_queue, max_per_client.
# Returns {position (0: admitted, -1: client limit, -2: queue full), active}.
_ENTER = (
    _PURGE
    + """
local ticket, who = ARGV[2], ARGV[3]
if tonumber(redis.call('HGET', clients, who) or 0) >= tonumber(ARGV[7]) then
  return {-1, redis.call('ZCARD', active)}
end
local position = 0
if redis.call('ZCARD', active) < tonumber(ARGV[5]) and redis.call('ZCARD', queue) == 0 then
  redis.call('ZADD', active, now, ticket)
elseif redis.call('ZCARD', queue) >= tonumber(ARGV[6]) then
  return {-2, redis.call('ZCARD', active)}
else
  enqueue(ticket)
  position = redis.call('ZCARD', queue)
end
redis.call('ZADD', leases, ARGV[4], ticket)
hold(ticket, who)
return {position, redis.call('ZCARD', active)}
"""
)
# ARGV: now, ticket, lease deadline, max_active, client. The queue's first (free slots) tickets move to active.
# Returns {position, active}; a ticket that was purged meanwhile (Redis lost it) queues again at the end.
_POLL = (
    _PURGE
    + """
local ticket = ARGV[2]
if redis.call('ZSCORE', active, ticket) then
  redis.call('ZADD', leases, ARGV[3], ticket)
  return {0, redis.call('ZCARD', active)}
end
local rank = redis.call('ZRANK', queue, ticket)
if not rank then
  enqueue(ticket)
  hold(ticket, ARGV[5])
  rank = redis.call('ZRANK', queue, ticket)
end
redis.call('ZADD', leases, ARGV[3], ticket)
if rank < tonumber(ARGV[4]) - redis.call('ZCARD', active) then
  redis.call('ZREM', queue, ticket)
  redis.call('ZADD', active, now, ticket)
  return {0, redis.call('ZCARD', active)}
end
return {rank + 1, redis.call('ZCARD', active)}
"""
)
# ARGV: now, ticket.
_RELEASE = (
    _PURGE
    + """
forget(ARGV[2])
return redis.call('ZCARD', active)
"""
)


class RedisAdmission:
    def __init__(
        self,
        client: redis.Redis,
        bus: Bus,
        max_active: int,
        max_queue: int,
        max_per_client: int,
        pool: str = "answers",
    ) -> None:
        self.pool = pool
        self._keys = pool_keys(pool)
        self._channel = "admission" if pool == "answers" else f"admission:{pool}"
        self._redis = client
        self._bus = bus
        self.max_active = max_active
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        self._enter = client.register_script(_ENTER)
        self._poll = client.register_script(_POLL)
        self._release = client.register_script(_RELEASE)
        self._mine: dict[str, Ticket] = {}  # this process's tickets: their leases to renew, to wake on a change
        self._renewer = LeaseRenewer("redis: renewing admission places", LEASE_S, self._renew)
        bus.subscribe(self._channel, self._changed)

    @property
    def active(self) -> int:
        return int(self._redis.zcard(self._keys[0]))

    @property
    def queued(self) -> int:
        return int(self._redis.zcard(self._keys[1]))

    def enter(self, client: str) -> Ticket:
        self._bus.start()
        self._renewer.start()
        ticket = Ticket(client)
        position, _ = self._run(
            self._enter, ticket.id, client, self._deadline(), self.max_active, self.max_queue, self.max_per_client
        )
        if position == -1:
            raise client_limit(self.max_per_client, self.pool)
        if position == -2:
            raise queue_full(self.max_active, self.max_queue, self.pool)
        self._set(ticket, position)
        self._mine[ticket.id] = ticket
        self._publish_gauges()
        return ticket

    def release(self, ticket: Ticket) -> None:
        if self._mine.pop(ticket.id, None) is None:
            return
        ticket.position = -1
        try:
            self._run(self._release, ticket.id)
            self._bus.publish(self._channel, ticket.id)
        except redis.RedisError as exc:  # no longer renewed, its lease frees the place once Redis answers again
            log.warning("redis: releasing an admission place: %s; its lease frees it within %g s", exc, LEASE_S)
        self._publish_gauges()

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Until a slot was released anywhere (True) or ``timeout`` passed (False); then asks its position."""
        changed = bool(ticket.changed.wait(timeout))
        ticket.changed.clear()
        position, _ = self._run(self._poll, ticket.id, self._deadline(), self.max_active, ticket.client)
        self._set(ticket, position)
        return changed

    def _run(self, script: Any, *args: object) -> list[int]:
        result = script(keys=self._keys, args=[time.time(), *args])
        return [int(value) for value in result] if isinstance(result, list) else [int(result)]

    def _set(self, ticket: Ticket, position: int) -> None:
        if position == 0 and ticket.admitted_at is None:
            ticket.admitted_at = time.monotonic()
        ticket.position = position

    def _changed(self, _: str) -> None:
        for ticket in self._mine.values():
            if not ticket.admitted:
                ticket.changed.set()
        self._publish_gauges()

    @staticmethod
    def _deadline() -> float:
        return time.time() + LEASE_S

    def _renew(self) -> None:
        """A ticket Redis lost meanwhile (a restart) is not renewed: it re-queues itself when it polls."""
        if self._mine:
            self._redis.zadd(self._keys[4], {ticket: self._deadline() for ticket in self._mine}, xx=True)

    def _publish_gauges(self) -> None:
        """This process's share, as for ``Admission`` (the multi-process gauges add them up)."""
        admitted = sum(ticket.admitted for ticket in self._mine.values())
        active, queued = POOL_GAUGES[self.pool]
        active.set(admitted)
        queued.set(len(self._mine) - admitted)
