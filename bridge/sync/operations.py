"""CRM operations: what the policy asks the dispatcher to do in Bitrix24, as plain data that survives a JSON round trip.

An operation names the PBX call it belongs to (`call_key`) and the CRM call it acts on (`leg`: with per-agent
transfer records one PBX call becomes several CRM calls). Users are kept as extensions and resolved to Bitrix24
USER_IDs only when the operation is sent, so a directory refresh during an outage still takes effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bridge.model import Direction

__all__ = [
    "METHODS",
    "PRIORITIES",
    "CrmOp",
    "OpKind",
    "OpenCallState",
    "PolicyStep",
]


class OpKind(StrEnum):
    REGISTER = "register"
    SHOW = "show"
    HIDE = "hide"
    FINISH = "finish"
    ATTACH_RECORD = "attach_record"


METHODS: Mapping[OpKind, str] = {
    OpKind.REGISTER: "telephony.externalcall.register",
    OpKind.SHOW: "telephony.externalcall.show",
    OpKind.HIDE: "telephony.externalcall.hide",
    OpKind.FINISH: "telephony.externalcall.finish",
    OpKind.ATTACH_RECORD: "telephony.externalCall.attachRecord",
}

# Lower goes first: the card an agent is waiting for must never queue behind older finishes or uploads.
PRIORITIES: Mapping[OpKind, int] = {
    OpKind.REGISTER: 0,
    OpKind.SHOW: 0,
    OpKind.HIDE: 1,
    OpKind.FINISH: 2,
    OpKind.ATTACH_RECORD: 3,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CrmOp:
    """One Bitrix24 call to make.

    `params` holds the method's parameters except CALL_ID and USER_ID, which are filled in at send time:
    CALL_ID from `crm_call_id` (click-to-call) or from the stored register result of (`call_key`, `leg`);
    USER_ID from, in this order, the CRM owner (`owner_first`, finish of a missed call), `user_id`, then the first of
    `agents` the directory knows. Show and hide send every resolvable agent plus `user_id`.
    """

    call_key: str
    kind: OpKind
    params: Mapping[str, Any] = field(default_factory=dict)
    agents: tuple[str, ...] = ()
    user_id: int | None = None
    owner_first: bool = False
    crm_call_id: str | None = None
    leg: int = 0
    record_path: str | None = None
    at: datetime | None = None

    @property
    def method(self) -> str:
        return METHODS[self.kind]

    @property
    def priority(self) -> int:
        return PRIORITIES[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "call_key": self.call_key,
            "kind": self.kind.value,
            "params": dict(self.params),
            "agents": list(self.agents),
            "user_id": self.user_id,
            "owner_first": self.owner_first,
            "crm_call_id": self.crm_call_id,
            "leg": self.leg,
            "record_path": self.record_path,
            "at": None if self.at is None else self.at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CrmOp:
        """Raises ValueError/KeyError/TypeError on malformed data (the outbox dead-letters such rows)."""
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise TypeError("params must be an object")
        user_id = data.get("user_id")
        at = data.get("at")
        return cls(
            call_key=str(data["call_key"]),
            kind=OpKind(data["kind"]),
            params=dict(params),
            agents=tuple(str(a) for a in data.get("agents") or ()),
            user_id=None if user_id is None else int(user_id),
            owner_first=bool(data.get("owner_first")),
            crm_call_id=_opt_str(data.get("crm_call_id")),
            leg=int(data.get("leg") or 0),
            record_path=_opt_str(data.get("record_path")),
            at=None if not at else datetime.fromisoformat(str(at)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenCallState:
    """What the policy knows about a live call, kept in the outbox so a restart can close it (`close_orphan`)."""

    call_id: str
    call_key: str
    direction: Direction
    external_number: str | None
    line: str | None
    started_at: datetime
    dialler: str | None = None
    crm_call_id: str | None = None
    registered: bool = False
    leg: int = 0
    leg_started_at: datetime | None = None
    leg_answered_at: datetime | None = None
    answered_at: datetime | None = None
    answered_legs: tuple[int, ...] = ()
    first_rung: str | None = None
    ringing: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    current_agent: str | None = None
    recordings: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "call_key": self.call_key,
            "direction": self.direction.value,
            "external_number": self.external_number,
            "line": self.line,
            "started_at": self.started_at.isoformat(),
            "dialler": self.dialler,
            "crm_call_id": self.crm_call_id,
            "registered": self.registered,
            "leg": self.leg,
            "leg_started_at": _iso(self.leg_started_at),
            "leg_answered_at": _iso(self.leg_answered_at),
            "answered_at": _iso(self.answered_at),
            "answered_legs": list(self.answered_legs),
            "first_rung": self.first_rung,
            "ringing": list(self.ringing),
            "shown": list(self.shown),
            "current_agent": self.current_agent,
            "recordings": [[path, leg] for path, leg in self.recordings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OpenCallState:
        return cls(
            call_id=str(data["call_id"]),
            call_key=str(data["call_key"]),
            direction=Direction(data["direction"]),
            external_number=_opt_str(data.get("external_number")),
            line=_opt_str(data.get("line")),
            started_at=datetime.fromisoformat(str(data["started_at"])),
            dialler=_opt_str(data.get("dialler")),
            crm_call_id=_opt_str(data.get("crm_call_id")),
            registered=bool(data.get("registered")),
            leg=int(data.get("leg") or 0),
            leg_started_at=_parse(data.get("leg_started_at")),
            leg_answered_at=_parse(data.get("leg_answered_at")),
            answered_at=_parse(data.get("answered_at")),
            answered_legs=tuple(int(x) for x in data.get("answered_legs") or ()),
            first_rung=_opt_str(data.get("first_rung")),
            ringing=tuple(str(a) for a in data.get("ringing") or ()),
            shown=tuple(str(a) for a in data.get("shown") or ()),
            current_agent=_opt_str(data.get("current_agent")),
            recordings=tuple((str(p), int(leg)) for p, leg in data.get("recordings") or ()),
        )


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """The policy's answer to one event: ops to write, and the call's state to keep (None once it is closed).

    The outbox writes all of it in one transaction (`Outbox.write`). `call_key` is None when the event was ignored;
    `note` then says why, for the caller's log.
    """

    call_key: str | None
    ops: tuple[CrmOp, ...] = ()
    open_state: OpenCallState | None = None
    closed: bool = False
    note: str | None = None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(value: Any) -> datetime | None:
    return None if not value else datetime.fromisoformat(str(value))
