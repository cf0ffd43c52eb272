"""Admission control: at most ``max_active`` generations upstream, a bounded FIFO queue behind them, and a
per-client cap, so a burst of users never piles onto Ollama (whose own queue gives no feedback at all).

Everything runs in one gevent hub, so plain attributes need no locks: nothing here yields except ``wait``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, deque
from typing import Protocol, cast

import gevent.event
from flask import Flask, current_app

from .config import Settings
from .errors import ApiError
from .metrics import ACTIVE, QUEUED, REFUSALS

RETRY_AFTER_BUSY_S = 30  # the whole gateway is full: come back in a while
RETRY_AFTER_CLIENT_S = 5  # this client already has its share: one of its own streams will end soon


class Refused(ApiError):
    def __init__(self, status: int, reason: str, message: str, retry_after: int) -> None:
        super().__init__(status, message, {"Retry-After": str(retry_after)})
        REFUSALS.labels(reason).inc()


def client_limit(max_per_client: int) -> Refused:
    return Refused(
        429,
        "client_limit",
        f"too many requests from this client at once ({max_per_client}, CLAWWEB_MAX_ACTIVE_PER_CLIENT); "
        "wait for one to finish",
        RETRY_AFTER_CLIENT_S,
    )


def queue_full(max_active: int, max_queue: int) -> Refused:
    return Refused(
        503,
        "queue_full",
        f"the gateway is at capacity ({max_active} answering, {max_queue} waiting); retry later",
        RETRY_AFTER_BUSY_S,
    )


class Ticket:
    """One request's place: ``position`` 0 means admitted (upstream slot held)."""

    def __init__(self, client: str) -> None:
        self.id = secrets.token_hex(8)
        self.client = client
        self.position = 0
        self.created = time.monotonic()
        self.admitted_at: float | None = None
        self.changed = gevent.event.Event()  # set whenever position changes (or the worker stops)

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None

    @property
    def queue_wait_s(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.created


class Admission:
    def __init__(self, max_active: int, max_queue: int, max_per_client: int) -> None:
        self.max_active = max_active
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        self.active = 0
        self._queue: deque[Ticket] = deque()
        self._per_client: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enter(self, client: str) -> Ticket:
        """Take a slot or a place in the queue, or raise ``Refused`` (before any stream starts)."""
        if self._per_client[client] >= self.max_per_client:
            raise client_limit(self.max_per_client)
        ticket = Ticket(client)
        if self.active < self.max_active and not self._queue:
            self._admit(ticket)
        elif len(self._queue) >= self.max_queue:
            raise queue_full(self.max_active, self.max_queue)
        else:
            self._queue.append(ticket)
            ticket.position = len(self._queue)
        self._per_client[client] += 1
        self._publish()
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give back the slot, or the place in the queue. Idempotent; called from the generator's ``finally``."""
        if ticket.position < 0:
            return
        if ticket.admitted:
            self.active -= 1
        else:
            self._queue.remove(ticket)
        ticket.position = -1
        self._per_client[ticket.client] -= 1
        if not self._per_client[ticket.client]:
            del self._per_client[ticket.client]
        while self._queue and self.active < self.max_active:
            self._admit(self._queue.popleft())
        self._renumber()
        self._publish()

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Block until ``ticket``'s position changes (True) or ``timeout`` passes (False)."""
        changed = bool(ticket.changed.wait(timeout))
        ticket.changed.clear()
        return changed

    def _admit(self, ticket: Ticket) -> None:
        self.active += 1
        ticket.position = 0
        ticket.admitted_at = time.monotonic()
        ticket.changed.set()

    def _publish(self) -> None:
        ACTIVE.set(self.active)
        QUEUED.set(len(self._queue))

    def _renumber(self) -> None:
        for position, ticket in enumerate(self._queue, start=1):
            if ticket.position != position:
                ticket.position = position
                ticket.changed.set()


class Slots(Protocol):
    """What the relay needs from admission: ``Admission`` here, ``RedisAdmission`` across workers and hosts."""

    max_active: int

    @property
    def active(self) -> int: ...

    def enter(self, client: str) -> Ticket: ...

    def release(self, ticket: Ticket) -> None: ...

    def wait(self, ticket: Ticket, timeout: float) -> bool: ...


def init_app(app: Flask, settings: Settings) -> None:
    limits = (settings.max_active, settings.max_queue, settings.max_active_per_client)
    if "clawweb.redis" in app.extensions:
        from .admission_redis import RedisAdmission

        app.extensions["clawweb.admission"] = RedisAdmission(
            app.extensions["clawweb.redis"], app.extensions["clawweb.bus"], *limits
        )
    else:
        app.extensions["clawweb.admission"] = Admission(*limits)


def get_admission() -> Slots:
    return cast(Slots, current_app.extensions["clawweb.admission"])
