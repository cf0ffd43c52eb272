"""Work that must not run on the event loop, run in an OS thread, its exception raised in the caller.

A gevent worker serves every stream it holds from one event loop: a second of CPU spent there (parsing and
converting a large import) is a second in which no stream gets a token. In a thread the loop still runs: the
GIL changes hands every few milliseconds between Python bytecodes (a single long C call, such as ``json.loads``
of one huge document, still holds it for its whole length).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from gevent import get_hub
from gevent.threadpool import ThreadPool

T = TypeVar("T")


def captured(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Exception | None, Any]:
    """``(None, fn(*args))`` or ``(its exception, None)``: an exception raised inside a gevent thread would also
    be printed by gevent as a traceback, though the caller handles it (a 400 for a malformed file is no bug)."""
    try:
        return None, fn(*args)
    except Exception as exc:
        return exc, None


def in_thread(fn: Callable[..., T], *args: Any, pool: ThreadPool | None = None) -> T:
    """``fn(*args)`` in ``pool`` (default: the hub's), waited for cooperatively; its exception raised here."""
    failure, result = (pool or get_hub().threadpool).apply(captured, (fn, args))
    if failure is not None:
        raise failure
    return cast(T, result)
