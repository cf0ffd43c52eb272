"""Ollama-compatible routes: ``POST /api/chat`` (SSE or native) and the read-only pass-through routes.

Views decide everything that can be known before the first byte (body, model, reachability, a place in the
admission queue), then hand a generator to ``Response``; nothing after that point raises into Flask.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .admission import get_admission
from .config import get_settings
from .metrics import StreamStats
from .relay import Relay, native_response, sse_response
from .upstream import get_client
from .validation import parse_json_object, validate_chat

bp = Blueprint("api", __name__)

PASS_THROUGH = ("/api/tags", "/api/ps", "/api/version")
PASS_THROUGH_TIMEOUT_S = 10.0  # these answer from Ollama's memory; a slow one means trouble, not a model load


def _wants_sse() -> bool:
    """Only an explicit ``Accept: text/event-stream`` gets SSE; ``*/*`` and JSON clients get Ollama's format."""
    return any(mimetype == "text/event-stream" and q > 0 for mimetype, q in request.accept_mimetypes)


def client_id() -> str:
    """Who is asking, for the per-client limit: the address (behind ``CLAWWEB_TRUSTED_PROXIES`` proxies)."""
    return request.remote_addr or "unknown"


def admit(body: dict[str, Any]) -> Relay:
    """What every generation passes before anything streams: the model exists (404), Ollama answers (502),
    and there is a slot or a place in the queue for this client (429/503)."""
    client, who = get_client(), client_id()
    client.require_model(body["model"])
    admission = get_admission()
    ticket = admission.enter(who)
    return Relay(client, body, admission, ticket, get_settings(), StreamStats(body["model"], who))


@bp.post("/api/chat")
def chat() -> Response:
    settings = get_settings()
    body = validate_chat(parse_json_object(request.get_data(cache=False)), settings)
    relay = admit(body)
    if _wants_sse():
        body["stream"] = True  # SSE is a stream whatever the body said
        return sse_response(relay)
    return native_response(relay, stream=body.get("stream", True))


def _pass_through() -> Response:
    upstream = get_client().request("GET", request.path, read_timeout=PASS_THROUGH_TIMEOUT_S)
    return Response(upstream.content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))


for _path in PASS_THROUGH:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=_pass_through, methods=["GET"])
