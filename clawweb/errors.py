"""One error shape: ``{"error": "human readable message"}`` with the right status, for every route.

A dependency that fails (the database, Redis) is ``Unavailable``: a 503 with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .state.redis import unavailable_reason
from .storage import StorageUnavailable

RETRY_AFTER_UNAVAILABLE_S = 5
log = logging.getLogger("gunicorn.error")


class ApiError(Exception):
    """Raised anywhere before a stream starts; becomes a JSON error response."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


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


def _wants_json() -> bool:
    """API paths always get JSON; pages get Werkzeug's HTML error unless the client prefers JSON."""
    if request.path.startswith("/api/") or request.path.startswith("/v1/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return f"request body is larger than the limit of {limit} bytes (CLAWWEB_MAX_BODY_BYTES)"


def _handle_api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


def _handle_http_exception(exc: HTTPException) -> Response | HTTPException:
    if not _wants_json():
        return exc
    status = exc.code or 500
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
    return error_response(500, "internal error; the gateway log has the details")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(redis.RedisError, _handle_redis_error)
    app.register_error_handler(StorageUnavailable, _handle_storage_error)
    app.register_error_handler(Exception, _handle_unexpected)
