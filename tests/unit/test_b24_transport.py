"""Pure parts of the Bitrix24 client: answer classification, 302 targets, token payload parsing."""

from __future__ import annotations

import json

import pytest

from bridge.crm.bitrix24.auth import Tokens, tokens_from_payload
from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CallNotFound,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24TokenExpired,
    Bitrix24Unavailable,
)
from bridge.crm.bitrix24.transport import interpret, moved_base, webhook_secrets


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_success_body() -> None:
    answer = interpret("user.get", 200, body(result=[{"ID": "1"}], total=1, time={"operating_reset_at": 5.0}))
    assert answer.result == [{"ID": "1"}] and answer.body["total"] == 1 and answer.time["operating_reset_at"] == 5.0


@pytest.mark.parametrize(("status", "payload", "expected"), [
    (503, body(error="QUERY_LIMIT_EXCEEDED", error_description="Too many requests"), Bitrix24RateLimited),
    (429, body(error="QUERY_LIMIT_EXCEEDED"), Bitrix24RateLimited),
    (503, body(error="", error_description=""), Bitrix24RateLimited),
    (503, body(error="OVERLOAD_LIMIT", error_description="REST API is blocked due to overload"), Bitrix24Unavailable),
    (500, body(error="INTERNAL_SERVER_ERROR"), Bitrix24Unavailable),
    (502, b"<html><body>Bad Gateway</body></html>", Bitrix24Unavailable),
    (200, b"<html>maintenance</html>", Bitrix24Unavailable),
    (200, b"", Bitrix24Unavailable),
    (200, b"[1, 2]", Bitrix24Unavailable),
    (404, b"<html>not here</html>", Bitrix24ApiError),
    (401, body(error="expired_token", error_description="The access token provided has expired."),
     Bitrix24TokenExpired),
    (401, body(error="INVALID_CREDENTIALS", error_description="Invalid request credentials"), Bitrix24AuthError),
    (403, body(error="WRONG_AUTH_TYPE", error_description="Current authorization type is denied"), Bitrix24ApiError),
    (400, body(error="", error_description="Call is not found (call should be registered prior to finishing"),
     Bitrix24CallNotFound),
    (200, body(error="ERROR_CORE", error_description="odd"), Bitrix24ApiError),
])
def test_classification(status: int, payload: bytes, expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught:
        interpret("telephony.externalcall.finish", status, payload)
    assert type(caught.value) is expected


def test_api_error_keeps_code_and_text() -> None:
    with pytest.raises(Bitrix24ApiError) as caught:
        interpret("telephony.externalcall.register", 400, body(error="", error_description="Unknown TYPE"))
    assert (caught.value.error, caught.value.description, caught.value.status) == ("", "Unknown TYPE", 400)


def test_operation_limit_until() -> None:
    limit = body(error="OPERATION_TIME_LIMIT", error_description="Method is blocked due to operation time limit.")
    with pytest.raises(Bitrix24MethodPaused) as caught:
        interpret("crm.deal.list", 429, limit, now=1000.0, paused_until=1300.0)
    assert (caught.value.method, caught.value.until) == ("crm.deal.list", 1300.0)
    with pytest.raises(Bitrix24MethodPaused) as caught:
        interpret("crm.deal.list", 429, limit, now=1000.0)
    assert caught.value.until == 1060.0
    with_time = body(error="OPERATION_TIME_LIMIT", time={"operating_reset_at": 1500})
    with pytest.raises(Bitrix24MethodPaused) as caught:
        interpret("crm.deal.list", 429, with_time, now=1000.0, paused_until=1300.0)
    assert caught.value.until == 1500.0


def test_html_error_text_is_redacted_and_short() -> None:
    with pytest.raises(Bitrix24ApiError) as caught:
        interpret("user.get", 404, b"<html>" + b"x" * 5000 + b"</html>")
    assert len(caught.value.description) <= 200


@pytest.mark.parametrize(("old", "location", "new"), [
    ("https://a.bitrix24.de/rest/1/s/", "https://b.bitrix24.de/rest/1/s/user.get", "https://b.bitrix24.de/rest/1/s/"),
    ("https://a.bitrix24.de/rest/", "https://b.bitrix24.de/rest/user.get.json", "https://b.bitrix24.de/rest/"),
    ("https://a.bitrix24.de/rest/", "https://b.bitrix24.de/", "https://b.bitrix24.de/rest/"),
    ("https://a.bitrix24.de/rest/", "/x/rest/user.get?auth=1", "https://a.bitrix24.de/x/rest/"),
])
def test_moved_base(old: str, location: str, new: str) -> None:
    assert moved_base(old, location, "user.get") == new


def test_webhook_secret_extraction() -> None:
    assert webhook_secrets("https://p.bitrix24.de/rest/12/abc123/") == ["abc123"]
    assert webhook_secrets("https://p.bitrix24.de/rest/") == []


def test_tokens_from_install_form_and_refresh_answer() -> None:
    form = {"event": "ONAPPINSTALL", "auth[access_token]": "A1", "auth[refresh_token]": "R1",
            "auth[expires_in]": "3600", "auth[client_endpoint]": "https://p.bitrix24.de/rest",
            "auth[server_endpoint]": "https://oauth.bitrix.info/rest/", "auth[member_id]": "m1",
            "auth[application_token]": "app1", "auth[domain]": "p.bitrix24.de"}
    tokens = tokens_from_payload(form, now=1000.0)
    assert tokens == Tokens(access_token="A1", refresh_token="R1", client_endpoint="https://p.bitrix24.de/rest/",
                            server_endpoint="https://oauth.bitrix.info/rest/", member_id="m1",
                            application_token="app1", domain="p.bitrix24.de", expires=4600.0)
    refreshed = tokens_from_payload({"access_token": "A2", "refresh_token": "R2", "expires": 9000}, previous=tokens)
    assert (refreshed.access_token, refreshed.refresh_token, refreshed.expires) == ("A2", "R2", 9000.0)
    assert refreshed.application_token == "app1" and refreshed.client_endpoint == tokens.client_endpoint
    nested = tokens_from_payload({"auth": {"access_token": "A3", "refresh_token": "R3",
                                           "client_endpoint": "https://x/rest/", "expires": "garbage"}})
    assert nested.expires == 0.0


@pytest.mark.parametrize("payload", [{}, {"auth[access_token]": "A"}, {"auth[access_token]": "A",
                                                                      "auth[refresh_token]": "R"}])
def test_incomplete_token_payloads_are_refused(payload: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        tokens_from_payload(payload)
