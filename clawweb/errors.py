"""The one error vocabulary: what a refused request is told, as ``{"error": message}`` with the right status.

Refusals before a stream starts are ``ApiError``s; they carry their meaning in fields, never only in their text:
``status``, ``message`` (for people), ``field`` (the request field at fault, e.g. ``options.temperature``) and
``code`` (for programs, e.g. ``model_not_found``). The OpenAI routes build OpenAI's error shape from those
fields (``param``, ``code``); every other route answers ``{"error": message}``::

    ApiError                  a request refused before its stream: status, message, field, code
    ├── InvalidField          400: one field is wrong; message = "'<field>' <problem>", renamable (OpenAI's names)
    ├── Refused               429/503: the admission queue (state/base.py)
    ├── Unavailable           503 + Retry-After: a dependency failed (storage, shared state)
    ├── OllamaUnreachable     502: no Ollama host answered (upstream/errors.py)
    └── OllamaTimeout         504: Ollama took too long to start answering (upstream/errors.py)

Not refusals, mapped here to statuses: ``StorageUnavailable`` (the disk, the database file: 503) and any
``redis.RedisError`` (shared state: 503); anything else is a bug (500, logged). After a stream has started
nothing is raised to the client: the relay's ``Failure`` events become an in-band ``event: error``.

A browser on a page (not ``/api/``, ``/v1/``) gets the same refusal as an HTML page instead (error_pages.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .error_pages import error_page
from .state.redis import unavailable_reason
from .storage import StorageUnavailable

RETRY_AFTER_UNAVAILABLE_S = 5
log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised anywhere before a stream starts; becomes a JSON error response."""

    kind = "status"  # what failed, for metrics and the relay's Failure: a status; Ollama's errors say more

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        field: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.field = field
        self.code = code


class InvalidField(ApiError):
    """One request field is wrong: ``'<field>' <problem>``. The message is built from the two, so a translator
    (the OpenAI routes call ``options.num_predict`` ``max_tokens``) renames the field without editing text."""

    field: str

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(status, f"'{field}' {problem}", field=field)
        self.problem = problem

    def renamed(self, field: str) -> InvalidField:
        return InvalidField(field, self.problem, self.status)


class Unavailable(ApiError):
    """A dependency cannot serve the request now: ``what`` (storage, shared state) and why, as a 503."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(503, f"{what} unavailable: {reason}", {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)})
        self.what = what
        self.reason = reason


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_path() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/v1/")


def _wants_json() -> bool:
    """API paths always get JSON; pages get the HTML error page unless the client prefers JSON."""
    if _api_path():
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _asks_for_html() -> bool:
    """A browser (it names text/html above JSON) on a page: refusals that were always JSON (``ApiError``, a
    500) stay JSON for a program that sends ``*/*`` or nothing, as they were before pages had their own."""
    accepted = request.accept_mimetypes
    return not _api_path() and accepted["text/html"] > accepted["application/json"]


def too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return f"request body is larger than the limit of {limit} bytes (CLAWWEB_MAX_BODY_BYTES)"


def _handle_api_error(exc: ApiError) -> Response:
    if _asks_for_html():
        return error_page(exc.status, exc.message, exc.headers)
    return error_response(exc.status, exc.message, exc.headers)


def _handle_http_exception(exc: HTTPException) -> Response | HTTPException:
    status = exc.code or 500
    if status < 400:  # a routing redirect (308 to the URL with its slash) is not an error
        return exc
    if not _wants_json():
        allow = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return error_page(status, None, allow)
    message = exc.description or exc.name
    if status == 413:
        message = too_large_message()
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    return error_response(status, message, headers)


def _handle_redis_error(exc: redis.RedisError) -> Response:
    """Redis failed before the response started (any view, one place): 503, the details in the log."""
    log.warning("redis on %s %s: %s", request.method, request.path, exc)
    return _handle_api_error(Unavailable("shared state", unavailable_reason(exc)))


def _handle_storage_error(exc: StorageUnavailable) -> Response:
    """The disk or the database file failed: 503 (a full disk is a fault to report, not a bug)."""
    log.warning("storage on %s %s: %s", request.method, request.path, exc.reason)
    return _handle_api_error(Unavailable("storage", exc.reason))


def _handle_unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    if _asks_for_html():
        return error_page(500)
    return error_response(500, "internal error; the gateway log has the details")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(redis.RedisError, _handle_redis_error)
    app.register_error_handler(StorageUnavailable, _handle_storage_error)
    app.register_error_handler(Exception, _handle_unexpected)
