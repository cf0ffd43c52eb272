"""OpenAI-compatible routes (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``),
translated by the gateway itself.

Why not forward to Ollama's own ``/v1``: a request translated into an ``/api/chat``, ``/api/generate`` or
``/api/embed`` body (openai_format.py, openai_completions.py, openai_embeddings.py) goes through the same
validation, API keys, limits, admission queue and metrics as the native route. Answers come back as OpenAI's
objects or SSE chunks, and errors in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape, from
which the official clients pick their exceptions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, assert_never

import requests
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .config import Settings
from .embeddings import embed
from .errors import ApiError, too_large_message
from .openai_completions import TextCompletion, to_generate
from .openai_embeddings import embedding_list, to_embed
from .openai_format import DONE, Answer, Completion, error_body, include_usage, to_ollama
from .relay import sse
from .relay.admit import admit, allowed
from .relay.events import Failure, Heartbeat, Queued, Status
from .relay.relay import Relay
from .relay.responses import streaming_response
from .services import services
from .state.base import RETRY_AFTER_BUSY_S
from .upstream.client import PASS_THROUGH_TIMEOUT_S
from .upstream.errors import OllamaTimeout
from .upstream.wire import model_key, ollama_error_text
from .validation import parse_json_object, request_body, validate_chat, validate_embed, validate_generate

bp = Blueprint("openai", __name__, url_prefix="/v1")


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    response = jsonify(error_body(status, message, **extra))
    response.status_code = status
    response.headers.update(headers or {})
    return response


# Blueprint handlers apply to everything routed here, also to the 401/403 of the app's ``before_request``
# (``_identify``): Flask picks handlers by ``request.blueprint``, which comes from the matched URL rule.
@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers, param=exc.field, code=exc.code)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status, message, code = exc.code or 500, exc.description or exc.name, None
    if status == 404:
        message, code = f"unknown URL {request.method} {request.path}", "unknown_url"
    elif status == 413:
        message = too_large_message()
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    return error_response(status, message, headers, code=code)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal error; the gateway log has the details")


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> Response:
    """Any other ``/v1`` URL: routed here so that its 404 (or 405) comes out in OpenAI's shape too."""
    rules = [r for r in current_app.url_map.iter_rules() if r.endpoint != "openai.unknown" and r.rule == request.path]
    if rules:
        raise MethodNotAllowed(sorted({m for r in rules for m in r.methods or ()}))
    raise NotFound()


# --- models --------------------------------------------------------------------------------------------------


def _created(stamp: Any) -> int:
    try:
        return int(datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", str(stamp))).timestamp())
    except ValueError:
        return 0


def _models(settings: Settings) -> list[dict[str, Any]]:
    """Ollama's ``/api/tags`` as OpenAI model objects, limited to ``CLAWWEB_MODELS`` when that is set."""
    upstream = services().ollama.request("GET", "/api/tags", read_timeout=PASS_THROUGH_TIMEOUT_S)
    if upstream.status_code != 200:
        raise ApiError(502, f"Ollama answered /api/tags with HTTP {upstream.status_code}")
    listed = upstream.json().get("models") or []
    return [
        {"id": m["name"], "object": "model", "created": _created(m.get("modified_at")), "owned_by": "ollama"}
        for m in listed
        if m.get("name") and allowed(m["name"], settings)
    ]


@bp.get("/models")
def models() -> Response:
    return jsonify(object="list", data=_models(services().settings))


@bp.get("/models/<path:name>")
def model(name: str) -> Response:
    found = [m for m in _models(services().settings) if model_key(m["id"]) == model_key(name)]
    if not found:
        raise ApiError(404, f"model '{name}' not found", field="model", code="model_not_found")
    return jsonify(found[0])


# --- answers -------------------------------------------------------------------------------------------------


def answer_frames(relay: Relay, answer: Answer) -> Iterator[bytes]:
    """The answer's chunks (a chat's role first), usage when asked, ``[DONE]``; comments while queued or silent.
    A late failure is a ``data: {"error": ...}`` frame, which the official client raises as ``APIError``, and no
    ``[DONE]``: a stream that lacks it did not complete."""
    try:
        yield sse.OPENING
        started = False
        for event in relay.events():
            if isinstance(event, bytes):  # a token: first, outside the match (see relay.events)
                line = json.loads(event)
                if not started:
                    started = True
                    yield from answer.opening()
                yield from answer.frames(line)
                if line.get("done") is True:
                    if answer.include_usage:
                        yield answer.usage_chunk(line)
                    yield DONE
                continue
            match event:
                case Heartbeat.BEAT:
                    yield sse.KEEP_ALIVE
                case Queued(position=position, active=active):
                    yield b": queued position=%d active=%d\n\n" % (position, active)
                case Status():
                    pass  # OpenAI's stream has no place for it (clients take any data frame for a chunk)
                case Failure(message=message, kind=kind, status=status):
                    yield sse.json_frame(error_body(status or 500, message, code=kind))
                case _:
                    assert_never(event)
    finally:
        relay.close()


def whole_answer(relay: Relay, answer: Answer) -> Response:
    """``stream: false``: wait in the queue, then one upstream request; Ollama's error statuses kept."""
    try:
        refused = relay.wait_admitted()
        if refused is not None:
            headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)}
            return error_response(refused.status or 503, refused.message, headers, code=refused.kind)
        try:
            upstream = relay.fetch_whole()
        except ApiError as exc:
            relay.fail("timeout" if isinstance(exc, OllamaTimeout) else "unreachable")
            raise
        if upstream.status_code != 200:
            return error_response(upstream.status_code, _upstream_message(upstream))
        return jsonify(answer.whole(upstream.json()))
    finally:
        relay.close()


def _upstream_message(response: requests.Response) -> str:
    message = ollama_error_text(response.content)
    return f"Ollama answered HTTP {response.status_code}" if message is None else message


def _respond(relay: Relay, answer: Answer, stream: bool) -> Response:
    if stream:
        return streaming_response(
            answer_frames(relay, answer), relay.close, relay.cut, relay.read_ahead, headers=sse.HEADERS
        )
    return whole_answer(relay, answer)


def _request() -> tuple[dict[str, Any], Settings]:
    settings = services().settings
    return parse_json_object(request_body(settings.max_body_bytes)), settings


@bp.post("/chat/completions")
def chat_completions() -> Response:
    raw, settings = _request()
    body = validate_chat(to_ollama(raw, settings), settings)
    return _respond(admit(body), Completion(body["model"], include_usage(raw)), body["stream"])


@bp.post("/completions")
def completions() -> Response:
    raw, settings = _request()
    body = validate_generate(to_generate(raw, settings), settings)
    relay = admit(body, path="/api/generate")
    return _respond(relay, TextCompletion(body["model"], include_usage(raw)), body["stream"])


@bp.post("/embeddings")
def embeddings() -> Response:
    raw, settings = _request()
    body = validate_embed(to_embed(raw), settings)
    return jsonify(embedding_list(embed(body), body["model"], raw.get("encoding_format")))
