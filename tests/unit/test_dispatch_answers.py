"""How the dispatcher reads one answer (bridge.sync.answers) and how long it waits after failures (backoff)."""

from __future__ import annotations

import random

import pytest

from bridge.crm.bitrix24.errors import (
    Bitrix24ApiError,
    Bitrix24AuthError,
    Bitrix24CallNotFound,
    Bitrix24CommandPaused,
    Bitrix24MethodPaused,
    Bitrix24RateLimited,
    Bitrix24ReinstallNeeded,
    Bitrix24Unavailable,
)
from bridge.sync.answers import Lessons, inherited, judge, learn, reason
from bridge.sync.backoff import Backoff
from bridge.sync.operations import OpKind

NOT_FOUND = Bitrix24CallNotFound("", "Call is not found (call should be registered prior to finishing")


@pytest.mark.parametrize(("kind", "error", "attempted", "verdict"), [
    (OpKind.FINISH, NOT_FOUND, True, "already_done"),
    (OpKind.FINISH, NOT_FOUND, False, "dead"),
    (OpKind.SHOW, NOT_FOUND, True, "dead"),
    (OpKind.REGISTER, Bitrix24ApiError("", "User is not found or is not active"), False, "dead"),
    (OpKind.REGISTER, Bitrix24Unavailable("timeout"), True, "retry"),
    (OpKind.FINISH, Bitrix24RateLimited("slow down", retry_after=2), False, "retry"),
    (OpKind.FINISH, Bitrix24AuthError("bad"), False, "retry"),
    (OpKind.FINISH, Bitrix24ReinstallNeeded("reinstall"), False, "retry"),
    (OpKind.SHOW, Bitrix24MethodPaused("paused", method="m", until=1.0), False, "retry"),
    (OpKind.SHOW, Bitrix24CommandPaused("OPERATION_TIME_LIMIT", "x", method="m", until=1.0), False, "retry"),
    (OpKind.SHOW, None, False, "retry"),
    (OpKind.HIDE, TypeError("bug"), False, "suspect"),
])
def test_judge(kind: OpKind, error: BaseException | None, attempted: bool, verdict: str) -> None:
    assert judge(kind, error, attempted_before=attempted) == verdict


def test_learn_collects_pacing_once_per_request() -> None:
    lessons = Lessons()
    learn(Bitrix24RateLimited("a", retry_after=3.0), lessons)
    learn(Bitrix24RateLimited("b", retry_after=1.0), lessons)
    learn(Bitrix24CommandPaused("OPERATION_TIME_LIMIT", "x", method="Telephony.ExternalCall.Show", until=9.0),
          lessons)
    learn(Bitrix24MethodPaused("p", method="crm.contact.get", until=7.0), lessons)
    assert lessons.retry_after == 3.0
    assert lessons.paused == {"telephony.externalcall.show": 9.0, "crm.contact.get": 7.0}
    assert not lessons.auth_failed and lessons.unexpected is None
    auth, buggy = Lessons(), Lessons()
    learn(Bitrix24AuthError("expired"), auth)
    assert auth.auth_failed and auth.retry_after == 0.0
    bug = KeyError("x")
    learn(bug, buggy)
    assert buggy.unexpected is bug and not buggy.auth_failed


def test_a_refusal_teaches_no_pacing() -> None:
    lessons = Lessons()
    learn(Bitrix24ApiError("", "Unknown TYPE"), lessons)
    assert lessons.retry_after is None and lessons.paused == {}


def test_inherited_error_names_the_register() -> None:
    error = inherited(Bitrix24ApiError("", "User is not found or is not active"))
    assert reason(error) == "its register failed: User is not found or is not active"
    transient = Bitrix24Unavailable("down")
    assert inherited(transient) is transient


def test_backoff_grows_is_capped_honours_retry_after_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(8.0, 0.5 * 2 ** n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert backoff.next_delay(at_least=100.0) == 8.0  # a hostile retry-after cannot park the sender for long
    backoff.reset()
    assert backoff.next_delay(at_least=2.0) == 2.0
    assert backoff.next_delay() <= 1.0
    with pytest.raises(ValueError):
        Backoff(0, 1)
