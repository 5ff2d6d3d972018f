"""Shared test plumbing: the real mosquitto broker fixture is available to every test module."""

from collections.abc import Iterator

import pytest

from bridge.log import forget_secrets

pytest_plugins = ["tests.mqtt_broker"]


@pytest.fixture(autouse=True)
def _fresh_secret_registry() -> Iterator[None]:
    """Secrets registered by one test (e.g. a short simulator secret) must not mask text in the next one."""
    forget_secrets()
    yield
    forget_secrets()
