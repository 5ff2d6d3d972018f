"""structlog set-up: JSON lines for journald, or a readable console, with secrets redacted on the way out.

Redaction works twice: by key (any field whose name says secret/token/password/auth) and by value (every secret
registered at start-up is replaced wherever it appears in any string, e.g. inside a URL or an error text).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "***"
_SECRET_KEY = re.compile(
    r"(secret|token|passw|webhook|signing_key|authorization|cookie|^auth$|^key$|api_key|access_code)", re.I)
_WEBHOOK_PATH = re.compile(r"(/rest/\d+/)([A-Za-z0-9]+)")
_registered: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values so that no log line ever shows them, whatever field they hide in."""
    for value in values:
        if value and len(value) >= 4:
            _registered.add(value)


def forget_secrets() -> None:
    """Drop every registered secret (tests; a process keeps its secrets for its whole life)."""
    _registered.clear()


def redact_text(text: str) -> str:
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _WEBHOOK_PATH.sub(rf"\g<1>{REDACTED}", text)


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and key not in _PUBLIC_KEYS:
            return REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    return value


# Field names that contain a "secret-looking" word but are safe and useful to operators.
_PUBLIC_KEYS = frozenset({"auth_mode", "auth_state", "token_expires_at", "auth_type", "tokens_refreshed"})


def redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and route stdlib logging through it) for the whole process."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    numeric = logging.getLevelName(level.upper())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_StdlibToStructlog()]
    root.setLevel(max(numeric, logging.WARNING))


class _StdlibToStructlog(logging.Handler):
    """Library warnings (aiohttp, asyncio) go out through the same redacting pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger(record.name)
        method = getattr(log, record.levelname.lower(), log.warning)
        method("library_log", logger=record.name, message=record.getMessage())


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
