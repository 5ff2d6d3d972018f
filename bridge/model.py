"""The one vocabulary every part of the bridge speaks (see docs/call-model.md).

PBX adapters turn their own events into `CallEvent`s; the Bitrix24 policy, MQTT, logs and `b24-bridge replay`
read only these types. Everything here is plain frozen data: no I/O, no clock reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeAlias


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class Disposition(StrEnum):
    ANSWERED = "answered"
    MISSED = "missed"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    DECLINED = "declined"
    FAILED = "failed"


class RingStopReason(StrEnum):
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    REJECTED = "rejected"
    CALLER_GONE = "caller_gone"


class TransferKind(StrEnum):
    BLIND = "blind"
    ATTENDED = "attended"


@dataclass(frozen=True, slots=True)
class Transfer:
    from_agent: str | None
    to_agent: str | None
    kind: TransferKind

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_agent, "to": self.to_agent, "kind": self.kind.value}


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The finished call: the payload of `CallEnded` and one line of `b24-bridge replay`."""

    call_id: str
    pbx: str
    direction: Direction
    external_number: str | None
    line: str | None
    agent: str | None
    agents_rung: tuple[str, ...]
    disposition: Disposition
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    talk_seconds: int
    hangup_cause: int | None = None
    transfers: tuple[Transfer, ...] = ()
    recordings: tuple[str, ...] = ()
    crm_call_id: str | None = None
    # Not in the minimal model: the PBX's own words when a call failed (Bitrix24 FAILED_REASON).
    failure_reason: str | None = None
    # The Bitrix24 user behind a click-to-call, for finishing it when no extension could be found for them.
    crm_user_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "pbx": self.pbx,
            "direction": self.direction.value,
            "external_number": self.external_number,
            "line": self.line,
            "agent": self.agent,
            "agents_rung": list(self.agents_rung),
            "disposition": self.disposition.value,
            "started_at": self.started_at.isoformat(timespec="milliseconds"),
            "answered_at": _iso(self.answered_at),
            "ended_at": self.ended_at.isoformat(timespec="milliseconds"),
            "talk_seconds": self.talk_seconds,
            "hangup_cause": self.hangup_cause,
            "transfers": [t.to_json() for t in self.transfers],
            "recordings": list(self.recordings),
            "crm_call_id": self.crm_call_id,
            "failure_reason": self.failure_reason,
            "crm_user_id": self.crm_user_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        return cls(
            call_id=str(data["call_id"]),
            pbx=str(data["pbx"]),
            direction=Direction(data["direction"]),
            external_number=data.get("external_number"),
            line=data.get("line"),
            agent=data.get("agent"),
            agents_rung=tuple(data.get("agents_rung") or ()),
            disposition=Disposition(data["disposition"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            answered_at=_parse_iso(data.get("answered_at")),
            ended_at=datetime.fromisoformat(data["ended_at"]),
            talk_seconds=int(data.get("talk_seconds") or 0),
            hangup_cause=data.get("hangup_cause"),
            transfers=tuple(
                Transfer(t.get("from"), t.get("to"), TransferKind(t["kind"])) for t in data.get("transfers") or ()
            ),
            recordings=tuple(data.get("recordings") or ()),
            crm_call_id=data.get("crm_call_id"),
            failure_reason=data.get("failure_reason"),
            crm_user_id=data.get("crm_user_id"),
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _parse_iso(value: str | None) -> datetime | None:
    return None if not value else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted:
    call_id: str
    at: datetime
    direction: Direction
    external_number: str | None
    line: str | None
    agent: str | None = None
    crm_call_id: str | None = None
    kind: Literal["started"] = field(default="started", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentsRinging:
    call_id: str
    at: datetime
    agents: tuple[str, ...]
    kind: Literal["ringing"] = field(default="ringing", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RingStopped:
    call_id: str
    at: datetime
    agent: str
    reason: RingStopReason
    kind: Literal["ring_stopped"] = field(default="ring_stopped", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswered:
    call_id: str
    at: datetime
    agent: str
    kind: Literal["answered"] = field(default="answered", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTransferred:
    call_id: str
    at: datetime
    from_agent: str | None
    to_agent: str | None
    transfer_kind: TransferKind
    kind: Literal["transferred"] = field(default="transferred", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingStarted:
    call_id: str
    at: datetime
    path: str
    kind: Literal["recording"] = field(default="recording", init=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    call_id: str
    at: datetime
    call: CallRecord
    kind: Literal["ended"] = field(default="ended", init=False)


CallEvent: TypeAlias = (
    CallStarted | AgentsRinging | RingStopped | CallAnswered | CallTransferred | RecordingStarted | CallEnded
)


def event_to_json(event: CallEvent) -> dict[str, Any]:
    """A JSON-ready dict of any CallEvent, with `kind` first (MQTT payloads, logs, fixtures)."""
    out: dict[str, Any] = {"kind": event.kind, "call_id": event.call_id,
                           "at": event.at.isoformat(timespec="milliseconds")}
    for f in dataclasses.fields(event):
        if f.name in out:
            continue
        value = getattr(event, f.name)
        if isinstance(value, CallRecord):
            value = value.to_json()
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginateRequest:
    """Ring the agent's device first, then dial the customer (click-to-call and callbacks).

    `number` is already validated (`+` and digits); adapters must still never splice it into a protocol unchecked.
    """

    request_id: str
    extension: str
    number: str
    crm_call_id: str | None = None
    caller_id_name: str | None = None
    timeout_seconds: int = 30
