"""Liveness and readiness, for systemd, load balancers and the deploy kit's checks."""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .auth import identity
from .config import redact_url
from .services import services
from .upstream.wire import model_key

bp = Blueprint("health", __name__)

READY_TIMEOUT_S = 2.0  # a readiness probe must answer quickly even when Ollama hangs


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and its event loop turns. Touches nothing else, so it stays cheap."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Some Ollama host answers within ``READY_TIMEOUT_S`` and lists the default model (a fresh check of every
    host at once, which also refreshes what the gateway knows about them). ``hosts`` shows each one's state.

    The detail (Ollama's URLs, each host's state, the reason in full) only to this machine and to callers with
    an API key or a session: it maps the network behind the gateway. Anyone else gets the verdict alone."""
    settings, client = services().settings, services().ollama
    client.check(READY_TIMEOUT_S)
    detail = _may_see_detail()
    hosts = [host.state(settings.default_model) for host in client.hosts]
    up = [host for host in client.hosts if host.up]
    if not up:
        return _not_ready(client.unreachable_message() if detail else "Ollama is not reachable", hosts, detail)
    if not any(host.has(model_key(settings.default_model)) for host in up):
        where = "Ollama's /api/tags" if len(client.hosts) == 1 else "the /api/tags of any Ollama host that answers"
        return _not_ready(f"default model '{settings.default_model}' is not in {where}", hosts, detail)
    # What answers also need: Redis answering PING (when configured), the database file still the one opened.
    problem = services().state.problem(READY_TIMEOUT_S) or services().store.problem()
    if problem:
        return _not_ready(problem if detail else "shared state or the database is unavailable", hosts, detail)
    if not detail:
        return jsonify(status="ready")
    ollama = redact_url(settings.ollama_url)
    return jsonify(status="ready", ollama=ollama, model=settings.default_model, hosts=hosts)


def _may_see_detail() -> bool:
    if identity().via != "open":
        return True
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback  # behind a proxy: the client's address
    except ValueError:
        return False  # a unix socket's peer, with no proxy to say who is behind it


def _not_ready(message: str, hosts: list[dict[str, Any]], detail: bool) -> Response:
    response = jsonify(error=message, hosts=hosts) if detail else jsonify(error=message)
    response.status_code = 503
    return response
