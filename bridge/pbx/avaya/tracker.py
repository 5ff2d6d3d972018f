"""DMCC call events per monitored device -> normalized `CallEvent`s. Pure state machine: data in, data out.

Every monitor reports the calls its device is on, so one call arrives several times (once per monitored party);
each handler only emits when a party's state really changes, which makes repeats harmless. Calls are keyed by the
DMCC callID (plus aliases after transfers); the public `call_id` is the UCID when AES gives one, else
"<epoch seconds>.<callID>" because CM reuses callIDs.

A call ends when the customer's connection clears, when fewer than two parties remain, or (after `orphan_grace`)
when no monitored station or VDN is left on it. Times are the `at` the caller passes (event arrival); no clock reads.

Handled events (everything else is ignored on purpose), see `on_event`:
Delivered (ringing), Established (answered), Originated (outbound/internal start), Failed (busy/rejected),
ConnectionCleared (a party left), CallCleared (the call is gone), Diverted (ring moved on), Held/Retrieved,
Transferred (attended/blind transfer), Conferenced (consult merged).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import assert_never

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallTransferred,
    Direction,
    RingStopped,
    RingStopReason,
    Transfer,
    TransferKind,
)
from bridge.pbx.avaya.calls import UNKNOWN_CALLEE, Party, PartyState, TrackedCall, new_call
from bridge.pbx.avaya.messages import (
    CallClearedEvent,
    ConferencedEvent,
    ConnectionClearedEvent,
    DeliveredEvent,
    DivertedEvent,
    DmccEvent,
    EstablishedEvent,
    FailedEvent,
    HeldEvent,
    OriginatedEvent,
    RetrievedEvent,
    TransferredEvent,
    device_number,
)
from bridge.pbx.avaya.numbers import NumberPlan, Role, ring_stop_reason

RECENT_WINDOW_SECONDS = 5.0
EXPECTATION_TTL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class _Expectation:
    number: str
    crm_call_id: str | None
    at: datetime


class DmccTracker:
    """Turns one AES session's call-control events into the bridge's call model."""

    def __init__(self, plan: NumberPlan, *, pbx: str = "avaya", orphan_grace: float = 5.0) -> None:
        self._plan = plan
        self._pbx = pbx
        self._orphan_grace = orphan_grace
        self._calls: dict[str, TrackedCall] = {}
        self._recent: dict[str, datetime] = {}
        # Clears of callIDs we never saw start: a MakeCall whose whole life beat its response here.
        self._cleared_unknown: dict[str, tuple[datetime, str | None]] = {}
        self._expected: dict[str, _Expectation] = {}

    # ---- public API ----------------------------------------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        return len({id(c) for c in self._calls.values()})

    def live_keys(self) -> set[str]:
        """Every DMCC callID the tracker currently follows (for resync after a reconnect)."""
        return set(self._calls)

    def on_event(self, event: DmccEvent, *, at: datetime, monitored: str | None = None) -> list[CallEvent]:
        match event:
            case DeliveredEvent():
                return self._on_delivered(event, at, monitored)
            case EstablishedEvent():
                return self._on_established(event, at, monitored)
            case OriginatedEvent():
                return self._on_originated(event, at, monitored)
            case FailedEvent():
                return self._on_failed(event, at, monitored)
            case ConnectionClearedEvent():
                return self._on_cleared(event, at, monitored)
            case CallClearedEvent():
                call = self._calls.get(event.call_id)
                if call is None:
                    self._note_unknown_clear(event.call_id, at, event.cause)
                    return []
                return self._end(call, at, cause=event.cause)
            case DivertedEvent():
                return self._on_diverted(event, at, monitored)
            case HeldEvent() | RetrievedEvent():
                return self._on_hold(event, monitored)
            case TransferredEvent():
                return self._on_transferred(event, at)
            case ConferencedEvent():
                return self._on_conferenced(event, at)
            case _:
                assert_never(event)

    def expect_make_call(self, extension: str, number: str, crm_call_id: str | None, at: datetime) -> None:
        """Before MakeCall goes out: the next call this station originates is the click-to-call to `number`."""
        self._expected[extension] = _Expectation(number, crm_call_id, at)

    def cancel_make_call(self, extension: str) -> None:
        self._expected.pop(extension, None)

    def note_make_call(self, *, call_key: str, ucid: str | None, extension: str, number: str,
                       crm_call_id: str | None, at: datetime) -> list[CallEvent]:
        """MakeCallResponse arrived: tie its callID to the click-to-call (starting the call if no event did yet)."""
        self._expected.pop(extension, None)
        call = self._calls.get(call_key)
        if call is not None:
            if call.crm_call_id is None:
                call.crm_call_id = crm_call_id
            return []
        if call_key in self._recent:
            return []  # the whole call came and went before the response
        gone = self._cleared_unknown.pop(call_key, None)
        call = TrackedCall(call_id=ucid or f"{int(at.timestamp())}.{call_key}", direction=Direction.OUTBOUND,
                     started_at=at, external_number=number, line=None, originator=extension, agent=extension,
                     crm_call_id=crm_call_id)
        call.parties[extension] = Party(Role.AGENT, PartyState.DIALING)
        call.parties[UNKNOWN_CALLEE] = Party(Role.EXTERNAL, PartyState.DIALING)
        self._index(call, call_key)
        if gone is not None:  # it already ended: close the CRM call right away
            call.parties[extension].state = PartyState.GONE
            return [call.started(), *self._end(call, gone[0], cause=gone[1])]
        return [call.started()]

    def reconcile(self, station: str, live: set[str], at: datetime, *, only: set[str]) -> list[CallEvent]:
        """SnapshotDevice after a reconnect: calls in `only` that `station` no longer shows have lost that party."""
        out: list[CallEvent] = []
        for call in self._unique(only):
            party = call.parties.get(station)
            if party is None or not party.active or call.keys & live:
                continue
            self._leave(call, station, party, at=at, cause=None, out=out)
            self._settle(call, at, out)
        return out

    def expire(self, at: datetime) -> list[CallEvent]:
        """Periodic tick: end orphaned calls after the grace period, forget old click-to-call expectations."""
        out: list[CallEvent] = []
        for call in self._unique(set(self._calls)):
            if call.orphaned_at is None and not call.watched():
                call.orphaned_at = at  # nobody we monitor is on it: it can only end by the grace
            if call.orphaned_at and (at - call.orphaned_at).total_seconds() >= self._orphan_grace:
                out += self._end(call, at)
        self._recent = {k: t for k, t in self._recent.items() if (at - t).total_seconds() < RECENT_WINDOW_SECONDS}
        self._expected = {k: e for k, e in self._expected.items()
                          if (at - e.at).total_seconds() < EXPECTATION_TTL_SECONDS}
        self._cleared_unknown = {k: v for k, v in self._cleared_unknown.items()
                                 if (at - v[0]).total_seconds() < EXPECTATION_TTL_SECONDS}
        return out

    # ---- handlers ------------------------------------------------------------------------------------------------

    def _on_delivered(self, ev: DeliveredEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        out: list[CallEvent] = []
        call = self._call_for(ev.call_id, at, out, calling_id=ev.calling, called_id=ev.called, ucid=ev.ucid,
                              vdn_id=ev.vdn)
        target = device_number(ev.alerting) or device_number(ev.connection_device) or monitored
        if call is None or target is None:
            return out
        role = self._plan.role(target)
        party = call.parties.get(target)
        if target == call.originator:
            return out  # the dialling agent's own phone (click-to-call in "prompt" mode)
        if party is None or not party.active or party.state is PartyState.DIALING:
            call.add(target, role, PartyState.QUEUED if role is Role.VDN else PartyState.ALERTING)
            if role is Role.AGENT:
                if target not in call.rung:
                    call.rung.append(target)
                out.append(AgentsRinging(call_id=call.call_id, at=at, agents=(target,)))
        if call.watched():
            call.orphaned_at = None
        return out

    def _on_established(self, ev: EstablishedEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        out: list[CallEvent] = []
        call = self._call_for(ev.call_id, at, out, calling_id=ev.calling, called_id=ev.called, ucid=ev.ucid)
        who = device_number(ev.answering) or device_number(ev.connection_device) or monitored
        if call is None or who is None:
            return out
        role = self._plan.role(who)
        call.add(who, role, PartyState.CONNECTED)
        if who == call.originator:
            return out  # the dialling agent's own leg went off-hook
        if call.answered_at is None and (role is not Role.VDN):
            answered_by = call.originator if role is Role.EXTERNAL else who
            if answered_by is None:
                return out
            call.answered_at = at
            call.agent = answered_by
            out.append(CallAnswered(call_id=call.call_id, at=at, agent=answered_by))
            for number, party in call.parties.items():
                if party.role is Role.AGENT and party.state is PartyState.ALERTING and number != who:
                    party.state = PartyState.GONE
                    out.append(RingStopped(call_id=call.call_id, at=at, agent=number,
                                           reason=RingStopReason.ANSWERED_ELSEWHERE))
        elif role is Role.AGENT:
            call.agent = who
        if call.watched():
            call.orphaned_at = None
        return out

    def _on_originated(self, ev: OriginatedEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        out: list[CallEvent] = []
        calling = ev.calling or ev.connection_device or monitored
        call = self._call_for(ev.call_id, at, out, calling_id=calling, called_id=ev.called, ucid=ev.ucid,
                              originated=True)
        if call is not None and call.originator and call.originator in call.parties:
            party = call.parties[call.originator]
            if party.state is PartyState.DIALING:
                party.state = PartyState.CONNECTED
        return out

    def _on_failed(self, ev: FailedEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        call = self._calls.get(ev.call_id)
        if call is None:
            return []
        out: list[CallEvent] = []
        who = device_number(ev.failing) or device_number(ev.connection_device) or device_number(ev.called)
        call.fail_cause = ev.cause or "unknown"
        call.last_cause = ev.cause or call.last_cause
        party = call.parties.get(who) if who else None
        if who and party and party.active:
            if party.role is Role.AGENT and party.state is PartyState.ALERTING:
                out.append(RingStopped(call_id=call.call_id, at=at, agent=who, reason=ring_stop_reason(ev.cause)))
            party.state = PartyState.GONE
        return out

    def _on_cleared(self, ev: ConnectionClearedEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        call = self._calls.get(ev.call_id)
        if call is None:
            self._note_unknown_clear(ev.call_id, at, ev.cause)
            return []
        call.last_cause = ev.cause or call.last_cause
        who = device_number(ev.releasing) or device_number(ev.connection_device) or monitored
        if who is None:
            return []
        party = call.parties.get(who)
        role = party.role if party else self._plan.role(who)
        if role is Role.EXTERNAL and (party is None or party.active):
            return self._end(call, at, cause=ev.cause, caller_gone=True)
        if party is None or not party.active:
            return []
        out: list[CallEvent] = []
        self._leave(call, who, party, at=at, cause=ev.cause, out=out)
        self._settle(call, at, out)
        return out

    def _on_diverted(self, ev: DivertedEvent, at: datetime, monitored: str | None) -> list[CallEvent]:
        call = self._calls.get(ev.call_id)
        if call is None:
            return []
        out: list[CallEvent] = []
        who = device_number(ev.diverting) or device_number(ev.connection_device) or monitored
        party = call.parties.get(who) if who else None
        if who and party and party.active:
            self._leave(call, who, party, at=at, cause=ev.cause, out=out)
        dest = device_number(ev.new_destination)
        if dest is not None and self._plan.role(dest) not in (Role.AGENT, Role.VDN):
            call.add(dest, self._plan.role(dest), PartyState.ALERTING)
            if not call.watched():
                out += self._end(call, at, cause=ev.cause)
                return out
        if not call.watched() and call.orphaned_at is None:
            call.orphaned_at = at
        return out

    def _on_hold(self, ev: HeldEvent | RetrievedEvent, monitored: str | None) -> list[CallEvent]:
        call = self._calls.get(ev.call_id)
        who = device_number(ev.connection_device) or device_number(ev.device) or monitored
        if call is None or who is None:
            return []
        party = call.parties.get(who)
        if party is not None and party.active:
            party.state = PartyState.HELD if isinstance(ev, HeldEvent) else PartyState.CONNECTED
        return []

    def _on_transferred(self, ev: TransferredEvent, at: datetime) -> list[CallEvent]:
        merged = self._merge(ev.primary_old_call, ev.secondary_old_call, ev.new_call_ids)
        if merged is None:
            return []
        call, consult = merged
        frm = device_number(ev.transferring)
        to = device_number(ev.transferred_to)
        out: list[CallEvent] = []
        last = call.transfers[-1] if call.transfers else None
        if last is not None and (last.from_agent, last.to_agent) == (frm, to):
            return self._quiet_end(consult, at)  # the same transfer, reported by another monitor
        to_party = (consult.parties.get(to) if consult and to else None) or (call.parties.get(to) if to else None)
        kind = TransferKind.ATTENDED if to_party and to_party.state is PartyState.CONNECTED else TransferKind.BLIND
        if frm and frm in call.parties:
            call.parties[frm].state = PartyState.GONE
        if to:
            role = self._plan.role(to)
            call.add(to, role, PartyState.CONNECTED if kind is TransferKind.ATTENDED else PartyState.ALERTING)
            if role is Role.AGENT:
                call.agent = to
                if to not in call.rung:
                    call.rung.append(to)
                if kind is TransferKind.BLIND:
                    out.append(AgentsRinging(call_id=call.call_id, at=at, agents=(to,)))
        call.transfers.append(Transfer(frm, to, kind))
        out.insert(0, CallTransferred(call_id=call.call_id, at=at, from_agent=frm, to_agent=to, transfer_kind=kind))
        out += self._quiet_end(consult, at)
        self._settle(call, at, out)
        return out

    def _on_conferenced(self, ev: ConferencedEvent, at: datetime) -> list[CallEvent]:
        merged = self._merge(ev.primary_old_call, ev.secondary_old_call, ev.new_call_ids)
        if merged is None:
            return []
        call, consult = merged
        added = device_number(ev.added_party)
        if added and not (added in call.parties and call.parties[added].active):
            call.add(added, self._plan.role(added), PartyState.CONNECTED)
        if consult is not None:
            for number, party in consult.parties.items():
                if party.active and number not in call.parties:
                    call.parties[number] = party
        return self._quiet_end(consult, at)

    # ---- call bookkeeping ----------------------------------------------------------------------------------------

    def _call_for(self, key: str, at: datetime, out: list[CallEvent], *, calling_id: str | None,
                  called_id: str | None, ucid: str | None, vdn_id: str | None = None,
                  originated: bool = False) -> TrackedCall | None:
        """The call this callID belongs to, started now if unknown (unless it ended a moment ago)."""
        call = self._calls.get(key)
        if call is not None:
            return call
        if key in self._recent and not originated:
            return None
        call = new_call(self._plan, key, at, calling=device_number(calling_id), called=device_number(called_id),
                        ucid=ucid, vdn=device_number(vdn_id), originated=originated)
        if call.originator and (expectation := self._expected.pop(call.originator, None)):
            call.crm_call_id = expectation.crm_call_id
            call.external_number = expectation.number
        self._index(call, key)
        out.append(call.started())
        return call

    def _note_unknown_clear(self, key: str, at: datetime, cause: str | None) -> None:
        if key not in self._recent and self._expected:
            self._cleared_unknown[key] = (at, cause)

    def _index(self, call: TrackedCall, key: str) -> None:
        call.keys.add(key)
        self._calls[key] = call

    def _unique(self, keys: set[str]) -> list[TrackedCall]:
        seen: dict[int, TrackedCall] = {}
        for key in sorted(keys):
            call = self._calls.get(key)
            if call is not None:
                seen.setdefault(id(call), call)
        return list(seen.values())

    def _merge(self, primary: str | None, secondary: str | None,
               new_ids: tuple[str, ...]) -> tuple[TrackedCall, TrackedCall | None] | None:
        """The customer call (the one with an external party) absorbs the other; aliases point at it."""
        found = self._unique({k for k in (primary, secondary, *new_ids) if k})
        if not found:
            return None
        call = next((c for c in found if c.has_external()), found[0])
        consult = next((c for c in found if c is not call), None)
        for key in (primary, secondary, *new_ids):
            if key:
                self._index(call, key)
        if consult is not None:
            consult.keys -= call.keys
        return call, consult

    def _leave(self, call: TrackedCall, who: str, party: Party, *, at: datetime, cause: str | None,
               out: list[CallEvent]) -> None:
        if party.role is Role.AGENT and party.state is PartyState.ALERTING:
            out.append(RingStopped(call_id=call.call_id, at=at, agent=who, reason=ring_stop_reason(cause)))
        party.state = PartyState.GONE

    def _settle(self, call: TrackedCall, at: datetime, out: list[CallEvent]) -> None:
        """After a party left: end the call if it is over, or start the orphan clock if nobody we watch is on it."""
        if call.active_count() < 2:
            out += self._end(call, at)
        elif not call.watched() and call.orphaned_at is None:
            call.orphaned_at = at

    def _quiet_end(self, consult: TrackedCall | None, at: datetime) -> list[CallEvent]:
        """A consultation call merged into the customer's call: close its record so nothing dangles."""
        if consult is None:
            return []
        for party in consult.parties.values():
            party.state = PartyState.GONE
        return self._end(consult, at)

    def _end(self, call: TrackedCall, at: datetime, *, cause: str | None = None,
             caller_gone: bool = False) -> list[CallEvent]:
        out: list[CallEvent] = []
        if cause:
            call.last_cause = cause
        for number, party in call.parties.items():
            if party.role is Role.AGENT and party.state is PartyState.ALERTING:
                reason = RingStopReason.CALLER_GONE if caller_gone else RingStopReason.NO_ANSWER
                out.append(RingStopped(call_id=call.call_id, at=at, agent=number, reason=reason))
            party.state = PartyState.GONE
        for key in call.keys:
            if self._calls.get(key) is call:
                del self._calls[key]
                self._recent[key] = at
        out.append(CallEnded(call_id=call.call_id, at=at, call=call.record(at, self._pbx)))
        return out
