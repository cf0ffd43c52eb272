"""Facts about Ollama's HTTP answers, as the gateway reads and builds them: model names, model lists, error text.

Pure functions (``json_response`` builds a ``requests.Response`` object, nothing is sent).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import requests


def model_key(name: str) -> str:
    """Ollama's name for a model: ``qwen3`` means ``qwen3:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def names_in(listing: Any) -> frozenset[str]:
    """The model names of an ``/api/tags`` or ``/api/ps`` answer, as ``model_key``s."""
    if not isinstance(listing, dict) or not isinstance(models := listing.get("models") or [], list):
        raise ValueError("not a model list")
    return frozenset(
        model_key(m[k]) for m in models if isinstance(m, dict) for k in ("name", "model") if isinstance(m.get(k), str)
    )


def merge_listings(listings: Iterable[Any]) -> dict[str, Any]:
    """``/api/tags`` or ``/api/ps`` answers of several hosts as one: every model once, by name, first host wins."""
    seen: set[str] = set()
    merged: list[Any] = []
    for listing in listings:
        for entry in listing.get("models") or []:
            name = entry.get("name") or entry.get("model")
            if name not in seen:
                seen.add(name)
                merged.append(entry)
    return {"models": merged}


def ollama_error_text(body: bytes) -> str | None:
    """What Ollama said in an error answer's body (``{"error": "..."}``), or None when the body says nothing
    usable (empty, not JSON, no ``error``): each caller then words the bare status in its own way."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return None


def json_response(value: Any) -> requests.Response:
    """A ``requests.Response`` built here (a merged list), so callers treat it like any upstream answer."""
    response = requests.Response()
    response.status_code = 200
    response._content = json.dumps(value, separators=(",", ":")).encode()
    response._content_consumed = True  # type: ignore[attr-defined]  # nothing to read from a socket
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.encoding = "utf-8"
    return response
