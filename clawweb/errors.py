"""One error shape: ``{"error": "human readable message"}`` with the right status, for every route."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """Raised anywhere before a stream starts; becomes a JSON error response."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


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


def _handle_unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal error; the gateway log has the details")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
