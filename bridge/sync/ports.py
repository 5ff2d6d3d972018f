"""What the dispatcher needs from the Bitrix24 client and the user directory, as structural types.

The real `Bitrix24Client` and `Directory` satisfy these; tests pass an in-memory portal with real behaviour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from bridge.errors import BridgeError
from bridge.sync.operations import CrmOp

__all__ = ["AttachHandler", "AttachNotReady", "BatchOutcome", "Bitrix24Port", "DirectoryPort"]


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


class AttachNotReady(BridgeError):
    """An attach handler's answer for one op: its file is not ready yet, ask again in `retry_after` seconds.

    Only that op waits (other recordings go meanwhile, the lane does not back off) and waiting never makes it a dead
    letter: the handler itself decides when to give up and then raises a permanent error instead.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# attach_handler(op, crm_call_id, created_at): upload op.record_path to the finished CRM call. `created_at` is when
# the op was first written to the outbox (unix seconds; it survives restarts), for the handler's give-up clock.
# Raises AttachNotReady, or like Bitrix24Port.call.
AttachHandler = Callable[[CrmOp, str, float], Awaitable[object]]
