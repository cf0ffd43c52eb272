"""Ollama-compatible routes: ``POST /api/chat`` and ``/api/generate`` (SSE or native), ``/api/embed`` and the older
``/api/embeddings``, ``/api/show``, and the read-only pass-through routes.

Views decide everything that can be known before the first byte (body, model, reachability, a place in the
admission queue), then hand a generator to ``Response``; nothing after that point raises into Flask. Model
management (pull, push, create, copy, delete) is not routed: on a shared GPU box that is the operator's.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from . import embeddings
from .auth import identity
from .errors import ApiError
from .metrics import ROUTE_REQUESTS
from .relay.admit import admit, allowed, client_id, require_allowed, reserve_rate
from .relay.responses import as_answered, native_response, sse_response
from .services import services
from .upstream.capabilities import chat_models
from .upstream.client import PASS_THROUGH_TIMEOUT_S
from .validation import (
    parse_json_object,
    request_body,
    validate_chat,
    validate_embed,
    validate_embeddings,
    validate_generate,
    validate_show,
)

bp = Blueprint("api", __name__)

PASS_THROUGH = ("/api/tags", "/api/ps", "/api/version")


def _wants_sse() -> bool:
    """Only an explicit ``Accept: text/event-stream`` gets SSE; ``*/*`` and JSON clients get Ollama's format."""
    return any(mimetype == "text/event-stream" and q > 0 for mimetype, q in request.accept_mimetypes)


def _generation(body: dict[str, Any], path: str) -> Response:
    """An answer relayed as SSE (asked for with ``Accept``) or as Ollama answers: NDJSON, or one JSON object."""
    if _wants_sse():
        body["stream"] = True  # SSE is a stream whatever the body said
        return sse_response(admit(body, path))
    relay = admit(body, path)
    return native_response(relay, stream=body.get("stream", True))


def _json_body() -> dict[str, Any]:
    return parse_json_object(request_body(services().settings.max_body_bytes))


@bp.post("/api/chat")
def chat() -> Response:
    return _generation(validate_chat(_json_body(), services().settings), "/api/chat")


@bp.post("/api/generate")
def generate() -> Response:
    raw = _json_body()
    body = validate_generate(raw, services().settings)
    if not body.get("prompt") and raw.get("keep_alive") is not None:
        # A load request (Ollama loads, or with keep_alive 0 unloads, the model and answers done_reason "load"):
        # it changes what the GPU holds for everyone, so it is an operator's, and only then is keep_alive sent.
        if not identity().admin:
            raise ApiError(403, "a load request (an empty prompt with keep_alive) needs an admin API key")
        body["keep_alive"] = raw["keep_alive"]
    return _generation(body, "/api/generate")


@bp.post("/api/embed")
def embed() -> Response:
    return as_answered(embeddings.forward(validate_embed(_json_body(), services().settings)))


@bp.post("/api/embeddings")
def embeddings_old() -> Response:
    body = validate_embeddings(_json_body(), services().settings)
    return as_answered(embeddings.forward(body, "/api/embeddings"))


@bp.post("/api/show")
def show() -> Response:
    """A model's details (template, parameters, context length, capabilities): read-only, allowed models only, from
    a host that has it. Not queued: Ollama answers from its files, without the GPU. Counted in the embeddings'
    per-minute window: ``verbose`` answers are megabytes, and a client asks once per model, not per answer."""
    body = validate_show(_json_body(), services().settings)
    require_allowed(body["model"])
    reserve_rate(services().embed_rate, client_id(), "embedding and model-detail requests", "EMBED_RATE_PER_MINUTE")
    upstream = services().ollama.request("POST", "/api/show", body, read_timeout=PASS_THROUGH_TIMEOUT_S)
    ROUTE_REQUESTS.labels("/api/show", "done" if upstream.status_code == 200 else "status").inc()
    return as_answered(upstream)


@bp.get("/api/chat-models")
def chat_models_view() -> Response:
    """The page's model picker: ``/api/tags`` (only ``CLAWWEB_MODELS`` when set) without the embedding models."""
    app = services()
    upstream = app.ollama.request("GET", "/api/tags", read_timeout=PASS_THROUGH_TIMEOUT_S)
    if upstream.status_code != 200:
        raise ApiError(502, f"Ollama answered /api/tags with HTTP {upstream.status_code}")
    try:
        models = upstream.json().get("models") or []
    except (ValueError, AttributeError):
        raise ApiError(502, "Ollama answered /api/tags with something else than a model list") from None
    listed = [m for m in models if isinstance(m, dict) and allowed(str(m.get("name", "")), app.settings)]
    return jsonify(models=chat_models(app.ollama, listed))


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
    if settings.models and upstream.status_code == 200 and request.path in ("/api/tags", "/api/ps"):
        listing = upstream.json()
        listing["models"] = [m for m in listing.get("models") or [] if allowed(m.get("name", ""), settings)]
        return Response(json.dumps(listing).encode(), 200, content_type=upstream.headers.get("Content-Type"))
    return as_answered(upstream)


# Ollama's model management: closed here, with a message a client shows its user (``ollama.pull()`` prints it).
MANAGEMENT = [
    (path, "POST") for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/blobs/<path:digest>")
]
MANAGEMENT += [("/api/delete", "DELETE"), ("/api/blobs/<path:digest>", "HEAD")]


def _management(**_: str) -> Response:
    raise ApiError(404, f"{request.path} is not offered here: models are pulled and removed on the Ollama host itself")


for _rule, _method in MANAGEMENT:
    bp.add_url_rule(_rule, endpoint=f"closed {_method} {_rule}", view_func=_management, methods=[_method])

for _path in PASS_THROUGH:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=_pass_through, methods=["GET"])
