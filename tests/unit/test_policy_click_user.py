"""A click-to-call that never reached the PBX is finished on the Bitrix24 user who clicked."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.model import CallEnded, CallRecord, CallStarted, Direction, Disposition
from bridge.sync.operations import OpKind
from bridge.sync.policy import CallPolicy, PolicySettings

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def failed_click(agent: str | None, crm_user_id: int | None) -> list[CallStarted | CallEnded]:
    record = CallRecord(call_id="web-1", pbx="asterisk", direction=Direction.OUTBOUND, external_number="+79160000001",
                        line=None, agent=agent, agents_rung=(), disposition=Disposition.FAILED, started_at=NOW,
                        answered_at=None, ended_at=NOW, talk_seconds=0, crm_call_id="externalCall.abc.1",
                        failure_reason="no extension for Bitrix24 user 7", crm_user_id=crm_user_id)
    return [CallStarted(call_id="web-1", at=NOW, direction=Direction.OUTBOUND, external_number="+79160000001",
                        line=None, agent=agent, crm_call_id="externalCall.abc.1"),
            CallEnded(call_id="web-1", at=NOW, call=record)]


def finish_of(events: list[CallStarted | CallEnded], settings: PolicySettings) -> tuple[tuple[str, ...], int | None]:
    policy = CallPolicy(settings)
    ops = [op for event in events for op in policy.on_event(event)]
    assert [op.kind for op in ops] == [OpKind.FINISH]
    (finish,) = ops
    assert finish.crm_call_id == "externalCall.abc.1"
    assert finish.params["STATUS_CODE"] == "503"
    assert finish.params["FAILED_REASON"] == "no extension for Bitrix24 user 7"
    return finish.agents, finish.user_id


def test_unknown_user_finishes_on_the_clicking_user() -> None:
    assert finish_of(failed_click(None, 7), PolicySettings(default_user_id=1)) == ((), 7)


def test_without_the_clicking_user_the_default_user_is_used() -> None:
    assert finish_of(failed_click(None, None), PolicySettings(default_user_id=1)) == ((), 1)


def test_a_known_agent_still_wins() -> None:
    assert finish_of(failed_click("101", 7), PolicySettings(default_user_id=1)) == (("101",), None)
