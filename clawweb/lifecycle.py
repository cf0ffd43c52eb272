"""Ending open streams when the worker stops.

Open SSE streams never end on their own, and gunicorn SIGKILLs a worker that still has connections after
``graceful_timeout``. So a greenlet watches the worker's ``alive`` flag (cleared on SIGTERM/SIGHUP/max_requests)
and wakes every open stream: each writes a final frame, its ``finally`` runs, and its client reconnects to the
new worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gevent

RESTARTING = "the gateway is restarting; please retry"  # what a stream's final frame says
_wakers: set[Callable[[], None]] = set()
_stopping = False


def _stop_all() -> None:
    global _stopping
    _stopping = True
    for wake in list(_wakers):
        wake()


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
def registered(wake: Callable[[], None]) -> Iterator[None]:
    """Call ``wake`` when the worker stops (at once if it already is) while the block runs."""
    _wakers.add(wake)
    if _stopping:
        wake()
    try:
        yield
    finally:
        _wakers.discard(wake)
