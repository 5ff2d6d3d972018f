"""Errors of the Avaya DMCC adapter, under `PbxError` so callers above the adapter need not know the PBX.

    PbxError
    └── DmccError
        ├── DmccConnectionError   link refused, dropped, or unreadable (reconnect)
        ├── DmccTimeoutError      AES did not answer a request in time (reconnect)
        ├── DmccSessionError      AES refused or ended the application session (check user, password, version)
        └── DmccRequestError      a request got CSTAErrorCode or a negative response (`request`, `error`)
"""

from __future__ import annotations

from bridge.errors import PbxError


class DmccError(PbxError):
    pass


class DmccConnectionError(DmccError):
    pass


class DmccTimeoutError(DmccError):
    pass


class DmccSessionError(DmccError):
    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class DmccRequestError(DmccError):
    def __init__(self, message: str, *, request: str, error: str) -> None:
        super().__init__(message)
        self.request = request
        self.error = error
