"""Reading the portal's answer to one op: done, retry, dead letter, or a client bug to isolate.

Pure functions over the `bridge.crm.bitrix24.errors` tree, so the rules are in one place and easy to test:
transient errors (unavailable, rate limited, auth, paused) keep the op; a portal refusal is permanent, except
"Call is not found" for a finish that may already have been sent, which means it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CallNotFound,
    Bitrix24CommandPaused,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24Unavailable,
)
from bridge.sync.operations import OpKind

__all__ = ["Lessons", "Verdict", "code", "has_call_id", "inherited", "is_transient", "judge", "learn", "reason"]

Verdict = Literal["already_done", "dead", "retry", "suspect"]


@dataclass(slots=True)
class Lessons:
    """What one request taught about the portal, applied once however many ops it carried."""

    retry_after: float | None = None
    paused: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    auth_failed: bool = False
    unexpected: BaseException | None = None


def is_transient(error: BaseException) -> bool:
    """The portal did not refuse this op: it may go again later, unchanged."""
    return isinstance(error, Bitrix24Unavailable | Bitrix24AuthError | Bitrix24MethodPaused | Bitrix24CommandPaused)


def judge(kind: OpKind, error: BaseException | None, *, attempted_before: bool) -> Verdict:
    """What to do with an op the portal did not simply accept (`error` None: it skipped the command)."""
    if error is None or is_transient(error):
        return "retry"
    if isinstance(error, Bitrix24CallNotFound) and kind is OpKind.FINISH and attempted_before:
        return "already_done"  # an earlier send went through but its answer was lost
    if isinstance(error, Bitrix24ApiError):
        return "dead"
    return "suspect"  # not an answer from the portal at all: a bug somewhere on our side


def learn(error: BaseException | None, lessons: Lessons, *, method: str | None = None) -> None:
    """Note what `error` says about pacing: wait (and how long), or hold one method."""
    if error is None:
        lessons.retry_after = lessons.retry_after or 0.0
        return
    lessons.error = f"{type(error).__name__}: {error}"
    if isinstance(error, Bitrix24MethodPaused):
        lessons.paused[error.method.lower()] = error.until
    elif isinstance(error, Bitrix24CommandPaused):
        lessons.paused[(error.method or method or "").lower()] = error.until
    elif isinstance(error, Bitrix24RateLimited):
        lessons.retry_after = max(lessons.retry_after or 0.0, error.retry_after)
    elif isinstance(error, Bitrix24ApiError):
        return
    else:
        lessons.retry_after = max(lessons.retry_after or 0.0, 0.0)
        if isinstance(error, Bitrix24AuthError):
            lessons.auth_failed = True
        elif not is_transient(error):
            lessons.unexpected = error


def inherited(error: BaseException) -> BaseException:
    """The error an op inherits from the failed register whose CALL_ID it referenced in the same batch."""
    if isinstance(error, Bitrix24ApiError) and not isinstance(error, Bitrix24CommandPaused):
        return Bitrix24ApiError(error.error, f"its register failed: {reason(error)}", method=error.method)
    return error


def has_call_id(result: Any) -> bool:
    return isinstance(result, Mapping) and isinstance(result.get("CALL_ID"), str) and bool(result["CALL_ID"])


def reason(error: BaseException | None) -> str:
    """The dead letter's text: the portal's own words when there are some."""
    if isinstance(error, Bitrix24ApiError):
        return error.description or str(error)
    return str(error) if error is not None else "no answer"


def code(error: BaseException | None) -> str:
    if isinstance(error, Bitrix24ApiError):
        return error.error
    return type(error).__name__ if error is not None else ""
