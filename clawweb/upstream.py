"""The client towards Ollama: one pooled ``requests.Session`` per process, and a short-lived model list.

Only the gateway's own headers go upstream. Ollama answers 403 when it sees a browser's ``Host``/``Origin``,
so nothing from the incoming request is ever forwarded except the validated JSON body.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, cast

import requests
from flask import Flask, current_app
from requests.adapters import HTTPAdapter

from .config import Settings
from .errors import ApiError

USER_AGENT = "clawweb/0.1"


class OllamaUnreachable(ApiError):
    """Ollama refused or dropped the connection: a 502 that names the URL, so the operator knows where to look."""

    def __init__(self, base_url: str, reason: object) -> None:
        super().__init__(502, f"cannot reach Ollama at {base_url}: {reason}")


class OllamaTimeout(ApiError):
    """Ollama accepted the request but sent nothing for ``CLAWWEB_READ_TIMEOUT_S``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(504, f"Ollama sent nothing for {seconds:g} s")


def model_key(name: str) -> str:
    """Ollama's name for a model: ``qwen3`` means ``qwen3:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaClient:
    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.ollama_url
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.read_timeout_s = settings.read_timeout_s
        self._tags_ttl = settings.tags_ttl_s
        self.session = requests.Session()
        # No proxy variables, .netrc or CA-bundle lookups from the environment: Ollama is a fixed, local URL, and
        # requests would otherwise re-read all of that on every request (a measurable share of time to first token).
        self.session.trust_env = False
        # The default pool keeps 10 connections; every admitted stream needs its own, plus a few for the
        # short pass-through and readiness requests.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.max_active + 8, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._models: frozenset[str] = frozenset()
        self._models_at = float("-inf")
        self._models_lock = threading.Lock()  # a gevent lock once gunicorn's worker has monkey-patched

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; failures become ``OllamaUnreachable`` (502) or ``OllamaTimeout`` (504)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        timeout = (self._timeout[0], read_timeout or self._timeout[1])
        try:
            return self.session.request(
                method, self.base_url + path, data=data, headers=headers, stream=stream, timeout=timeout
            )
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            raise OllamaUnreachable(self.base_url, _reason(exc)) from None
        except requests.Timeout:
            raise OllamaTimeout(timeout[1]) from None

    def open_chat(self, body: dict[str, Any]) -> requests.Response:
        """Start ``POST /api/chat`` streaming; returns once Ollama sent headers (after the model load)."""
        return self.request("POST", "/api/chat", body, stream=True)

    def fetch_models(self, read_timeout: float) -> frozenset[str]:
        """Names Ollama lists in ``/api/tags`` now; ``ApiError`` (502) when it cannot say."""
        response = self.request("GET", "/api/tags", read_timeout=read_timeout)
        if response.status_code != 200:
            raise ApiError(502, f"Ollama answered /api/tags with HTTP {response.status_code}")
        listed = response.json().get("models") or []
        return frozenset(model_key(m.get(k, "")) for m in listed for k in ("name", "model") if m.get(k))

    def models(self) -> frozenset[str]:
        """``fetch_models``, cached for ``CLAWWEB_TAGS_TTL_S``."""
        with self._models_lock:
            if time.monotonic() - self._models_at >= self._tags_ttl:
                self._models, self._models_at = self.fetch_models(self._timeout[0]), time.monotonic()
            return self._models

    def require_model(self, name: str) -> None:
        if model_key(name) not in self.models():
            raise ApiError(404, f"model '{name}' not found")


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, e.g. "Connection refused" rather than urllib3's nested repr."""
    cause: BaseException = exc
    while cause.__context__ is not None or cause.__cause__ is not None:
        cause = cast(BaseException, cause.__cause__ or cause.__context__)
    if isinstance(exc, requests.Timeout):
        return "connection timed out"
    text = str(getattr(cause, "reason", None) or cause)
    return text.rsplit("] ", 1)[-1] if "] " in text else text


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["clawweb.ollama"] = OllamaClient(settings)


def get_client() -> OllamaClient:
    return cast(OllamaClient, current_app.extensions["clawweb.ollama"])
