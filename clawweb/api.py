"""Ollama-compatible routes: ``POST /api/chat`` (SSE or native) and the read-only pass-through routes.

Views decide everything that can be known before the first byte (body, model, reachability, a place in the
admission queue), then hand a generator to ``Response``; nothing after that point raises into Flask.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, request

from . import quotas
from .auth import identity, owner
from .config import Settings, get_settings
from .errors import ApiError
from .metrics import StreamStats
from .relay import Relay, native_response, sse_response
from .state.base import State, Throttled, Window
from .state.make import get_state
from .upstream import get_client, model_key
from .validation import parse_json_object, request_body, validate_chat

bp = Blueprint("api", __name__)
log = logging.getLogger("gunicorn.error")

PASS_THROUGH = ("/api/tags", "/api/ps", "/api/version")
PASS_THROUGH_TIMEOUT_S = 10.0  # these answer from Ollama's memory; a slow one means trouble, not a model load


def _wants_sse() -> bool:
    """Only an explicit ``Accept: text/event-stream`` gets SSE; ``*/*`` and JSON clients get Ollama's format."""
    return any(mimetype == "text/event-stream" and q > 0 for mimetype, q in request.accept_mimetypes)


def client_id() -> str:
    """Who is asking, for the per-client limits: the user, or in open mode the address (behind
    ``CLAWWEB_TRUSTED_PROXIES`` proxies)."""
    name = identity().name
    return f"user:{name}" if name else request.remote_addr or "unknown"


def allowed(model: str, settings: Settings) -> bool:
    return not settings.models or model_key(model) in {model_key(name) for name in settings.models}


def _rate() -> Window:
    return cast(Window, current_app.extensions["clawweb.rate"])


def admit(body: dict[str, Any]) -> Relay:
    """What every generation passes before anything streams: the model is offered here (403) and exists (404),
    Ollama answers (502), this client is under its rate and its answers a day (429), and there is a slot or a
    place in the queue for it (429/503)."""
    settings, client, who = get_settings(), get_client(), client_id()
    if not allowed(body["model"], settings):
        raise ApiError(403, f"model '{body['model']}' is not offered here (CLAWWEB_MODELS)")
    client.require_model(body["model"])
    try:
        counted = _rate().reserve(who)
    except Throttled as exc:
        raise ApiError(
            429,
            f"more than {settings.rate_per_minute} answers a minute (CLAWWEB_RATE_PER_MINUTE); "
            f"retry in {exc.retry_after} s",
            {"Retry-After": str(exc.retry_after)},
        ) from None
    try:
        give_back = quotas.count_answer(owner())  # 429 when today's answers are used up
    except BaseException:
        _rate().release(who, counted)
        raise
    admission = get_state().slots
    try:
        ticket = admission.enter(who)
        stats = StreamStats(body["model"], who, request.remote_addr or "unknown")
        relay = Relay(client, body, admission, ticket, settings, stats)
        if body.get("stream", True):  # a whole answer (stream: false) is one request later, its status as it is
            relay.open_if_admitted()
    except BaseException:
        _rate().release(who, counted)  # refused by the queue, or by Ollama at once: not an answer started
        give_back()
        raise
    if settings.log_content:
        log.info("prompt client=%s model=%s messages=%s", who, body["model"], json.dumps(body["messages"])[-2000:])
    return relay


@bp.post("/api/chat")
def chat() -> Response:
    settings = get_settings()
    body = validate_chat(parse_json_object(request_body(settings.max_body_bytes)), settings)
    if _wants_sse():
        body["stream"] = True  # SSE is a stream whatever the body said
        return sse_response(admit(body))
    relay = admit(body)
    return native_response(relay, stream=body.get("stream", True))


def _pass_through() -> Response:
    """Ollama's answer as it is, except that with ``CLAWWEB_MODELS`` set, model lists show only those."""
    settings = get_settings()
    upstream = get_client().request("GET", request.path, read_timeout=PASS_THROUGH_TIMEOUT_S)
    content = upstream.content
    if settings.models and upstream.status_code == 200 and request.path in ("/api/tags", "/api/ps"):
        listing = upstream.json()
        listing["models"] = [m for m in listing.get("models") or [] if allowed(m.get("name", ""), settings)]
        content = json.dumps(listing).encode()
    return Response(content, upstream.status_code, content_type=upstream.headers.get("Content-Type"))


for _path in PASS_THROUGH:
    bp.add_url_rule(_path, endpoint=_path.rsplit("/", 1)[-1], view_func=_pass_through, methods=["GET"])


def init_app(app: Flask, settings: Settings, state: State) -> None:
    app.extensions["clawweb.rate"] = state.window("answers", settings.rate_per_minute, 60.0)
