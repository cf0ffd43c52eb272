"""Ending open streams when the worker stops.

Open SSE streams never end on their own, and gunicorn SIGKILLs a worker that still has connections after
``graceful_timeout``. So a greenlet watches the worker's ``alive`` flag (cleared on SIGTERM/SIGHUP/max_requests)
and drops a ``SHUTDOWN`` marker into every open stream's queue: each stream writes a final frame, its
``finally`` runs, and its client reconnects to the new worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent

SHUTDOWN = object()
_open: set[Any] = set()  # the queues of open streams (anything with ``put``)
_stopping = False


def _stop_all() -> None:
    global _stopping
    _stopping = True
    for queue in list(_open):
        queue.put(SHUTDOWN)


def watch(is_alive: Callable[[], bool], interval_s: float = 0.2) -> None:
    """Start watching; called from gunicorn's ``post_worker_init`` hook with ``lambda: worker.alive``."""

    def poll() -> None:
        while is_alive():
            gevent.sleep(interval_s)
        _stop_all()

    gevent.spawn(poll)


def stopping() -> bool:
    return _stopping


@contextmanager
def registered(queue: Any) -> Iterator[None]:
    """Keep ``queue`` in the set that receives ``SHUTDOWN``; a stream opened while stopping gets it at once."""
    _open.add(queue)
    if _stopping:
        queue.put(SHUTDOWN)
    try:
        yield
    finally:
        _open.discard(queue)


def open_streams() -> int:
    return len(_open)
