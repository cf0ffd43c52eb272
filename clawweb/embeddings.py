"""Embedding requests (``/api/embed``, ``/api/embeddings``, ``/v1/embeddings``): the same doors as an answer, slots
of their own.

Why their own slots (``CLAWWEB_MAX_ACTIVE_EMBED``): an embedding model runs in its own Ollama runner beside the
chat model and answers in milliseconds, so a RAG query must not wait behind answers that stream for a minute;
and a bulk indexing job must not take the answers' slots either. Their own rate window too
(``CLAWWEB_EMBED_RATE_PER_MINUTE``): indexing a folder does not use up a user's answers. Like an answer, a request
passes the allow-list, the model check, the rate and a queue; it holds its slot for one upstream request, which
goes to a host that has the model (the next one if it fails before answering).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from flask import request

from .errors import ApiError
from .metrics import EMBED_INPUTS, EMBED_SECONDS, ROUTE_REQUESTS
from .relay.admit import client_id, require_allowed, reserve_rate
from .relay.events import Failure
from .relay.waiting import waiting
from .services import services
from .state.base import RETRY_AFTER_BUSY_S
from .upstream.errors import OllamaTimeout
from .upstream.wire import ollama_error_text

log = logging.getLogger(__name__)


def inputs_in(body: dict[str, Any]) -> int:
    """How many texts a validated ``/api/embed`` (``input``) or ``/api/embeddings`` (``prompt``) body holds."""
    if "prompt" in body:
        return 1
    texts = body.get("input")
    return 1 if isinstance(texts, str) else len(texts or [])


def forward(body: dict[str, Any], path: str = "/api/embed") -> requests.Response:
    """Admit a validated embedding body and send it to Ollama's ``path``; Ollama's answer as it is (an error status
    included). Refusals before that are ``ApiError``: 403 (model not offered), 404, 429 (rate, client limit),
    503 (queue full, no slot in time), 502/504 (Ollama unreachable or silent)."""
    app, who = services(), client_id()
    settings = app.settings
    started, outcome, inputs = time.monotonic(), "refused", inputs_in(body)
    require_allowed(body["model"])
    counted = reserve_rate(app.embed_rate, who, "embedding and model-detail requests", "EMBED_RATE_PER_MINUTE")
    slots = app.state.embed_slots
    try:
        ticket = slots.enter(who)
    except BaseException:
        app.embed_rate.release(who, counted)
        raise
    try:
        for event in waiting(slots, ticket, settings):
            if isinstance(event, Failure):
                outcome = event.kind
                raise ApiError(event.status or 503, event.message, {"Retry-After": str(RETRY_AFTER_BUSY_S)})
        try:
            response = app.ollama.request("POST", path, body)
        except ApiError as exc:
            outcome = "timeout" if isinstance(exc, OllamaTimeout) else "unreachable"
            raise
        outcome = "done" if response.status_code == 200 else "status"
        if outcome == "done":
            EMBED_INPUTS.inc(inputs)
        return response
    finally:
        slots.release(ticket)
        duration = time.monotonic() - started
        EMBED_SECONDS.observe(duration)
        ROUTE_REQUESTS.labels(path, outcome).inc()
        log.info(
            "embed end=%s route=%s model=%s client=%s addr=%s inputs=%d queue_wait=%.3fs duration=%.3fs",
            outcome,
            path,
            body["model"],
            who,
            request.remote_addr or "unknown",
            inputs,
            ticket.queue_wait_s,
            duration,
        )


def embed(body: dict[str, Any]) -> dict[str, Any]:
    """A validated ``/api/embed`` body's answer as Ollama's JSON (``{"model", "embeddings", ...}``); an error status
    from Ollama becomes ``ApiError`` with its status and message (for callers that reshape the answer)."""
    response = forward(body)
    if response.status_code != 200:
        message = ollama_error_text(response.content) or f"Ollama answered HTTP {response.status_code}"
        raise ApiError(response.status_code, message)
    try:
        answer = response.json()
    except ValueError:
        raise ApiError(502, "Ollama answered /api/embed with something else than JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("embeddings"), list):
        raise ApiError(502, "Ollama's /api/embed answer holds no embeddings")
    return answer
