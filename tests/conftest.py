"""Shared test plumbing: the real mosquitto broker fixture is available to every test module."""

pytest_plugins = ["tests.mqtt_broker"]
