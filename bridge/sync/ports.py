"""What the dispatcher needs from the Bitrix24 client and the user directory, as structural types.

The real `Bitrix24Client` and `Directory` satisfy these; tests pass an in-memory portal with real behaviour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from bridge.sync.operations import CrmOp

__all__ = ["AttachHandler", "BatchOutcome", "Bitrix24Port", "DirectoryPort"]


class BatchOutcome(Protocol):
    """Per command key: its result, or the error the portal gave it (the batch itself answered 200)."""

    @property
    def results(self) -> Mapping[str, Any]: ...

    @property
    def errors(self) -> Mapping[str, BaseException]: ...


class Bitrix24Port(Protocol):
    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """One REST call through the shared rate limiter; raises the `bridge.crm.bitrix24.errors` classes."""

    async def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *,
                    halt: bool = False) -> BatchOutcome:
        """Up to 50 commands in one request; values may hold `$result[key][FIELD]` references to earlier keys."""


class DirectoryPort(Protocol):
    def user_for_extension(self, extension: str, /) -> int | None:
        """The Bitrix24 USER_ID for an extension (or the default user); None when neither exists."""


# attach_handler(op, crm_call_id): upload op.record_path to the finished CRM call; raises like Bitrix24Port.call.
AttachHandler = Callable[[CrmOp, str], Awaitable[object]]
