"""``Closing``: a WSGI body handed to the server as it is, that runs one more step after its own ``close``.

No wrapper per chunk (``__iter__`` returns the body's own iterator, so streams pay nothing per token): gunicorn
iterates it itself and calls ``close`` in every case, also when iteration never started. ``close`` closes the
body (a generator's ``finally`` runs), then calls ``after`` whatever that did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


class Closing:
    def __init__(self, body: Iterable[bytes], after: Callable[[], None] | None) -> None:
        self._body = body
        self._after = after

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self._after is not None:
                self._after()
