"""The `[avaya]` settings section: defaults, validation messages, and the password kept secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.config import AvayaSettings, Settings


def test_defaults_are_usable_and_plain_tcp() -> None:
    settings = Settings()
    assert settings.avaya.port == 4721 and not settings.avaya.tls
    assert settings.avaya.stations == () and settings.avaya.keepalive_interval < settings.avaya.session_duration


def test_password_is_secret() -> None:
    avaya = AvayaSettings(password="hunter22")
    assert "hunter22" not in repr(avaya)
    assert avaya.password.get_secret_value() == "hunter22"


@pytest.mark.parametrize(("values", "message"), [
    ({"stations": ("201", "20a")}, "must be 1-15 digits"),
    ({"stations": ("201", "201")}, "must not repeat"),
    ({"stations": ("201",), "vdns": ("201",)}, "must not share"),
    ({"keepalive_interval": 200, "session_duration": 180}, "keepalive_interval"),
    ({"reconnect_min": 10, "reconnect_max": 5}, "reconnect_min"),
    ({"protocol_version": "http://example.com/csta"}, "protocol_version"),
    ({"dial_prefix": "9;"}, "dial_prefix"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_invalid_values_are_refused_with_the_key_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AvayaSettings(**values)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B24BRIDGE_AVAYA__PASSWORD", "from-env")
    monkeypatch.setenv("B24BRIDGE_AVAYA__STATIONS", '["2001", "2002"]')
    settings = Settings()
    assert settings.avaya.password.get_secret_value() == "from-env"
    assert settings.avaya.stations == ("2001", "2002")
