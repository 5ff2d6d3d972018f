"""HTTP errors as data, rendered as JSON by one middleware.

Each error has a status, a stable `error_id` slug clients and tests can branch on, and a short message that never
echoes request data or secrets. aiohttp's own HTTP exceptions (404, 405, 413 from `client_max_size`) are rendered in
the same shape, and anything unexpected is logged and answered 500 without details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.errors import BridgeError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(BridgeError):
    """An answer other than success; subclasses fix the status and the slug."""

    status: int = 400
    error_id: str = "bad_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, error_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if error_id is not None:
            self.error_id = error_id

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error_id": self.error_id, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(HttpError):
    status = 400
    error_id = "bad_request"


class Unauthorized(HttpError):
    status = 401
    error_id = "unauthorized"


class PayloadTooLarge(HttpError):
    status = 413
    error_id = "payload_too_large"


class UnsupportedMediaType(HttpError):
    status = 415
    error_id = "unsupported_media_type"


class TooManyRequests(HttpError):
    status = 429
    error_id = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, details={"retry_after": round(retry_after, 3)})
        self.retry_after = retry_after


_AIOHTTP_SLUGS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def render(error: HttpError) -> web.Response:
    headers = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
    return web.json_response(error.to_json(), status=error.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON answer; no traceback or input ever reaches the client."""
    try:
        return await handler(request)
    except HttpError as exc:
        log.info("http_request_refused", path=request.path, status=exc.status, error_id=exc.error_id,
                 remote=request.remote)
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = _AIOHTTP_SLUGS.get(exc.status, "http_error")
        log.info("http_request_refused", path=request.path, status=exc.status, error_id=slug, remote=request.remote)
        return web.json_response({"error_id": slug, "message": exc.reason}, status=exc.status,
                                 headers=_allow_header(exc))
    except Exception:
        log.exception("http_handler_failed", path=request.path, method=request.method)
        return web.json_response({"error_id": "internal_error", "message": "internal error"}, status=500)


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
