"""Admission shared through Redis: the same limits as memory's ``Admission``, over every worker and host.

State (all under ``clawweb:adm:``): ``active`` (tickets holding a slot), ``queue`` (waiting tickets by arrival),
``owner`` (ticket → client) and ``clients`` (client → tickets held), ``lanes``, ``turns``, ``pos`` and ``why``
(the lanes' order, lanes.py), and ``leases``: every ticket's holder renews its lease, so the places of a worker
that died free themselves within ``LEASE_S``. Each change is one Lua script, so two processes never both take
the last slot; the script that changes the queue gives the free slots out and numbers every waiter (``settle``),
so a poll only reads. A release, and an arrival that moved others back, is published; processes wake their
queued tickets, which read their new position.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis

from ..metrics import POOL_GAUGES, publish_lanes
from . import lanes
from .base import Bus, Ticket, client_limit, queue_full
from .lanes import DEFAULT_SHARES
from .redis import PREFIX, LeaseRenewer

LEASE_S = 30.0
log = logging.getLogger(__name__)
ADMISSION = PREFIX + "adm:"  # the answers' pool (the doctor reads these keys too); other pools below it
NAMES = ("active", "queue", "owner", "clients", "leases", "seq", "lanes", "turns", "pos", "why")


def pool_keys(pool: str) -> list[str]:
    """The keys of one pool of slots: answers under ``clawweb:adm:`` as before pools existed, others under
    ``clawweb:adm:<pool>:``."""
    prefix = ADMISSION if pool == "answers" else f"{ADMISSION}{pool}:"
    return [prefix + name for name in NAMES]


# Every script: drop the tickets whose lease ran out (their process died); ``settle`` is lanes.py's ``plan`` step
# by step (the free slots to the first in its order, every waiter's position; ``lanes`` ticket → lane, ``turns``
# "lane|user" → when the user's turn came last, ``pos`` and ``why`` a waiter's position and why it last grew).
# ARGV: now, max_active, the interactive, api and batch lanes' most slots while another lane waits, then the
# script's own.
_PURGE = """
local active, queue, owner, clients, leases, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local lanes, turns, pos, why = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local now, max_active = tonumber(ARGV[1]), tonumber(ARGV[2])
local LANES = {'interactive', 'api', 'batch'}
local RANK = {interactive = 1, api = 2, batch = 3}
local cap = {interactive = tonumber(ARGV[3]), api = tonumber(ARGV[4]), batch = tonumber(ARGV[5])}
local function hold(ticket, who)  -- count a ticket against its client
  redis.call('HSET', owner, ticket, who)
  redis.call('HINCRBY', clients, who, 1)
end
local function lane_of(ticket)
  local lane = redis.call('HGET', lanes, ticket)
  if RANK[lane] then return lane end
  return 'api'
end
local function enqueue(ticket, who, lane)  -- at the end of its lane; a user new to the lane at the end of its ring
  redis.call('ZADD', queue, redis.call('INCR', seq), ticket)
  redis.call('HSET', lanes, ticket, lane)
  redis.call('HSETNX', turns, lane .. '|' .. who, redis.call('INCR', seq))
end
local function forget(ticket)
  redis.call('ZREM', active, ticket); redis.call('ZREM', queue, ticket); redis.call('ZREM', leases, ticket)
  redis.call('HDEL', lanes, ticket); redis.call('HDEL', pos, ticket); redis.call('HDEL', why, ticket)
  local who = redis.call('HGET', owner, ticket)
  if who then
    redis.call('HDEL', owner, ticket)
    if redis.call('HINCRBY', clients, who, -1) <= 0 then redis.call('HDEL', clients, who) end
  end
end
local function push(list, value) list.last = list.last + 1; list[list.last] = value end
local function pop(list)
  local value = list[list.first]
  list[list.first] = nil; list.first = list.first + 1
  return value
end
local function size(list) return list.last - list.first + 1 end
local function reason(arrival, lane)
  if not RANK[arrival] then return 'share' end
  if arrival == lane then return 'turns' end
  if RANK[arrival] < RANK[lane] then return arrival end
  return 'share'
end
-- Returns {admitted now, waiters moved back}.
local function settle(arrival)
  local waiting = redis.call('ZRANGE', queue, 0, -1)
  local fifo, rings = {}, {}
  for _, lane in ipairs(LANES) do fifo[lane] = {}; rings[lane] = {first = 1, last = 0} end
  for _, ticket in ipairs(waiting) do
    local lane, who = lane_of(ticket), redis.call('HGET', owner, ticket) or ''
    local mine = fifo[lane][who]
    if not mine then
      mine = {first = 1, last = 0}; fifo[lane][who] = mine
      local key = lane .. '|' .. who
      if not redis.call('HGET', turns, key) then redis.call('HSET', turns, key, redis.call('INCR', seq)) end
      push(rings[lane], who)
    end
    push(mine, ticket)
  end
  for _, key in ipairs(redis.call('HKEYS', turns)) do  -- the turns of users no longer waiting
    local lane, who = string.match(key, '^(%a+)|(.*)$')
    if not (lane and fifo[lane] and fifo[lane][who]) then redis.call('HDEL', turns, key) end
  end
  for _, lane in ipairs(LANES) do
    local ring, turn = rings[lane], {}
    for i = ring.first, ring.last do turn[ring[i]] = tonumber(redis.call('HGET', turns, lane .. '|' .. ring[i])) end
    local users = {}
    for i = ring.first, ring.last do users[#users + 1] = ring[i] end
    table.sort(users, function(a, b) return turn[a] < turn[b] end)
    rings[lane] = {first = 1, last = #users}
    for i, who in ipairs(users) do rings[lane][i] = who end
  end
  local held, ending = {interactive = 0, api = 0, batch = 0}, {first = 1, last = 0}
  for _, ticket in ipairs(redis.call('ZRANGE', active, 0, -1)) do  -- oldest first: predicted to end first
    local lane = lane_of(ticket)
    held[lane] = held[lane] + 1; push(ending, lane)
  end
  local placed, now_count, admitted, moved = 0, nil, 0, 0
  while placed < #waiting do
    if size(ending) >= max_active then
      now_count = now_count or placed
      local lane = pop(ending); held[lane] = held[lane] - 1
    else
      local choice, others = nil, 0
      for _, lane in ipairs(LANES) do
        if size(rings[lane]) > 0 then
          others = others + 1
          choice = choice or lane
        end
      end
      if others > 1 then
        for _, lane in ipairs(LANES) do
          if size(rings[lane]) > 0 and held[lane] < cap[lane] then choice = lane; break end
        end
      end
      local who = pop(rings[choice])
      local mine = fifo[choice][who]
      local ticket = pop(mine)
      if size(mine) > 0 then push(rings[choice], who) end
      placed = placed + 1
      held[choice] = held[choice] + 1; push(ending, choice)
      if not now_count then  -- a free slot: it takes it now
        redis.call('ZREM', queue, ticket); redis.call('ZADD', active, now, ticket)
        redis.call('HDEL', pos, ticket); redis.call('HDEL', why, ticket)
        local key = choice .. '|' .. who
        if size(mine) > 0 then redis.call('HSET', turns, key, redis.call('INCR', seq))
        else redis.call('HDEL', turns, key) end
        admitted = admitted + 1
      else
        local position, before = placed - now_count, tonumber(redis.call('HGET', pos, ticket))
        if before and before < position then
          redis.call('HSET', why, ticket, reason(arrival, choice)); moved = moved + 1
        end
        if before ~= position then redis.call('HSET', pos, ticket, position) end
      end
    end
  end
  return {admitted, moved}
end
local freed = 0
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
for _, ticket in ipairs(dead) do forget(ticket) end
if #dead > 0 then freed = settle('')[1] end
"""
# ARGV (after the common five): ticket, client, lease deadline, max_queue, max_per_client, lane.
# Returns {position (0: admitted, -1: client limit, -2: queue full), active, reason, others woken}.
_ENTER = (
    _PURGE
    + """
local ticket, who, lane = ARGV[6], ARGV[7], ARGV[11]
if tonumber(redis.call('HGET', clients, who) or 0) >= tonumber(ARGV[10]) then
  return {-1, redis.call('ZCARD', active), '', freed}
end
local position = 0
if redis.call('ZCARD', active) < max_active and redis.call('ZCARD', queue) == 0 then
  redis.call('ZADD', active, now, ticket)
  redis.call('HSET', lanes, ticket, lane)
  hold(ticket, who)
elseif redis.call('ZCARD', queue) >= tonumber(ARGV[9]) then
  return {-2, redis.call('ZCARD', active), '', freed}
else
  enqueue(ticket, who, lane)
  hold(ticket, who)
  local settled = settle(lane)
  freed = freed + settled[1] + settled[2]
  position = tonumber(redis.call('HGET', pos, ticket) or 0)
end
redis.call('ZADD', leases, ARGV[8], ticket)
return {position, redis.call('ZCARD', active), '', freed}
"""
)
# ARGV (after the common five): ticket, lease deadline, client, lane. Returns as _ENTER; a ticket that was purged
# meanwhile (Redis lost it) queues again at the end.
_POLL = (
    _PURGE
    + """
local ticket = ARGV[6]
if not redis.call('ZSCORE', active, ticket) and not redis.call('ZSCORE', queue, ticket) then
  enqueue(ticket, ARGV[8], ARGV[9])
  hold(ticket, ARGV[8])
  freed = freed + settle('')[1]
end
redis.call('ZADD', leases, ARGV[7], ticket)
if redis.call('ZSCORE', active, ticket) then return {0, redis.call('ZCARD', active), '', freed} end
local position = tonumber(redis.call('HGET', pos, ticket) or 1)
return {position, redis.call('ZCARD', active), redis.call('HGET', why, ticket) or '', freed}
"""
)
# ARGV (after the common five): ticket.
_RELEASE = (
    _PURGE
    + """
forget(ARGV[6])
settle('')
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
        shares: Sequence[tuple[str, float]] = DEFAULT_SHARES,
    ) -> None:
        self.pool = pool
        self._keys = pool_keys(pool)
        self._channel = "admission" if pool == "answers" else f"admission:{pool}"
        self._redis = client
        self._bus = bus
        self.max_active = max_active
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        caps = lanes.caps(max_active, shares)
        self._common = [max_active, *(caps[lane] for lane in lanes.LANES)]
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

    def enter(self, client: str, lane: str = "api") -> Ticket:
        self._bus.start()
        self._renewer.start()
        ticket = Ticket(client, lane)
        args = (ticket.id, client, self._deadline(), self.max_queue, self.max_per_client, lane)
        position, _, woken = self._run(self._enter, *args)
        if position == -1:
            raise client_limit(self.max_per_client, self.pool)
        if position == -2:
            raise queue_full(self.max_active, self.max_queue, self.pool)
        self._set(ticket, position, None)
        self._mine[ticket.id] = ticket
        if woken:  # others moved back (a higher lane arrived) or took slots a dead holder left: tell them
            self._bus.publish(self._channel, ticket.id)
        self._publish_gauges()
        return ticket

    def release(self, ticket: Ticket) -> None:
        if self._mine.pop(ticket.id, None) is None:
            return
        ticket.position = -1
        try:
            self._release(keys=self._keys, args=[time.time(), *self._common, ticket.id])
            self._bus.publish(self._channel, ticket.id)
        except redis.RedisError as exc:  # no longer renewed, its lease frees the place once Redis answers again
            log.warning("redis: releasing an admission place: %s; its lease frees it within %g s", exc, LEASE_S)
        self._publish_gauges()

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Until a place changed anywhere (True) or ``timeout`` passed (False); then asks its position."""
        changed = bool(ticket.changed.wait(timeout))
        ticket.changed.clear()
        position, reason, woken = self._run(self._poll, ticket.id, self._deadline(), ticket.client, ticket.lane)
        self._set(ticket, position, reason)
        if woken:
            self._bus.publish(self._channel, ticket.id)
        return changed

    def _run(self, script: Any, *args: object) -> tuple[int, str | None, int]:
        """(position, why it last grew, how many others to wake)."""
        position, _, reason, woken = script(keys=self._keys, args=[time.time(), *self._common, *args])
        return int(position), (reason.decode() if reason else None), int(woken)

    def _set(self, ticket: Ticket, position: int, reason: str | None) -> None:
        if position == 0 and ticket.admitted_at is None:
            ticket.admitted_at = time.monotonic()
        ticket.position = position
        ticket.reason = reason or ticket.reason

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
        tickets = self._mine.values()
        admitted = [ticket for ticket in tickets if ticket.admitted]
        active, queued = POOL_GAUGES[self.pool]
        active.set(len(admitted))
        queued.set(len(self._mine) - len(admitted))
        if self.pool == "answers":  # the embedding pool has one lane: its gauges say it all
            held = Counter(ticket.lane for ticket in admitted)
            publish_lanes(held, Counter(ticket.lane for ticket in tickets if not ticket.admitted))
