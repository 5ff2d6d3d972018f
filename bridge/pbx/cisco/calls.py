"""One tracked call: the Dialog snapshots seen for it, merged, and the CallEvents their changes imply (pure).

Finesse sends whole Dialog snapshots, per observing agent, over separate XMPP sessions, so two snapshots of the same
dialog may arrive out of order. Each participant (leg) therefore keeps the state with the newest `stateChangeTime`;
a leg missing from a snapshot newer than its last change counts as dropped. Events come from the difference between
the derived views (who rings, who is connected to the far party) before and after a merge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallTransferred,
    Direction,
    Disposition,
    RingStopped,
    RingStopReason,
    Transfer,
    TransferKind,
)
from bridge.pbx.cisco.dialog import Dialog, Participant

__all__ = ["DialogView", "Leg", "TrackedCall", "classify"]

LIVE = frozenset({"ACTIVE", "HELD"})
LEG_OVER = frozenset({"DROPPED", "FAILED", "WRAP_UP"})
DIALOG_OVER = frozenset({"DROPPED", "FAILED"})
OUTBOUND_TYPES = frozenset({"OUT", "AGENT_OUT", "OUTBOUND", "OUTBOUND_CALLBACK", "OUTBOUND_PERSONAL_CALLBACK",
                            "OUTBOUND_PREVIEW", "OUTBOUND_DIRECT_PREVIEW"})
_BUSY = frozenset({"BUSY", "USER_BUSY"})
_REJECTED = frozenset({"REJECTED", "CALL_REJECTED", "DECLINED"})
_FAILED_CAUSES = frozenset({"BAD_DESTINATION", "INVALID_DESTINATION", "NETWORK_CONGESTION", "NETWORK_NOT_OBTAINABLE",
                            "CALL_NOT_ANSWERED_NETWORK", "RESOURCES_NOT_AVAILABLE", "TRUNKS_BUSY", "OTHER"})


@dataclass(slots=True)
class Leg:
    address: str
    state: str
    cause: str | None
    changed: datetime | None
    is_agent: bool


@dataclass(slots=True)
class DialogView:
    id: str
    state: str
    consult: bool
    legs: dict[str, Leg] = field(default_factory=dict)
    observers: set[str] = field(default_factory=set)
    snapshot_time: datetime | None = None

    @property
    def over(self) -> bool:
        legs = self.legs.values()
        return self.state in DIALOG_OVER or (bool(legs) and all(leg.state in LEG_OVER for leg in legs))

    @property
    def carries_far_party(self) -> bool:
        return any(not leg.is_agent for leg in self.legs.values())


def classify(dialog: Dialog, agent_exts: frozenset[str]) -> tuple[Direction, str | None, str | None, str | None]:
    """(direction, external_number, line, dialling agent) of a new dialog, from its addresses and callType."""
    src, dst = dialog.from_address, dialog.to_address or dialog.dialed_number
    src_agent, dst_agent = src in agent_exts, dst in agent_exts
    if (src_agent and dst_agent) or (dialog.call_type == "AGENT_INSIDE" and src_agent):
        return Direction.INTERNAL, dst, None, src
    if src_agent or (dialog.call_type in OUTBOUND_TYPES and src is not None and not dst_agent):
        return Direction.OUTBOUND, dst, None, src
    return Direction.INBOUND, src, dialog.dnis or dialog.dialed_number or dialog.to_address, None


@dataclass(slots=True)
class TrackedCall:
    call_id: str
    pbx: str
    direction: Direction
    external_number: str | None
    line: str | None
    caller_agent: str | None
    crm_call_id: str | None
    started_at: datetime
    agent_exts: frozenset[str]
    primary_dialog: str = ""
    views: dict[str, DialogView] = field(default_factory=dict)
    ringing: set[str] = field(default_factory=set)
    rung: list[str] = field(default_factory=list)
    connected: set[str] = field(default_factory=set)
    answered_at: datetime | None = None
    current_agent: str | None = None
    transfers: list[Transfer] = field(default_factory=list)
    consulted: bool = False
    conferenced: bool = False
    failure_reason: str | None = None
    last_at: datetime | None = None
    # Set while no observer sees the call any more although it was not seen to end: (PBX time, local deadline).
    orphan_since: datetime | None = None
    orphan_deadline: datetime | None = None

    # ---- merging -------------------------------------------------------------------------------------------------

    def is_agent(self, p: Participant) -> bool:
        return p.media_address in self.agent_exts or (p.address_type or "").upper() == "AGENT_DEVICE"

    def merge(self, view: DialogView, dialog: Dialog, received_at: datetime) -> datetime:
        """Fold one snapshot into `view`; return the (per-call monotonic) time of this snapshot."""
        snap = dialog.latest_change or received_at
        for p in dialog.participants:
            leg = view.legs.get(p.media_address)
            when = p.state_change_time or p.start_time or snap
            if leg is None or leg.changed is None or when >= leg.changed:
                view.legs[p.media_address] = Leg(p.media_address, p.state, p.state_cause, when, self.is_agent(p))
        present = {p.media_address for p in dialog.participants}
        for address, leg in list(view.legs.items()):
            if address not in present and leg.state not in LEG_OVER and (leg.changed is None or snap >= leg.changed):
                view.legs[address] = replace(leg, state="DROPPED", changed=snap)
        if view.snapshot_time is None or snap >= view.snapshot_time or dialog.state in DIALOG_OVER:
            # A dialog with no active participant is over for everybody, however old the snapshot looks.
            view.state = dialog.state
            view.snapshot_time = max(snap, view.snapshot_time or snap)
        return self.stamp(snap)

    def drop_agent_legs(self, view: DialogView, extension: str, when: datetime) -> None:
        """The observer `extension` lost this dialog: its own legs are over whatever the last snapshot said."""
        leg = view.legs.get(extension)
        if leg is not None and leg.state not in LEG_OVER:
            view.legs[extension] = replace(leg, state="DROPPED", changed=max(when, leg.changed or when))

    def stamp(self, when: datetime) -> datetime:
        """Event times never go backwards within one call."""
        if self.last_at is not None and when < self.last_at:
            return self.last_at
        self.last_at = when
        return when

    # ---- derived views -------------------------------------------------------------------------------------------

    def _far(self, leg: Leg) -> bool:
        if self.direction is Direction.INTERNAL:
            return leg.address == self.caller_agent
        return not leg.is_agent

    def _alerting(self) -> set[str]:
        return {leg.address for view in self.views.values() for leg in view.legs.values()
                if leg.is_agent and not self._far(leg) and leg.state == "ALERTING"
                and leg.address != self.caller_agent}

    def _connected(self) -> set[str]:
        out: set[str] = set()
        for view in self.views.values():
            if view.consult and not view.carries_far_party:
                continue
            far = [leg for leg in view.legs.values() if self._far(leg)]
            far_live = any(leg.state in LIVE for leg in far) if far else view.state == "ACTIVE"
            if far_live:
                out |= {leg.address for leg in view.legs.values() if not self._far(leg) and leg.state in LIVE}
        return out

    def _live_anywhere(self, agent: str) -> bool:
        return any(view.legs[agent].state in LIVE for view in self.views.values() if agent in view.legs)

    def _cause_of(self, agent: str) -> str:
        causes = [(view.legs[agent].cause or "").upper() for view in self.views.values() if agent in view.legs]
        return next((c for c in causes if c), "")

    def _far_gone(self) -> bool:
        far = [leg for view in self.views.values() for leg in view.legs.values() if self._far(leg)]
        return bool(far) and all(leg.state in LEG_OVER for leg in far)

    # ---- events --------------------------------------------------------------------------------------------------

    def derive(self, at: datetime) -> list[CallEvent]:
        """Events implied by the current merged state compared with the last derived state."""
        events: list[CallEvent] = []
        alerting = self._alerting()
        fresh = alerting - self.ringing
        if fresh:
            events.append(AgentsRinging(call_id=self.call_id, at=at, agents=tuple(sorted(fresh))))
            self.rung.extend(a for a in sorted(fresh) if a not in self.rung)
        stopped = self.ringing - alerting
        self.ringing = alerting
        connected = self._connected()
        events.extend(self._connection_changes(connected, at))
        for agent in sorted(stopped):
            if self._live_anywhere(agent):
                continue
            events.append(RingStopped(call_id=self.call_id, at=at, agent=agent, reason=self._stop_reason(agent)))
        return events

    def _stop_reason(self, agent: str) -> RingStopReason:
        cause = self._cause_of(agent)
        if self.connected:
            return RingStopReason.ANSWERED_ELSEWHERE
        if cause in _BUSY:
            return RingStopReason.BUSY
        if cause in _REJECTED:
            return RingStopReason.REJECTED
        if self._far_gone():
            return RingStopReason.CALLER_GONE
        return RingStopReason.NO_ANSWER

    def _connection_changes(self, connected: set[str], at: datetime) -> list[CallEvent]:
        events: list[CallEvent] = []
        fresh = connected - self.connected
        if len(connected) > 1:
            self.conferenced = True
        self.connected = connected
        self.rung.extend(a for a in sorted(fresh) if a not in self.rung and a != self.caller_agent)
        if fresh and self.answered_at is None:
            agent = self.caller_agent if self.caller_agent in fresh else sorted(fresh)[0]
            self.answered_at = at
            self.current_agent = agent
            events.append(CallAnswered(call_id=self.call_id, at=at, agent=agent))
            return events
        previous = self.current_agent
        if previous is not None and previous not in connected and connected:
            target = sorted(fresh)[0] if fresh else sorted(connected)[0]
            kind = TransferKind.ATTENDED if self.consulted or self.conferenced else TransferKind.BLIND
            self.transfers.append(Transfer(previous, target, kind))
            self.current_agent = target
            events.append(CallTransferred(call_id=self.call_id, at=at, from_agent=previous, to_agent=target,
                                          transfer_kind=kind))
            self.conferenced = len(connected) > 1
        elif previous is None and fresh:
            self.current_agent = sorted(fresh)[0]
        return events

    @property
    def over(self) -> bool:
        return bool(self.views) and all(view.over for view in self.views.values())

    @property
    def unobserved(self) -> bool:
        return all(view.over or not view.observers for view in self.views.values())

    def finish(self, at: datetime) -> list[CallEvent]:
        """The closing events: ring_stopped for whoever still rings, then `ended` with the Call record."""
        ended_at = max(t for t in (at, self.started_at, self.answered_at, self.last_at) if t is not None)
        events: list[CallEvent] = []
        reason = RingStopReason.ANSWERED_ELSEWHERE if self.connected else RingStopReason.CALLER_GONE
        events.extend(RingStopped(call_id=self.call_id, at=ended_at, agent=a, reason=reason)
                      for a in sorted(self.ringing))
        self.ringing = set()
        disposition, failure = self._disposition()
        record = CallRecord(
            call_id=self.call_id,
            pbx=self.pbx,
            direction=self.direction,
            external_number=self.external_number,
            line=self.line,
            agent=self.current_agent or self.caller_agent,
            agents_rung=tuple(self.rung),
            disposition=disposition,
            started_at=self.started_at,
            answered_at=self.answered_at,
            ended_at=ended_at,
            talk_seconds=int((ended_at - self.answered_at).total_seconds()) if self.answered_at else 0,
            hangup_cause=None,
            transfers=tuple(self.transfers),
            recordings=(),
            crm_call_id=self.crm_call_id,
            failure_reason=failure,
        )
        events.append(CallEnded(call_id=self.call_id, at=ended_at, call=record))
        return events

    def _far_causes(self) -> Iterable[str]:
        for view in self.views.values():
            for leg in view.legs.values():
                if self._far(leg) and leg.cause:
                    yield leg.cause.upper()

    def _disposition(self) -> tuple[Disposition, str | None]:
        if self.answered_at is not None:
            return Disposition.ANSWERED, self.failure_reason
        if self.direction is Direction.INBOUND:
            return Disposition.MISSED, self.failure_reason
        causes = list(self._far_causes())
        failed_view = any(view.state == "FAILED" for view in self.views.values())
        legs = [leg for view in self.views.values() for leg in view.legs.values()]
        failed_leg = any(self._far(leg) and leg.state == "FAILED" for leg in legs)
        if any(c in _BUSY for c in causes):
            return Disposition.BUSY, self.failure_reason or "BUSY"
        if any(c in _REJECTED for c in causes):
            return Disposition.DECLINED, self.failure_reason or next(c for c in causes if c in _REJECTED)
        if failed_view or failed_leg or any(c in _FAILED_CAUSES for c in causes) or self.failure_reason:
            return Disposition.FAILED, self.failure_reason or (causes[0] if causes else "FAILED")
        return Disposition.NO_ANSWER, None
