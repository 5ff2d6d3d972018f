"""Errors of the MQTT bus: what a caller of `publish_originate` catches, and what a bad command payload raises."""

from __future__ import annotations

from bridge.errors import OriginateError

__all__ = ["CommandFormatError", "RemoteOriginateError"]


class RemoteOriginateError(OriginateError):
    """A click-to-call for another site did not reach it: queue full, deadline passed, rejected, or bus closed.

    It is an `OriginateError`, so the caller fails the CRM call exactly as when the local PBX refuses.
    """

    def __init__(self, message: str, *, site: str, command_id: str | None, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.site = site
        self.command_id = command_id


class CommandFormatError(ValueError):
    """A command or ack payload from the broker is malformed; carries whatever ids could still be read."""

    def __init__(self, message: str, *, command_id: str | None = None, origin: str | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.origin = origin
