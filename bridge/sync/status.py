"""Disposition -> Bitrix24 `finish` STATUS_CODE (docs/call-model.md), kept apart so the table is easy to audit."""

from __future__ import annotations

from bridge.model import Direction, Disposition

__all__ = ["status_code"]

_BAD_NUMBER_CAUSE = 1
_UNAVAILABLE_CAUSES = frozenset({18, 19, 20})
_SIMPLE = {
    Disposition.ANSWERED: "200",
    Disposition.MISSED: "304",
    Disposition.BUSY: "486",
    Disposition.DECLINED: "603",
}


def status_code(direction: Direction, disposition: Disposition, hangup_cause: int | None) -> str:
    """The STATUS_CODE for a call that ended with `disposition`.

    An inbound call nobody answered is a missed call (304, which starts the portal's missed-call handling) even if the
    tracker calls it no_answer; 603-S ("cancelled") is for outbound calls the callee never picked up.
    """
    if disposition is Disposition.FAILED:
        if hangup_cause == _BAD_NUMBER_CAUSE:
            return "404"
        if hangup_cause in _UNAVAILABLE_CAUSES:
            return "480"
        return "503"
    if disposition is Disposition.NO_ANSWER:
        return "304" if direction is Direction.INBOUND else "603-S"
    return _SIMPLE.get(disposition, "OTHER")
