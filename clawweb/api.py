"""Ollama-compatible routes: ``POST /api/chat`` (SSE or native) and the read-only pass-through routes.

Views decide everything that can be known before the first byte (body, model, reachability), then hand a
generator to ``Response``; nothing after that point raises into Flask.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from . import relay, sse
from .config import get_settings
from .errors import error_response
from .upstream import get_client
from .validation import parse_json_object, validate_chat

bp = Blueprint("api", __name__)

PASS_THROUGH = ("/api/tags", "/api/ps", "/api/version")
PASS_THROUGH_TIMEOUT_S = 10.0  # these answer from Ollama's memory; a slow one means trouble, not a model load


def _wants_sse() -> bool:
    """Only an explicit ``Accept: text/event-stream`` gets SSE; ``*/*`` and JSON clients get Ollama's format."""
    return any(mimetype == "text/event-stream" and q > 0 for mimetype, q in request.accept_mimetypes)


@bp.post("/api/chat")
def chat() -> Response:
    settings = get_settings()
    body = validate_chat(parse_json_object(request.get_data(cache=False)), settings)
    client = get_client()
    client.require_model(body["model"])

    if _wants_sse():
        body["stream"] = True  # SSE is a stream whatever the body said
        stream = relay.UpstreamStream(client, body, settings.read_timeout_s)
        return Response(relay.sse_events(stream, settings.heartbeat_s), headers=sse.HEADERS)

    if body.get("stream", True) is False:
        upstream = client.request("POST", "/api/chat", body)
        return Response(upstream.content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))

    # Ollama-native streaming: its status is only known once the model is loaded, so wait for it here.
    stream = relay.UpstreamStream(client, body, settings.read_timeout_s)
    stream.headers_received.wait()
    failure = stream.first_failure
    if failure is not None:
        stream.close()
        if failure.body:
            return Response(failure.body, failure.status, content_type="application/json; charset=utf-8")
        return error_response(failure.status or 502, failure.message)
    return Response(relay.ndjson_lines(stream, settings.heartbeat_s), content_type="application/x-ndjson")


def _pass_through() -> Response:
    upstream = get_client().request("GET", request.path, read_timeout=PASS_THROUGH_TIMEOUT_S)
    return Response(upstream.content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))


for _path in PASS_THROUGH:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=_pass_through, methods=["GET"])
