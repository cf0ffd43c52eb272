"""The directory of running answers in Redis: any process finds, follows and stops any answer, and the answers
of a process that died are ended, for everyone, by whichever other process notices first.

Keys, for generation ``<id>`` of conversation ``<c>``: ``clawweb:gen:<id>`` (a hash: conversation_id, owner,
message_id, status; hours while it runs, ``ttl_s`` once it ended), ``clawweb:conv:<c>:running`` (the running
answer's id, for one lease: its process renews it), ``clawweb:gen:leases`` (running answers by lease deadline:
where the lease rounds look for dead ones) and ``clawweb:gen:<id>:readers`` (its readers in every process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis

from ..outage import Outage
from .base import FINAL_EVENTS, Answer, Listed
from .redis import PREFIX, LeaseRenewer
from .redis_log import log_key

log = logging.getLogger(__name__)

LIVE_TTL_S = 6 * 3600  # the state of a running answer outlives any answer; a crash leaves no garbage
LEASES = PREFIX + "gen:leases"
EXPIRED_PER_ROUND = 100

# End an answer whose process stopped renewing its lease, unless it ended or was renewed meanwhile: atomic, so
# of all the processes that notice, one ends it. KEYS: state, running, log, leases. ARGV: generation id, final
# event, its data, log ttl (ms), state ttl (s). Returns 1 when this call ended it.
_END_ABANDONED = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'streaming' then
  if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[2], 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[4], ARGV[1])
return 0
"""
# A finished answer gives up its conversation's "running" key, unless a newer answer holds it by now.
_FORGET_RUNNING = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"


def state_key(generation_id: str, part: str = "") -> str:
    return f"{PREFIX}gen:{generation_id}" + (f":{part}" if part else "")


def running_key(conversation_id: str) -> str:
    return f"{PREFIX}conv:{conversation_id}:running"


class RedisDirectory:
    def __init__(self, client: redis.Redis, ttl_s: float, lease_s: float) -> None:
        """``ttl_s``: how long an ended answer's state and log stay (for late readers)."""
        self._redis = client
        self._ttl_s = ttl_s
        self.lease_s = lease_s
        self._end_script = client.register_script(_END_ABANDONED)
        self._forget_running = client.register_script(_FORGET_RUNNING)
        self._local: Mapping[str, Answer] = {}
        self._end: Callable[[Listed], object] = lambda answer: None
        self._unpublished: dict[str, Answer] = {}  # finished, but Redis was away when they said so
        self._counting = Outage("redis: counting readers")
        self._renewer = LeaseRenewer("redis: renewing answers' leases", lease_s, self._round)

    def publish(self, answer: Answer) -> None:
        try:
            self._publish([answer])
        except redis.RedisError as exc:  # the lease round publishes it again (a running answer's state every round)
            log.warning("redis: publishing answer %s (%s): %s; retrying", answer.id, answer.status, exc)
            if answer.finished:
                self._unpublished[answer.id] = answer

    def _publish(self, answers: Iterable[Answer]) -> None:
        pipe = self._redis.pipeline()
        deadline = time.time() + self.lease_s
        for answer in answers:
            ttl = self._ttl_s if answer.finished else LIVE_TTL_S
            key, running = state_key(answer.id), running_key(answer.conversation_id)
            state = {
                "conversation_id": answer.conversation_id,
                "owner": "" if answer.owner is None else str(answer.owner),
                "message_id": str(answer.message_id),
                "status": answer.status,
            }
            pipe.hset(key, mapping=cast(Any, state))
            pipe.expire(key, int(ttl) + 1)
            if answer.finished:
                self._forget_running(keys=[running], args=[answer.id], client=pipe)
                pipe.zrem(LEASES, answer.id)
            else:
                pipe.set(running, answer.id, px=int(self.lease_s * 1000))
                pipe.zadd(LEASES, {answer.id: deadline})
        pipe.execute()

    def watch(self, local: Mapping[str, Answer], end: Callable[[Listed], object]) -> None:
        self._local, self._end = local, end
        self._renewer.start()

    def _round(self) -> None:
        """Renew this process's answers (their whole state, so a Redis that restarted empty has them back),
        publish the ends Redis missed, and hand on the answers of processes that died."""
        shown = [a for a in self._local.values() if not a.finished] + list(self._unpublished.values())
        if shown:
            self._publish(shown)
            for answer in shown:
                self._unpublished.pop(answer.id, None)
        expired: Any = self._redis.zrangebyscore(LEASES, "-inf", time.time(), start=0, num=EXPIRED_PER_ROUND)
        for raw in expired:
            generation_id = raw.decode()
            if generation_id in self._local:
                continue
            state: Any = self._redis.hgetall(state_key(generation_id))
            if b"conversation_id" in state:
                self._end(_listed(generation_id, state, held=False))
            else:
                self._redis.zrem(LEASES, generation_id)

    def lookup(self, generation_id: str) -> Listed | None:
        state: Any = self._redis.hgetall(state_key(generation_id))
        if b"conversation_id" not in state:
            return None
        held = True
        if state[b"status"].decode() not in FINAL_EVENTS:  # its process renews the "running" key with its lease
            running: Any = self._redis.get(running_key(state[b"conversation_id"].decode()))
            held = running == generation_id.encode()
        return _listed(generation_id, state, held)

    def running(self, conversation_id: str) -> str | None:
        running: Any = self._redis.get(running_key(conversation_id))
        return running.decode() if running else None

    def end_abandoned(self, answer: Listed, status: str, payload: str) -> bool:
        keys = [state_key(answer.id), running_key(answer.conversation_id), log_key(answer.id), LEASES]
        args: list[str | int] = [answer.id, status, payload, int(self._ttl_s * 1000), int(self._ttl_s) + 1]
        return bool(self._end_script(keys=keys, args=args))

    def reading(self, generation_id: str, change: int) -> None:
        key = state_key(generation_id, "readers")  # its own key: a late reader must not recreate the state
        try:
            pipe = self._redis.pipeline()
            pipe.incrby(key, change)
            pipe.expire(key, LIVE_TTL_S)
            pipe.execute()
            self._counting.ok()
        except redis.RedisError as exc:
            self._counting.failed(exc)

    def readers(self, generation_id: str) -> int:
        try:
            return int(self._redis.get(state_key(generation_id, "readers")) or 0)
        except redis.RedisError:
            return 1  # unknown: never cancel an answer because Redis is away


def _listed(generation_id: str, state: dict[bytes, bytes], held: bool) -> Listed:
    owner = state[b"owner"].decode()
    return Listed(
        id=generation_id,
        conversation_id=state[b"conversation_id"].decode(),
        owner=int(owner) if owner else None,
        message_id=int(state[b"message_id"]),
        status=state[b"status"].decode(),
        held=held,
    )
