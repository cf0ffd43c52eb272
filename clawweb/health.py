"""Liveness and readiness, for systemd, load balancers and the deploy kit's checks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .config import get_settings
from .errors import ApiError, error_response
from .upstream import get_client, model_key

bp = Blueprint("health", __name__)

READY_TIMEOUT_S = 2.0  # a readiness probe must answer quickly even when Ollama hangs


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and its event loop turns. Touches nothing else, so it stays cheap."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Ollama answers within ``READY_TIMEOUT_S`` and lists the default model (fresh, not the cached list)."""
    settings = get_settings()
    try:
        names = get_client().fetch_models(READY_TIMEOUT_S)
    except ApiError as exc:
        return error_response(503, exc.message)
    if model_key(settings.default_model) not in names:
        return error_response(503, f"default model '{settings.default_model}' is not in Ollama's /api/tags")
    return jsonify(status="ready", ollama=settings.ollama_url, model=settings.default_model)
