"""Every error the API returns is JSON of one shape: ``{"code": int, "message": str}``.

``code`` repeats the HTTP status so that a client reading only the body
still knows what happened; ``message`` says it for a person.  Views raise
``ApiError`` (or a werkzeug ``HTTPException``); anything else is a bug, is
logged with its traceback and answered as a 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

__all__ = ["ApiError", "error_response", "register_error_handlers"]

log = logging.getLogger("phobos.api")


class ApiError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, **extra: Any):
    body = {"code": status, "message": message, **extra}
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn every error into the JSON shape above."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = error_response(err.status, err.message, **err.extra)
        if "retry_after_s" in err.extra:
            response.headers["Retry-After"] = str(err.extra["retry_after_s"])
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        message = err.description or err.name
        if err.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body too large; at most {limit} bytes are accepted"
        response = error_response(err.code or 500, message)
        if err.code == 405 and err.response is None:
            allowed = getattr(err, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    from api.storage import StoreError

    @app.errorhandler(StoreError)
    def _store_failed(err: StoreError):
        # The request was fine; the store was not. 503 tells senders to retry.
        log.warning("store failed: %s", err)
        response = error_response(503, f"the store failed; retry later: {err}")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")
