"""The admission step every generation passes before anything streams: the model is offered here and exists,
Ollama answers, the client is under its limits, and there is a slot or a place in the queue.

A service, not a view: the Ollama, OpenAI and conversation routes all call ``admit`` and get a ``Relay`` back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import request

from .. import quotas
from ..auth import identity, owner
from ..config import Settings
from ..errors import ApiError
from ..metrics import StreamStats
from ..services import services
from ..state.base import Throttled, Window
from ..upstream.wire import model_key
from .relay import Relay

log = logging.getLogger(__name__)


def client_id() -> str:
    """Who is asking, for the per-client limits: the user, or in open mode the address (behind
    ``CLAWWEB_TRUSTED_PROXIES`` proxies)."""
    name = identity().name
    return f"user:{name}" if name else request.remote_addr or "unknown"


PAGE_ROUTES = frozenset({"conversations"})  # the blueprint whose answers the chat page asks for


def lane() -> str:
    """The admission lane of this request, decided here only (state/lanes.py serves them): an API key's own (api,
    or batch), the page's session ``interactive``, and in open mode the page's routes too; the rest ``api``."""
    who = identity()
    if who.via == "key":
        return who.lane
    return "interactive" if who.via == "session" or request.blueprint in PAGE_ROUTES else "api"


def allowed(model: str, settings: Settings) -> bool:
    """The model is offered here: ``CLAWWEB_MODELS`` is unset, or lists it."""
    return not settings.models or model_key(model) in {model_key(name) for name in settings.models}


def require_allowed(model: str) -> None:
    """The model is offered here (403) and some host lists it (404; 502 when every host that does is down)."""
    app = services()
    if not allowed(model, app.settings):
        raise ApiError(403, f"model '{model}' is not offered here (CLAWWEB_MODELS)")
    app.ollama.require_model(model)


def reserve_rate(rate: Window, who: str, what: str, setting: str) -> str:
    """One request against this client's ``rate`` (429 beyond, naming ``setting``); what ``release`` takes back."""
    try:
        return rate.reserve(who)
    except Throttled as exc:
        raise ApiError(
            429,
            f"more than {rate.limit} {what} a minute (CLAWWEB_{setting}); retry in {exc.retry_after} s",
            {"Retry-After": str(exc.retry_after)},
        ) from None


def admit(body: dict[str, Any], path: str = "/api/chat") -> Relay:
    """What every generation (``path``: /api/chat or /api/generate) passes before anything streams: the model is
    offered here (403) and exists (404), Ollama answers (502), this client is under its rate and its answers a
    day (429), and there is a slot or a place in the queue for it (429/503)."""
    app, who = services(), client_id()
    settings, rate = app.settings, app.answer_rate
    require_allowed(body["model"])
    counted = reserve_rate(rate, who, "answers", "RATE_PER_MINUTE")
    try:
        give_back = quotas.count_answer(owner())  # 429 when today's answers are used up
    except BaseException:
        rate.release(who, counted)
        raise
    admission = app.state.slots
    try:
        ticket = admission.enter(who, lane())
        stats = StreamStats(body["model"], who, request.remote_addr or "unknown", path)
        relay = Relay(app.ollama, body, admission, ticket, settings, stats, app.estimates, path)
        if body.get("stream", True):  # a whole answer (stream: false) is one request later, its status as it is
            relay.open_if_admitted()
    except BaseException:
        rate.release(who, counted)  # refused by the queue, or by Ollama at once: not an answer started
        give_back()
        raise
    if settings.log_content:
        asked = json.dumps(body.get("messages") or body.get("prompt"))[-2000:]
        log.info("prompt client=%s model=%s route=%s messages=%s", who, body["model"], path, asked)
    return relay
