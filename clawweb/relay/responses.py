"""The responses a relay is sent as: the WSGI body that streams, SSE frames, Ollama-native NDJSON or one answer.

The generators here own the relay's cleanup (``try``/``finally``: ``relay.close``), which runs when the stream
ends, when the client leaves and when the worker stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, assert_never

import requests
from flask import Response, request

from ..closing import Closing
from ..errors import error_response
from ..send_watch import WATCH
from ..services import services
from ..state.base import RETRY_AFTER_BUSY_S
from ..upstream.wire import ollama_error_text
from . import sse
from .events import Failure, Heartbeat, Queued, Status
from .relay import Relay


def streaming_response(
    chunks: Iterator[bytes],
    on_close: Callable[[], None] | None = None,
    on_cut: Callable[[], None] = lambda: None,
    on_slow: Callable[[], None] = lambda: None,
    **kwargs: Any,
) -> Response:
    """A ``Response`` that streams ``chunks`` (bytes, sent as they are yielded) and then calls ``on_close`` (the
    backstop for a generator that never ran: its own ``finally`` does the cleanup otherwise).

    With ``direct_passthrough`` werkzeug hands the body straight to gunicorn instead of wrapping every chunk in
    two more generators (a tenth of the relay's CPU per token). Under gunicorn a client that accepts nothing for
    ``CLAWWEB_SEND_TIMEOUT_S`` is cut (``on_cut`` says so), and ``on_slow`` hears of one that fell behind."""
    if "gunicorn.socket" in request.environ:
        chunks = WATCH.watch(chunks, services().settings.send_timeout_s, on_cut, on_slow)
    return Response(Closing(chunks, on_close), direct_passthrough=True, **kwargs)


def sse_response(relay: Relay) -> Response:
    return streaming_response(sse_events(relay), relay.close, relay.cut, relay.read_ahead, headers=sse.HEADERS)


def sse_events(relay: Relay) -> Iterator[bytes]:
    """``id: N`` + ``data: <line>`` per upstream line, ``event: status`` when the stage changes (``event: queued``
    too while waiting, as before status frames), ``event: error`` last."""
    try:
        yield sse.OPENING
        seq = 0
        # A token that begins the thinking or the writing comes right after its status (``Relay.events``): the two
        # frames go as one chunk, one send instead of two, and the first token no later.
        held = b""
        for event in relay.events():
            if isinstance(event, bytes):  # a token: first, outside the match (see the events module)
                seq += 1
                if held:
                    yield held + sse.line_frame(event, seq)
                    held = b""
                else:
                    yield sse.line_frame(event, seq)
                continue
            if held:  # not the token expected: the status goes alone, first
                yield held
                held = b""
            match event:
                case Heartbeat.BEAT:
                    yield sse.KEEP_ALIVE
                case Queued(position=position, active=active):
                    yield sse.json_frame({"position": position, "active": active}, event="queued")
                case Status(stage="thinking" | "writing"):
                    held = sse.json_frame(event.payload(), event="status")
                case Status():
                    yield sse.json_frame(event.payload(), event="status")
                case Failure(message=message):
                    yield sse.json_frame({"error": message}, event="error")
                case _:
                    assert_never(event)
        if held:
            yield held
    finally:
        relay.close()


def ndjson_lines(relay: Relay) -> Iterator[bytes]:
    """Ollama-native: the upstream bytes unchanged; a late failure as an ``{"error": ...}`` line, as Ollama does."""
    try:
        for event in relay.events():
            if isinstance(event, bytes):  # a token: first, outside the match (see the events module)
                yield event + b"\n"
                continue
            match event:
                case Failure(message=message):
                    yield json.dumps({"error": message}).encode() + b"\n"
                case Heartbeat.BEAT | Queued() | Status():
                    pass  # NDJSON has no comment syntax, and a blank line breaks Ollama's clients
                case _:
                    assert_never(event)
    finally:
        relay.close()


def native_response(relay: Relay, stream: bool) -> Response:
    """Ollama-native answer: NDJSON clients wait in the queue silently, then get Ollama's status and body."""
    handed_over = False
    try:
        refused = relay.wait_admitted()
        if refused is not None:
            return error_response(refused.status or 503, refused.message, {"Retry-After": str(RETRY_AFTER_BUSY_S)})
        if not stream:
            return as_answered(relay.fetch_whole())
        # Ollama's status is only known once the model is loaded and the first token exists: wait for it.
        started = relay.stream or relay.start()
        started.headers_received.wait()
        failure = started.first_failure
        if failure is not None:
            relay.fail(failure.kind)
            if ollama_error_text(failure.body) is not None:  # Ollama's own words, as it sent them
                return Response(failure.body, failure.status, content_type="application/json; charset=utf-8")
            return error_response(failure.status or 502, failure.message)
        handed_over = True
        return streaming_response(
            ndjson_lines(relay), relay.close, relay.cut, relay.read_ahead, content_type="application/x-ndjson"
        )
    finally:
        if not handed_over:
            relay.close()


def as_answered(upstream: requests.Response) -> Response:
    """Ollama's answer as it is, except an error that is not Ollama's ``{"error": ...}``: an Ollama older than the
    route answers ``404 page not found`` in plain text, a proxy in front of it an HTML page. A client of an Ollama
    API reads ``error`` from the JSON, so such an answer becomes one (same status, the text's first line)."""
    status, content = upstream.status_code, upstream.content
    if status < 400 or ollama_error_text(content) is not None:
        return Response(content, status, content_type=upstream.headers.get("Content-Type"))
    said = ""
    if upstream.headers.get("Content-Type", "").startswith("text/plain"):
        said = content.decode("utf-8", "replace").strip().split("\n", 1)[0][:200]
    return error_response(status, f"Ollama answered HTTP {status}" + (f": {said}" if said else ""))
