"""Cutting clients that stop reading: a stream whose client accepts nothing for ``CLAWWEB_SEND_TIMEOUT_S``.

gunicorn writes each chunk a streaming body yields with a blocking ``sendall``; a client that stops reading
(a laptop lid closed without a FIN, a stalled phone) keeps that write, its greenlet and whatever the stream
holds, for as long as TCP keeps the connection (hours). Each watched stream notes when it handed over a chunk
and clears the note when gunicorn asks for the next one; one greenlet per process looks every second for
notes older than the bound and ends those writes with ``EPIPE``, which gunicorn treats as a client gone (the
body's ``close`` and ``finally`` then run as for any disconnect).

The same look tells a stream whose write has waited ``SLOW_AFTER_S`` that its client fell behind (``on_slow``):
a relay then reads ahead of it into a bounded buffer (``UpstreamStream.read_ahead``) instead of leaving the answer,
and Ollama's slot, waiting on the client's pace.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator

import gevent

from .metrics import SLOW_CLIENTS

log = logging.getLogger(__name__)
CHECK_EVERY_S = 1.0
SLOW_AFTER_S = 0.5  # a write to a client that keeps up takes microseconds: one waiting this long is a full window


class _Watched:
    __slots__ = ("greenlet", "since", "on_cut", "on_slow")

    def __init__(
        self, greenlet: gevent.Greenlet[..., object], on_cut: Callable[[], None], on_slow: Callable[[], None]
    ) -> None:
        self.greenlet = greenlet
        self.since: float | None = None  # when the chunk being written was handed over; None: not writing
        self.on_cut = on_cut
        self.on_slow = on_slow


class SendWatch:
    def __init__(self) -> None:
        self._watched: dict[int, tuple[_Watched, float]] = {}
        self._checker: gevent.Greenlet[[], None] | None = None

    def watch(
        self,
        chunks: Iterator[bytes],
        timeout_s: float,
        on_cut: Callable[[], None],
        on_slow: Callable[[], None] = lambda: None,
    ) -> Iterator[bytes]:
        """``chunks`` as they are, cut when one waits longer than ``timeout_s`` (0: never) to be accepted by the
        client; ``on_slow`` once one has waited ``SLOW_AFTER_S`` (again at each look while it waits).

        Runs in the request's greenlet (the one gunicorn writes from): that is the greenlet a cut wakes."""
        entry = _Watched(gevent.getcurrent(), on_cut, on_slow)
        self._watched[id(entry)] = (entry, timeout_s)
        if self._checker is None:
            self._checker = gevent.spawn(self._check)
        try:
            for chunk in chunks:
                entry.since = time.monotonic()
                yield chunk  # gunicorn writes it; the next request for a chunk means it was accepted
                entry.since = None
        finally:
            self._watched.pop(id(entry), None)
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _check(self) -> None:
        while True:
            gevent.sleep(CHECK_EVERY_S)
            now = time.monotonic()
            for entry, timeout_s in list(self._watched.values()):
                if entry.since is None or now - entry.since < SLOW_AFTER_S:
                    continue
                entry.on_slow()
                if timeout_s and now - entry.since > timeout_s:
                    entry.since = None
                    SLOW_CLIENTS.inc()
                    log.warning("stream cut: the client accepted nothing for %g s (CLAWWEB_SEND_TIMEOUT_S)", timeout_s)
                    entry.on_cut()
                    # The greenlet is blocked in sendall (a chunk is out, none asked for): end that write as a
                    # broken pipe, which gunicorn handles as a client that went away.
                    entry.greenlet.kill(BrokenPipeError(errno.EPIPE, "client stopped reading"), block=False)


WATCH = SendWatch()
