"""The border to aiohttp: library errors and raw HTTP answers become our error classes here, once.

Nothing outside `bridge.crm.bitrix24` sees aiohttp exceptions. `interpret()` is pure: status + body bytes in, the
decoded body or one of the `Bitrix24Error` classes out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24TokenExpired,
    Bitrix24Unavailable,
    classify_api_error,
)
from bridge.errors import Bitrix24Error
from bridge.log import redact_text

__all__ = ["Answer", "interpret", "map_client_errors", "moved_base", "operating_reset_at", "webhook_secrets"]

QUERY_LIMIT = "QUERY_LIMIT_EXCEEDED"
OPERATION_LIMIT = "OPERATION_TIME_LIMIT"
_TOKEN_ERRORS = frozenset({"expired_token", "invalid_token"})
_AUTH_ERRORS = frozenset({"NO_AUTH_FOUND", "INVALID_CREDENTIALS", "no_auth_found", "invalid_credentials"})
_SNIPPET = 200


@contextmanager
def map_client_errors(method: str) -> Iterator[None]:
    """aiohttp/socket failures and timeouts -> `Bitrix24Unavailable`, chained with `from`."""
    try:
        yield
    except Bitrix24Error:
        raise
    except TimeoutError as exc:
        raise Bitrix24Unavailable(f"{method}: no answer in time", method=method) from exc
    except aiohttp.ClientError as exc:
        raise Bitrix24Unavailable(f"{method}: {type(exc).__name__}: {redact_text(str(exc))}", method=method) from exc
    except OSError as exc:
        raise Bitrix24Unavailable(f"{method}: {type(exc).__name__}: {redact_text(str(exc))}", method=method) from exc


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded successful body: `result` plus paging and timing."""

    body: dict[str, Any]

    @property
    def result(self) -> Any:
        return self.body.get("result")

    @property
    def time(self) -> dict[str, Any]:
        value = self.body.get("time")
        return value if isinstance(value, dict) else {}


def operating_reset_at(time_info: Any) -> float | None:
    if isinstance(time_info, dict):
        try:
            value = float(time_info.get("operating_reset_at") or 0)
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None
    return None


def _decode(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def interpret(method: str, status: int, payload: bytes, *, paused_until: float | None = None,
              now: float | None = None, rate: float = 2.0) -> Answer:
    """Classify one HTTP answer. `paused_until` is the reset time last seen for this method (for a 429 without one)."""
    body = _decode(payload)
    if body is None:
        snippet = redact_text(payload[:_SNIPPET].decode("utf-8", "replace")).strip()
        if status >= 500 or status < 400:
            raise Bitrix24Unavailable(f"{method}: HTTP {status} with a non-JSON body", status=status, method=method)
        raise Bitrix24ApiError(f"HTTP_{status}", snippet or f"HTTP {status}", status=status, method=method)
    error = body.get("error")
    if error is None and 200 <= status < 300:
        return Answer(body)
    code = "" if error is None else str(error)
    text = str(body.get("error_description") or "")
    if code == QUERY_LIMIT or (status == 503 and code == ""):
        raise Bitrix24RateLimited(f"{method}: {code or 'HTTP 503'}: {text}".strip(), retry_after=1.0 / rate,
                                  status=status, method=method)
    if code == OPERATION_LIMIT:
        moment = now if now is not None else time.time()
        until = operating_reset_at(body.get("time")) or paused_until
        if until is None or until <= moment:
            until = moment + 60.0
        raise Bitrix24MethodPaused(f"{method}: {text or code}", method=method, until=until)
    if code in _TOKEN_ERRORS:
        raise Bitrix24TokenExpired(text or code, error=code, status=status)
    if status in (401, 403) and code in _AUTH_ERRORS:
        raise Bitrix24AuthError(f"{method}: {code}: {text}", error=code, status=status)
    if status >= 500:
        raise Bitrix24Unavailable(f"{method}: HTTP {status} {code}: {text}".strip(), status=status, method=method)
    raise classify_api_error(code, text, status=status, method=method)


def moved_base(old_base: str, location: str, method: str) -> str:
    """New REST base after a 302: the Location minus the method name, or the new host with the old path."""
    target = urlsplit(urljoin(old_base + method, location))
    path = target.path
    for suffix in (method + ".json", method):
        if path.lower().endswith("/" + suffix.lower()):
            path = path[: len(path) - len(suffix)]
            break
    else:
        path = urlsplit(old_base).path
    return urlunsplit((target.scheme, target.netloc, path if path.endswith("/") else path + "/", "", ""))


def webhook_secrets(base_url: str) -> list[str]:
    """The secret path segment of `.../rest/<user>/<secret>/`, for log redaction."""
    parts = [p for p in urlsplit(base_url).path.split("/") if p]
    return [parts[i + 2] for i, p in enumerate(parts[:-2]) if p == "rest" and parts[i + 1].isdigit()]
