"""``GET /api/events``: the caller's feed of changes as SSE, resumable, so that every tab and device stays in sync.

``id:`` on every event; ``Last-Event-ID`` (EventSource reconnecting) or ``?after=`` (the page's cursor, rendered
with it) say where to resume; without either it starts from now. A cursor whose events are no longer held gets
``event: reset`` (reload your lists) and the stream goes on from the newest. Heartbeat comments every
``CLAWWEB_HEARTBEAT_S``; when the worker stops the stream ends, and EventSource reconnects to one that stays.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, request

from ..auth import owner
from ..errors import ApiError
from ..relay import sse
from ..relay.responses import streaming_response
from ..services import services
from ..state.base import START, Entry, LogUnavailable, valid_cursor
from . import feed

bp = Blueprint("events", __name__, url_prefix="/api")


def sse_feed(entries: Iterator[Entry | None]) -> Iterator[bytes]:
    """The frames; ``event: unavailable`` last when the shared state fails (not ``error``: EventSource fires its
    own ``error`` for every dropped connection, and a page must tell the two apart)."""
    return sse.follow(entries, heartbeat=sse.KEEP_ALIVE, failures=(LogUnavailable,), failure_event="unavailable")


@bp.get("/events")
def follow_events() -> Response:
    after = request.headers.get("Last-Event-ID") or request.args.get("after")
    if after is not None and not valid_cursor(after):
        raise ApiError(400, "'Last-Event-ID' / 'after' must be an event id such as 1732700000000-0")
    feeds, mine = services().state.feeds, feed.key(owner())
    if after is None:
        after = feeds.cursor(mine) or START  # START: Redis cannot say; the stream begins with a reset
    entries = feeds.follow(mine, after, services().settings.heartbeat_s)
    return streaming_response(sse_feed(entries), headers=sse.HEADERS)
