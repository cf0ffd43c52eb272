"""OpenAI-compatible routes (``/v1/models``, ``/v1/chat/completions``), translated by the gateway itself.

Why not forward to Ollama's own ``/v1``: a request translated into an ``/api/chat`` body goes through the same
validation, API keys, limits, admission queue and metrics as every other generation. Answers come back as
OpenAI's ``chat.completion`` object or ``chat.completion.chunk`` SSE frames, and errors in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape, from which the official clients pick their exceptions.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from . import sse
from .admission import RETRY_AFTER_BUSY_S
from .api import PASS_THROUGH_TIMEOUT_S, admit, allowed
from .config import Settings, get_settings
from .errors import ApiError
from .relay import Queued, Relay, streaming_response
from .stream import HEARTBEAT, Failure
from .upstream import OllamaTimeout, get_client, model_key
from .validation import parse_json_object, request_body, validate_chat, validate_options

bp = Blueprint("openai", __name__, url_prefix="/v1")

DONE = b"data: [DONE]\n\n"
# OpenAI's error ``type`` and ``code`` by status (the clients choose their exception class by status alone).
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# OpenAI request field -> Ollama option; checked by the same ``validate_options`` as native requests.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",  # the newer name wins when both are sent
    "stop": "stop",
}
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
# Features with no Ollama counterpart here: refused rather than silently ignored, unless sent empty.
UNSUPPORTED = (
    "tools tool_choice functions function_call logprobs top_logprobs logit_bias audio prediction web_search_options"
).split()


class OpenAIError(ApiError):
    """An ``ApiError`` that names the request field at fault (OpenAI's ``param``) and a machine-readable code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message)
        self.param, self.code = param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    response = jsonify(error_body(status, message, **extra))
    response.status_code = status
    response.headers.update(headers or {})
    return response


# Blueprint handlers apply to everything routed here, also to the 401/403 of the app's ``before_request``
# (``_identify``): Flask picks handlers by ``request.blueprint``, which comes from the matched URL rule.
@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    # validate_chat's messages start with the field they are about: "'messages[0].role' must be ..."
    named = re.match(r"'([\w.\[\]]+)'", exc.message)
    param = getattr(exc, "param", None) or (named.group(1) if named else None)
    return error_response(exc.status, exc.message, exc.headers, param=param, code=getattr(exc, "code", None))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status, message, code = exc.code or 500, exc.description or exc.name, None
    if status == 404:
        message, code = f"unknown URL {request.method} {request.path}", "unknown_url"
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"request body is larger than the limit of {limit} bytes (CLAWWEB_MAX_BODY_BYTES)"
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
    upstream = get_client().request("GET", "/api/tags", read_timeout=PASS_THROUGH_TIMEOUT_S)
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
    return jsonify(object="list", data=_models(get_settings()))


@bp.get("/models/<path:name>")
def model(name: str) -> Response:
    found = [m for m in _models(get_settings()) if model_key(m["id"]) == model_key(name)]
    if not found:
        raise OpenAIError(404, f"model '{name}' not found", "model", "model_not_found")
    return jsonify(found[0])


# --- request translation -------------------------------------------------------------------------------------


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and base64 images: a string, or text and ``image_url`` (data: URL) parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise OpenAIError(400, f"'{where}' must be a string or a list of content parts", where)
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        url = (part.get("image_url") or {}).get("url") if kind == "image_url" else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        elif isinstance(url, str) and re.match(r"data:image/[\w.+-]+;base64,", url):
            images.append(url.split(",", 1)[1])
        else:
            message = "must be a text part, or an image_url part with a base64 data: URL (the gateway fetches nothing)"
            raise OpenAIError(400, f"'{where}[{j}]' {message}", f"{where}[{j}]")
    return "\n".join(texts), images


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise OpenAIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant") or message.get("tool_calls"):
            text = "must be system, developer, user or assistant (tool calling is not offered here)"
            raise OpenAIError(400, f"'messages[{i}].role' {text}", f"messages[{i}].role")
        content, images = _content(message.get("content"), f"messages[{i}].content")
        messages.append({"role": role, "content": content, **({"images": images} if images else {})})
    return messages


def _options(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, key in OPTIONS.items():
        value = raw.get(name)
        if value is None:
            continue
        try:
            options.update(validate_options({key: [value] if isinstance(value, str) else value}, settings))
        except ApiError as exc:
            raise OpenAIError(exc.status, exc.message.replace(f"'options.{key}'", f"'{name}'"), name) from None
        if key == "num_predict" and options[key] < 1:
            raise OpenAIError(400, f"'{name}' must be at least 1", name)
    return options


def to_ollama(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An OpenAI chat request as an Ollama ``/api/chat`` body (still to pass ``validate_chat``)."""
    for name in UNSUPPORTED:
        if raw.get(name) not in (None, False, 0, "none", "auto", [], {}):
            raise OpenAIError(400, f"'{name}' is not supported by this gateway", name)
    if raw.get("n") not in (None, 1):
        raise OpenAIError(400, "'n' must be 1: one answer per request", "n")
    if not isinstance(raw.get("stream", False), bool | None):
        raise OpenAIError(400, "'stream' must be true or false", "stream")
    body: dict[str, Any] = {"messages": _messages(raw.get("messages")), "stream": bool(raw.get("stream"))}
    if raw.get("model") is not None:
        body["model"] = raw["model"]
    if options := _options(raw, settings):
        body["options"] = options
    effort = raw.get("reasoning_effort")
    if effort is not None:
        if effort not in THINK:
            raise OpenAIError(400, f"'reasoning_effort' must be one of {', '.join(THINK)}", "reasoning_effort")
        body["think"] = THINK[effort]
    form = raw.get("response_format") or {"type": "text"}
    schema = (form.get("json_schema") or {}).get("schema") if isinstance(form, dict) else None
    if isinstance(form, dict) and form.get("type") == "json_object":
        body["format"] = "json"
    elif isinstance(schema, dict) and form.get("type") == "json_schema":
        body["format"] = schema
    elif not isinstance(form, dict) or form.get("type") != "text":
        message = "'response_format' must be text, json_object, or json_schema with a schema"
        raise OpenAIError(400, message, "response_format")
    return body


# --- answers -------------------------------------------------------------------------------------------------


def _finish_reason(final: dict[str, Any]) -> str:
    return "length" if final.get("done_reason") == "length" else "stop"


def _usage(final: dict[str, Any]) -> dict[str, int]:
    """Ollama omits zero counters (``omitempty``), hence the defaults."""
    prompt, completion = final.get("prompt_eval_count") or 0, final.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class Completion:
    """What every chunk of one answer repeats: its id, creation time and model."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        usage = {"usage": None} if self.include_usage else {}  # as OpenAI: null on all but the usage chunk
        return sse.json_frame({**self._head("chat.completion.chunk"), "choices": [choice], **usage})

    def usage_chunk(self, final: dict[str, Any]) -> bytes:
        return sse.json_frame({**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(final)})

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        message = answer.get("message") or {}
        reply = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("thinking"):
            reply["reasoning_content"] = message["thinking"]
        choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": _finish_reason(answer)}
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(answer)}


def completion_frames(relay: Relay, completion: Completion) -> Iterator[bytes]:
    """The role first, a delta per token (thinking in ``reasoning_content``), the finish reason, usage when asked,
    ``[DONE]``; comments while queued or silent. A late failure is a ``data: {"error": ...}`` frame, which the
    official client raises as ``APIError``, and no ``[DONE]``: a stream that lacks it did not complete."""
    try:
        yield sse.OPENING
        started = False
        for event in relay.events():
            if isinstance(event, bytes):
                line = json.loads(event)
                if not started:
                    started = True
                    yield completion.chunk({"role": "assistant", "content": ""})
                message = line.get("message") or {}
                delta = {"reasoning_content": message.get("thinking"), "content": message.get("content")}
                if delta := {k: v for k, v in delta.items() if v}:
                    yield completion.chunk(delta)
                if line.get("done") is True:
                    yield completion.chunk({}, _finish_reason(line))
                    if completion.include_usage:
                        yield completion.usage_chunk(line)
                    yield DONE
            elif event is HEARTBEAT:
                yield sse.HEARTBEAT
            elif isinstance(event, Queued):
                yield b": queued position=%d active=%d\n\n" % (event.position, event.active)
            elif isinstance(event, Failure):
                yield sse.json_frame(error_body(event.status or 500, event.message, code=event.kind))
    finally:
        relay.close()


def whole_completion(relay: Relay, completion: Completion) -> Response:
    """``stream: false``: wait in the queue, then one upstream request; Ollama's error statuses kept."""
    try:
        for event in relay.wait_for_slot():
            if isinstance(event, Failure):
                headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)}
                return error_response(event.status or 503, event.message, headers, code=event.kind)
        try:
            upstream = relay.fetch_whole()
        except ApiError as exc:
            relay.outcome = "timeout" if isinstance(exc, OllamaTimeout) else "unreachable"
            raise
        if upstream.status_code != 200:
            return error_response(upstream.status_code, _upstream_message(upstream))
        return jsonify(completion.whole(upstream.json()))
    finally:
        relay.close()


def _upstream_message(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"Ollama answered HTTP {response.status_code}"


@bp.post("/chat/completions")
def chat_completions() -> Response:
    settings = get_settings()
    raw = parse_json_object(request_body(settings.max_body_bytes))
    body = validate_chat(to_ollama(raw, settings), settings)
    stream_options = raw.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    completion = Completion(body["model"], include_usage)
    relay = admit(body)
    if body["stream"]:
        return streaming_response(completion_frames(relay, completion), relay.close, headers=sse.HEADERS)
    return whole_completion(relay, completion)
