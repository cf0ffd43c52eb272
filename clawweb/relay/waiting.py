"""Waiting in the admission queue: what an answer's relay and an embedding request both do before their slot."""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis

from .. import lifecycle
from ..config import Settings
from ..state.base import Slots, Ticket
from ..state.redis import unavailable_message
from .events import Failure, Heartbeat, Queued


def waiting(admission: Slots, ticket: Ticket, settings: Settings) -> Iterator[Queued | Heartbeat | Failure]:
    """Until ``ticket`` holds a slot: ``Queued`` on every move, a heartbeat on silence. A ``Failure`` ends the wait:
    the worker stops, no slot within ``CLAWWEB_QUEUE_TIMEOUT_S``, or Redis (holding the queue) went away; those
    are in-band errors for a stream, never exceptions in the middle of one."""
    deadline = ticket.created + settings.queue_timeout_s
    announced = 0
    with lifecycle.registered(ticket.changed.set):
        while not ticket.admitted:
            if lifecycle.stopping():
                yield Failure(lifecycle.RESTARTING, "shutdown")
                return
            if time.monotonic() >= deadline:
                message = f"waited {settings.queue_timeout_s:g} s for a free slot; retry later"
                yield Failure(message, "queue_timeout", 503)
                return
            try:
                if ticket.position != announced:
                    announced = ticket.position
                    yield Queued(ticket.position, admission.active)
                changed = admission.wait(ticket, min(settings.heartbeat_s, max(deadline - time.monotonic(), 0)))
            except redis.RedisError as exc:
                yield Failure(unavailable_message(exc), "shared_state", 503)
                return
            if not changed:
                yield Heartbeat.BEAT
