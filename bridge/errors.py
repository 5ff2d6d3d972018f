"""The bridge's exception tree. Callers branch on what to do next: retry, re-authenticate, or give up and record why.

    BridgeError
    ├── ConfigError                  bad settings; the message names the key and the fix (exit code 2)
    ├── StoreError                   the SQLite store cannot be opened or written
    │   └── StoreBusy                another process holds the write lock: try again shortly
    ├── AmiError                     Asterisk Manager Interface
    │   ├── AmiConnectionError       socket closed / refused / dead link (retry after reconnect)
    │   ├── AmiLoginError            wrong credentials or rights (fix manager.conf)
    │   ├── AmiActionError           the action got `Response: Error`
    │   └── AmiTimeoutError          no answer within the action's deadline
    ├── PbxError                     adapter-neutral failures (originate refused, link down)
    │   └── OriginateError
    └── Bitrix24Error                (see bridge.crm.bitrix24.errors for the subtree)
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Invalid configuration; `key` names the setting at fault."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreError(BridgeError):
    """The durable store cannot be used; `path` names the file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreBusy(StoreError):
    """Another process holds the store's write lock (an operator's sqlite3 shell, a backup): retry shortly."""


class AmiError(BridgeError):
    pass


class AmiConnectionError(AmiError):
    pass


class AmiLoginError(AmiError):
    pass


class AmiActionError(AmiError):
    def __init__(self, message: str, *, action: str | None = None, response: str | None = None) -> None:
        super().__init__(message)
        self.action = action
        self.response = response


class AmiTimeoutError(AmiError):
    pass


class PbxError(BridgeError):
    pass


class OriginateError(PbxError):
    """The PBX refused or could not place an originate; `reason` is the PBX's own words."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class Bitrix24Error(BridgeError):
    """Root of the Bitrix24 subtree; see `bridge.crm.bitrix24.errors`."""
