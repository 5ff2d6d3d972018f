"""Errors of the Cisco Finesse adapter, below `PbxError` so callers can branch without knowing the PBX.

    PbxError (bridge.errors)
    └── FinesseError
        ├── FinesseApiError          REST answered with an error status (`status`, `error_type`, `error_message`)
        │   └── FinesseAuthError     401: wrong user id or password (fix the config, do not hammer)
        ├── FinesseUnavailableError  REST unreachable or timed out (retry later)
        ├── XmppError                the notification stream failed (reconnect)
        │   └── XmppAuthError        SASL refused (fix the config; reconnect at the slowest pace)
        └── XmlRefusedError          input that is not plain, well-formed XML (DTD, entities, truncation, too big)
"""

from __future__ import annotations

from bridge.errors import PbxError


class FinesseError(PbxError):
    """Root of the Finesse subtree."""


class FinesseApiError(FinesseError):
    """Finesse answered a REST request with an error; the fields are Finesse's own words (ApiErrors XML)."""

    def __init__(self, message: str, *, status: int, error_type: str | None = None,
                 error_message: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error_message = error_message


class FinesseAuthError(FinesseApiError):
    pass


class FinesseUnavailableError(FinesseError):
    pass


class XmppError(FinesseError):
    pass


class XmppAuthError(XmppError):
    pass


class XmlRefusedError(FinesseError, ValueError):
    """The bytes are not acceptable XML; the message says why (never echoes the input)."""
