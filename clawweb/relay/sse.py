"""Server-Sent Events framing (the WHATWG ``text/event-stream`` format), in bytes.

Pure functions. The relay calls ``line_frame`` once per upstream line, so that one is a single ``%`` format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx honours this per response, so streaming works even behind a site that buffers by default.
    "X-Accel-Buffering": "no",
}

RETRY_MS = 2000  # EventSource's reconnect delay after a dropped connection, on the streams the page follows
OPENING = b": ok\n\n"  # sent at once: headers and the browser's `open` event must not wait for the model
KEEP_ALIVE = b": keep-alive\n\n"  # a comment: what a heartbeat becomes on an SSE stream
# What it becomes on a generation's stream, which the page reads: an event, so that the page sees bytes arrive (a
# comment never reaches EventSource's listeners) and can tell a quiet stream from a dead one.
HEARTBEAT_EVENT = b"event: heartbeat\ndata: {}\n\n"


def frame(data: bytes, *, event: str | None = None, id: int | str | None = None, retry: int | None = None) -> bytes:
    """One event: optional ``event:``/``id:``/``retry:`` fields, one ``data:`` line per line of ``data``."""
    head = b""
    if event is not None:
        head += b"event: %b\n" % event.encode()
    if id is not None:
        head += b"id: %b\n" % str(id).encode()
    if retry is not None:
        head += b"retry: %d\n" % retry
    body = b"".join(b"data: %b\n" % line for line in data.splitlines() or [b""])
    return head + body + b"\n"


def line_frame(line: bytes, id: int) -> bytes:
    """``id: N`` + ``data: <line>``, the relay's per-token frame, without ``frame``'s scans for line breaks:
    ``line`` comes from ``iter_lines``, which splits on CR and LF, so it holds neither."""
    return b"id: %d\ndata: %b\n\n" % (id, line)


def json_frame(payload: Any, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """An event whose data is ``payload`` as compact JSON (escaped to ASCII, so never a raw line break)."""
    return frame(json.dumps(payload, separators=(",", ":")).encode(), event=event, id=id)


def follow(
    entries: Iterable[tuple[str, str, bytes] | None],
    *,
    heartbeat: bytes,
    failures: tuple[type[Exception], ...],
    failure_event: str,
) -> Iterator[bytes]:
    """A log's entries (id, event, data) as SSE for EventSource: the reconnect delay and the opening first, each entry
    with its id, ``heartbeat`` for each silence (``None``), and when one of ``failures`` ends the entries, one
    ``failure_event`` frame ``{"error": ...}`` last. Never by raising: the response has started, and an exception
    would cut it mid-body (or become gunicorn's HTML 500 before the first byte)."""
    yield b"retry: %d\n" % RETRY_MS + OPENING
    try:
        for entry in entries:
            if entry is None:
                yield heartbeat
            else:
                entry_id, event, data = entry
                yield frame(data, event=event, id=entry_id)
    except failures as exc:
        yield json_frame({"error": str(exc)}, event=failure_event)
