"""The background health check that keeps what is known about several Ollama hosts fresh, and running work on
every host at once.

One greenlet per process; it only waits on sockets with short timeouts (``CHECK_TIMEOUT_S``), so it never holds
up the event loop, and it ends when the worker stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import gevent

from .. import lifecycle
from .hosts import Host

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 2.0  # a host that went down or came back is noticed within this (plus one check)
CHECK_TIMEOUT_S = 2.0  # /api/tags and /api/ps answer from memory: slower than this is as good as down


def each(hosts: Sequence[Host], work: Callable[[Host], None]) -> None:
    """``work`` on every host at once (one greenlet each), so one slow host costs no more than its own timeout.

    ``work`` must not raise: a greenlet that dies prints a traceback into gunicorn's log.
    """
    if len(hosts) == 1:
        work(hosts[0])
        return
    gevent.joinall([gevent.spawn(work, host) for host in hosts])


def monkey_patched() -> bool:
    """True in a gunicorn gevent worker. Elsewhere (the master, in-process test apps) a greenlet doing blocking
    requests would run inside whatever the main thread happens to be doing, so no checker is started there."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


class HealthChecker:
    """One greenlet per process re-checking every host every ``interval`` seconds, started on first use.

    Started lazily (by the client, on its first request) rather than in ``create_app``: gunicorn's master never
    serves, and a greenlet started at import would outlive in-process test apps.
    """

    def __init__(self, check_round: Callable[[], None], interval: float = HEALTH_INTERVAL_S) -> None:
        self._check_round = check_round
        self._interval = interval
        self._greenlet: gevent.Greenlet | None = None

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def start(self) -> None:
        if self._greenlet is None and monkey_patched():
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while not lifecycle.stopping():
            try:
                self._check_round()
            except Exception as exc:  # never let the checker die: it is the only way back for a failed host
                log.warning("Ollama health check failed: %r", exc)
            gevent.sleep(self._interval)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
