"""``Outage``: a background step that keeps failing is logged when it starts failing and when it works again."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


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
