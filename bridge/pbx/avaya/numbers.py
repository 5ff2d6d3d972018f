"""Who is who on an Avaya call, and what a CSTA cause means for the CRM. Pure tables, no I/O.

DMCC names parties by device ID; `device_number` (messages.py) reduces them to numbers. A number is one of our agents
(a configured station), a watched VDN, another internal extension, or an external party (long numbers, "+" numbers,
trunk ids such as "T123#4" when the caller's number is not known).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from bridge.model import Disposition, RingStopReason

_TRUNK_ID = re.compile(r"^T\d+#\d+$")


class Role(StrEnum):
    AGENT = "agent"
    VDN = "vdn"
    INTERNAL = "internal"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class NumberPlan:
    stations: frozenset[str]
    vdns: frozenset[str] = frozenset()
    internal_max_digits: int = 6
    dial_prefix: str = ""

    @classmethod
    def of(cls, stations: Iterable[str], vdns: Iterable[str] = (), *, internal_max_digits: int = 6,
           dial_prefix: str = "") -> NumberPlan:
        return cls(frozenset(stations), frozenset(vdns), internal_max_digits, dial_prefix)

    def role(self, number: str) -> Role:
        if number in self.stations:
            return Role.AGENT
        if number in self.vdns:
            return Role.VDN
        if number.startswith("+") or _TRUNK_ID.match(number):
            return Role.EXTERNAL
        digits = sum(ch.isdigit() for ch in number)
        return Role.EXTERNAL if digits > self.internal_max_digits else Role.INTERNAL

    def external_number(self, number: str | None) -> str | None:
        """The customer's number as the CRM should see it: no trunk ids, no ARS access code in front."""
        if number is None or _TRUNK_ID.match(number):
            return None
        prefix = self.dial_prefix
        if prefix and number.startswith(prefix) and len(number) - len(prefix) > self.internal_max_digits:
            return number[len(prefix):]
        return number


# ECMA-269 event causes -> Q.850 cause codes (the call model's `hangup_cause`). Unlisted causes map to None.
_Q850 = {
    "normalClearing": 16,
    "busy": 17,
    "callNotAnswered": 19,
    "noAnswer": 19,
    "blocked": 21,
    "doNotDisturb": 21,
    "destNotObtainable": 1,
    "invalidNumberFormat": 28,
    "reorderTone": 34,
    "networkCongestion": 34,
    "trunksBusy": 34,
    "resourcesNotAvailable": 47,
    "networkNotObtainable": 38,
    "incompatibleDestination": 88,
}
_BUSY = frozenset({"busy"})
_DECLINED = frozenset({"blocked", "doNotDisturb", "callRejected"})
_NO_ANSWER = frozenset({"callNotAnswered", "noAnswer"})


def q850(cause: str | None) -> int | None:
    return None if cause is None else _Q850.get(cause)


def failed_disposition(cause: str) -> Disposition:
    """What a FailedEvent's cause means for an unanswered outbound or internal call."""
    if cause in _BUSY:
        return Disposition.BUSY
    if cause in _DECLINED:
        return Disposition.DECLINED
    if cause in _NO_ANSWER:
        return Disposition.NO_ANSWER
    return Disposition.FAILED


def ring_stop_reason(cause: str | None) -> RingStopReason:
    """Why an agent's phone stopped ringing without being answered there."""
    if cause in _BUSY:
        return RingStopReason.BUSY
    if cause in _DECLINED:
        return RingStopReason.REJECTED
    return RingStopReason.NO_ANSWER
