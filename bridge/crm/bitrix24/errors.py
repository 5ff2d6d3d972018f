"""Bitrix24 errors, split by what the caller does next.

    Bitrix24Error (bridge.errors)
    ├── Bitrix24Unavailable        network error, timeout, 5xx, HTML error page: retry with backoff
    │   └── Bitrix24RateLimited    503 QUERY_LIMIT_EXCEEDED (or 429 from older portals): retry after `retry_after`
    ├── Bitrix24MethodPaused       429 OPERATION_TIME_LIMIT: only `method` waits until `until` (unix time)
    ├── Bitrix24AuthError          credentials unusable
    │   ├── Bitrix24TokenExpired   401 expired_token: refresh and retry once (handled inside the client)
    │   └── Bitrix24ReinstallNeeded  invalid_grant / no tokens: an administrator must re-install the app
    └── Bitrix24ApiError           the portal refused the request (4xx): permanent, keep the portal's text
        ├── Bitrix24CallNotFound   "Call is not found": for a finish that may already have been sent, this means done
        └── Bitrix24CommandPaused  a batch command got OPERATION_TIME_LIMIT: NOT permanent, retry after `until`
"""

from __future__ import annotations

from bridge.errors import Bitrix24Error

CALL_NOT_FOUND_TEXT = "Call is not found"


class Bitrix24Unavailable(Bitrix24Error):
    """Transient: the request may not have run. Safe to retry for idempotent operations."""

    def __init__(self, message: str, *, status: int | None = None, method: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.method = method


class Bitrix24RateLimited(Bitrix24Unavailable):
    def __init__(self, message: str, *, retry_after: float = 1.0, status: int | None = 503,
                 method: str | None = None) -> None:
        super().__init__(message, status=status, method=method)
        self.retry_after = retry_after


class Bitrix24MethodPaused(Bitrix24Error):
    def __init__(self, message: str, *, method: str, until: float) -> None:
        super().__init__(message)
        self.method = method
        self.until = until


class Bitrix24AuthError(Bitrix24Error):
    def __init__(self, message: str, *, error: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class Bitrix24TokenExpired(Bitrix24AuthError):
    pass


class Bitrix24ReinstallNeeded(Bitrix24AuthError):
    pass


class Bitrix24ApiError(Bitrix24Error):
    """A permanent refusal. `error` is the portal's code (often empty for telephony), `description` its text."""

    def __init__(self, error: str, description: str, *, status: int | None = None, method: str | None = None) -> None:
        super().__init__(f"{method or 'request'}: {error or 'error'}: {description}".strip())
        self.error = error
        self.description = description
        self.status = status
        self.method = method


class Bitrix24CallNotFound(Bitrix24ApiError):
    pass


class Bitrix24CommandPaused(Bitrix24ApiError):
    """Inside a batch the portal reports OPERATION_TIME_LIMIT per command; the method waits until `until`."""

    def __init__(self, error: str, description: str, *, method: str, until: float) -> None:
        super().__init__(error, description, status=429, method=method)
        self.until = until


def classify_api_error(error: str, description: str, *, status: int | None, method: str | None) -> Bitrix24ApiError:
    """Telephony errors often carry an empty code: the description decides."""
    if CALL_NOT_FOUND_TEXT.lower() in description.lower():
        return Bitrix24CallNotFound(error, description, status=status, method=method)
    return Bitrix24ApiError(error, description, status=status, method=method)
