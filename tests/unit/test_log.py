"""Log lines are JSON for journald and never carry a secret, whatever field it hides in."""

from __future__ import annotations

import io
import json

import structlog

from bridge.log import configure_logging, register_secrets


def capture_json() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_call_id() -> None:
    stream = capture_json()
    structlog.get_logger("t").info("call_started", call_id="1732.42", crm_call_id="externalCall.x.1")
    (entry,) = lines(stream)
    assert entry["event"] == "call_started"
    assert entry["call_id"] == "1732.42"
    assert entry["level"] == "info"
    assert "timestamp" in entry


def test_secret_fields_redacted_by_name() -> None:
    stream = capture_json()
    structlog.get_logger("t").info("x", access_token="tok-abc-123", application_token="app-tok", password="pw12345")
    text = stream.getvalue()
    for value in ("tok-abc-123", "app-tok", "pw12345"):
        assert value not in text


def test_registered_secret_redacted_inside_any_string() -> None:
    register_secrets(["Zq9-unique-secret-77"])
    stream = capture_json()
    structlog.get_logger("t").warning("portal_error", error="GET https://p/rest/1/Zq9-unique-secret-77/x failed",
                                      nested={"url": "Zq9-unique-secret-77"})
    assert "Zq9-unique-secret-77" not in stream.getvalue()


def test_webhook_path_secret_redacted_even_unregistered() -> None:
    stream = capture_json()
    structlog.get_logger("t").info("request", url="https://portal.bitrix24.com/rest/7/abcdef0123456789/user.get")
    (entry,) = lines(stream)
    assert "abcdef0123456789" not in str(entry["url"])
    assert "/rest/7/***" in str(entry["url"])


def test_ids_that_merely_end_in_key_are_not_redacted() -> None:
    stream = capture_json()
    structlog.get_logger("t").info("x", call_key="1795.42", op_id=7, secret_key="hide-me-please")
    (entry,) = lines(stream)
    assert entry["call_key"] == "1795.42"
    assert "hide-me-please" not in stream.getvalue()
