"""Ollama-compatible routes: ``POST /api/chat`` (SSE or native) and the read-only pass-through routes.

Views decide everything that can be known before the first byte (body, model, reachability, a place in the
admission queue), then hand a generator to ``Response``; nothing after that point raises into Flask.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request

from .relay.admit import admit, allowed
from .relay.responses import native_response, sse_response
from .services import services
from .upstream.client import PASS_THROUGH_TIMEOUT_S
from .validation import parse_json_object, request_body, validate_chat

bp = Blueprint("api", __name__)

PASS_THROUGH = ("/api/tags", "/api/ps", "/api/version")


def _wants_sse() -> bool:
    """Only an explicit ``Accept: text/event-stream`` gets SSE; ``*/*`` and JSON clients get Ollama's format."""
    return any(mimetype == "text/event-stream" and q > 0 for mimetype, q in request.accept_mimetypes)


@bp.post("/api/chat")
def chat() -> Response:
    settings = services().settings
    body = validate_chat(parse_json_object(request_body(settings.max_body_bytes)), settings)
    if _wants_sse():
        body["stream"] = True  # SSE is a stream whatever the body said
        return sse_response(admit(body))
    relay = admit(body)
    return native_response(relay, stream=body.get("stream", True))


@bp.get("/api/queue")
def queue() -> Response:
    """The admission queue right now, for the page's empty state: a new question would wait ``eta_s`` (None until
    enough answers were measured; 0 with a slot free)."""
    slots = services().state.slots
    active, waiting = slots.active, slots.queued
    eta_s = 0.0 if active < slots.max_active else services().estimates.queue_s(waiting + 1, slots.max_active)
    return jsonify(
        active=active, waiting=waiting, slots=slots.max_active, eta_s=None if eta_s is None else round(eta_s, 1)
    )


def _pass_through() -> Response:
    """Ollama's answer as it is, except that with ``CLAWWEB_MODELS`` set, model lists show only those."""
    settings = services().settings
    upstream = services().ollama.request("GET", request.path, read_timeout=PASS_THROUGH_TIMEOUT_S)
    content = upstream.content
    if settings.models and upstream.status_code == 200 and request.path in ("/api/tags", "/api/ps"):
        listing = upstream.json()
        listing["models"] = [m for m in listing.get("models") or [] if allowed(m.get("name", ""), settings)]
        content = json.dumps(listing).encode()
    return Response(content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))


for _path in PASS_THROUGH:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=_pass_through, methods=["GET"])
