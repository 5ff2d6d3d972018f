"""The tracker's book of open calls: legs grouped into calls, ringing agents, and the events they produce.

`CallBook` holds every transition that more than one AMI handler needs: creating and merging calls (Asterisk
re-stamps a channel's Linkedid when it joins a basic bridge; the two groups then become one call, a quick-find
union: every linkedid maps straight to its call), announcing a call once its direction is known (events before that
wait in `Call.pending`), ringing bookkeeping, noticing who talks to the customer (answered, transferred; the walk
through bridges and Local pairs is `tracker_bridges.Bridges`), and finishing a call. Pure: events go to `out`, which
the tracker hands back from `feed`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallStarted,
    CallTransferred,
    Direction,
    RecordingStarted,
    RingStopped,
    RingStopReason,
    Transfer,
    TransferKind,
)
from bridge.pbx.asterisk.classify import ChannelInfo, ChannelKind, Classifier, is_number
from bridge.pbx.asterisk.tracker_bridges import Bridges
from bridge.pbx.asterisk.tracker_record import build_record, to_datetime
from bridge.pbx.asterisk.tracker_state import Call, Leg, Ring

__all__ = ["CallBook"]

# Linkedids of finished calls remembered so a straggling channel of a finished call does not open a new one.
_ENDED_MEMORY = 4096


class CallBook:
    def __init__(self, classifier: Classifier, *, pbx: str) -> None:
        self.classifier = classifier
        self.pbx = pbx
        self.out: list[CallEvent] = []
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, Leg] = {}
        self.by_linkedid: dict[str, Call] = {}
        self.bridges = Bridges(self.legs)
        self.local_pairs: dict[str, dict[int, str]] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()

    def reset(self) -> None:
        """Forget everything (after a restart every call was closed)."""
        self.calls.clear()
        self.legs.clear()
        self.by_linkedid.clear()
        self.bridges.clear()
        self.local_pairs.clear()
        self.ended.clear()

    # ---- calls and legs ---------------------------------------------------------------------------------------

    def new_call(self, linkedid: str, at: float) -> Call:
        call = Call(call_id=linkedid, started_at=at, linkedids={linkedid})
        self.calls[linkedid] = call
        self.by_linkedid[linkedid] = call
        return call

    def add_leg(self, call: Call, uid: str, info: ChannelInfo, linkedid: str) -> Leg:
        leg = Leg(uid=uid, info=info, call=call, linkedid=linkedid)
        call.legs[uid] = leg
        self.legs[uid] = leg
        if linkedid not in call.linkedids:
            call.linkedids.add(linkedid)
            self.by_linkedid.setdefault(linkedid, call)
        if info.local_base is not None and info.local_half is not None:
            pair = self.local_pairs.setdefault(info.local_base, {})
            pair[info.local_half] = uid
            other = self.legs.get(pair.get(3 - info.local_half, ""))
            if other is not None:
                self.pair(leg, other)
        return leg

    def pair(self, one: Leg, two: Leg) -> None:
        one.peer = two.uid
        two.peer = one.uid

    def relink(self, leg: Leg, linkedid: str, at: float) -> None:
        """A channel reported a new Linkedid: that linkedid's call and this leg's call are one call now."""
        leg.linkedid = linkedid
        other = self.by_linkedid.get(linkedid)
        if other is None:
            leg.call.linkedids.add(linkedid)
            self.by_linkedid[linkedid] = leg.call
        elif other is not leg.call:
            self.merge(other, leg.call, at)

    def merge(self, a: Call, b: Call, at: float) -> Call:
        """Join two calls; the older survives. An absorbed call that was announced ends here (its legs move on)."""
        if a is b or a.closed or b.closed:
            return a if not a.closed else b
        survivor, absorbed = (a, b) if (a.started_at, a.call_id) <= (b.started_at, b.call_id) else (b, a)
        ringing, absorbed.ringing = absorbed.ringing, {}
        pending_transfer, absorbed.pending_transfer = absorbed.pending_transfer, None
        if absorbed.started:
            for agent in ringing:
                self.emit(absorbed, RingStopped(call_id=absorbed.call_id, at=to_datetime(at), agent=agent,
                                                reason=RingStopReason.CALLER_GONE))
            self.close(absorbed, at)
        else:
            absorbed.closed = True
            self.calls.pop(absorbed.call_id, None)
            for event in absorbed.pending:
                self.emit(survivor, dataclasses.replace(event, call_id=survivor.call_id))
            absorbed.pending.clear()
            for agent in absorbed.agents_rung:
                if agent not in survivor.agents_rung:
                    survivor.agents_rung.append(agent)
            for path in absorbed.recordings:
                if path not in survivor.recordings:
                    survivor.recordings.append(path)
        for leg in absorbed.legs.values():
            leg.call = survivor
            survivor.legs[leg.uid] = leg
        absorbed.legs = {}
        for linkedid in absorbed.linkedids:
            self.by_linkedid[linkedid] = survivor
            survivor.linkedids.add(linkedid)
        survivor.consulted |= absorbed.consulted
        survivor.crm_call_id = survivor.crm_call_id or absorbed.crm_call_id
        survivor.pending_transfer = survivor.pending_transfer or pending_transfer
        survivor.external_uid = survivor.external_uid or absorbed.external_uid
        if survivor.originate is None and absorbed.originate is not None:
            survivor.originate = absorbed.originate
            survivor.originate.call = survivor
        for agent, ring in ringing.items():
            if absorbed.started:
                self.ring(survivor, agent, ring.legs, at)  # announced again, in the call it now belongs to
            elif agent in survivor.ringing:
                survivor.ringing[agent].legs |= ring.legs
            else:
                survivor.ringing[agent] = ring  # its `ringing` event was among the pending ones moved above
        if survivor.direction is None and absorbed.direction is not None:
            survivor.direction = absorbed.direction
            self.maybe_start(survivor)
        return survivor

    # ---- output -----------------------------------------------------------------------------------------------

    def emit(self, call: Call, event: CallEvent) -> None:
        """Send an event, or keep it until the call is announced (direction still unknown)."""
        if not call.started and call.direction is not None:
            self.start(call)
        if call.started:
            self.out.append(event)
        else:
            call.pending.append(event)

    def maybe_start(self, call: Call) -> None:
        if not call.started and not call.closed and call.direction is not None and not call.awaiting_line:
            self.start(call)

    def start(self, call: Call) -> None:
        direction = call.direction or Direction.INTERNAL
        call.direction = direction
        call.started = True
        call.awaiting_line = False
        internal = direction is Direction.INTERNAL
        self.out.append(CallStarted(
            call_id=call.call_id, at=to_datetime(call.started_at), direction=direction,
            external_number=None if internal else call.external_number, line=None if internal else call.line,
            agent=None if direction is Direction.INBOUND else call.originator, crm_call_id=call.crm_call_id,
        ))
        self.out.extend(call.pending)
        call.pending.clear()

    def resolve_direction(self, call: Call) -> None:
        """At the end of a call that never showed its direction: an agent's call to a customer's number that never
        reached a trunk is outbound (failed); anything else without a trunk is internal."""
        if call.direction is not None:
            return
        first = call.first
        if call.originate is not None or (first is not None and first.kind is ChannelKind.TRUNK):
            call.direction = Direction.OUTBOUND
            if first is not None and first.kind is ChannelKind.TRUNK:
                call.external_number = call.external_number or first.caller_num or first.exten
            return
        for number in (call.originate_exten, call.outnum, call.first.exten if call.first is not None else None):
            if self.classifier.looks_external(number):
                call.direction = Direction.OUTBOUND
                call.external_number = call.external_number or number
                return
        call.direction = Direction.INTERNAL

    def finish(self, call: Call, at: float) -> None:
        """The last leg is gone (or Asterisk is): emit `ended` and forget the call."""
        if call.closed:
            return
        self.close(call, at)
        self.forget(call)

    def close(self, call: Call, at: float) -> None:
        if call.closed:
            return
        if not call.started:
            self.resolve_direction(call)
            call.awaiting_line = False
            self.start(call)
        when = to_datetime(at)
        for agent, ring in list(call.ringing.items()):
            self.emit(call, RingStopped(call_id=call.call_id, at=when, agent=agent,
                                        reason=ring.reason or RingStopReason.CALLER_GONE))
        call.ringing.clear()
        if call.pending_transfer is not None:
            pt = call.pending_transfer
            call.pending_transfer = None
            call.transfers.append(Transfer(pt.from_agent, None, pt.kind))
            self.emit(call, CallTransferred(call_id=call.call_id, at=when, from_agent=pt.from_agent, to_agent=None,
                                            transfer_kind=pt.kind))
        for leg in call.legs.values():
            if leg.mixmon_candidate:
                self.add_recording(call, leg.mixmon_candidate, at)
                leg.mixmon_candidate = None
        record = build_record(call, at, pbx=self.pbx)
        self.emit(call, CallEnded(call_id=call.call_id, at=to_datetime(max(at, call.started_at)), call=record))
        call.closed = True
        self.calls.pop(call.call_id, None)

    def forget(self, call: Call) -> None:
        for uid, leg in call.legs.items():
            if self.legs.get(uid) is leg:
                del self.legs[uid]
            self.bridges.put(leg, None)
            base, half = leg.info.local_base, leg.info.local_half
            if base is not None and half is not None:
                pair = self.local_pairs.get(base)
                if pair is not None and pair.get(half) == uid:
                    del pair[half]
                    if not pair:
                        del self.local_pairs[base]
        for linkedid in call.linkedids:
            if self.by_linkedid.get(linkedid) is call:
                del self.by_linkedid[linkedid]
            self.ended[linkedid] = None
        while len(self.ended) > _ENDED_MEMORY:
            self.ended.popitem(last=False)

    # ---- ringing ----------------------------------------------------------------------------------------------

    def ring(self, call: Call, agent: str, legs: str | Iterable[str], at: float) -> None:
        keys = {legs} if isinstance(legs, str) else set(legs)
        if call.closed or (call.answered_at is not None and agent == call.agent):
            return
        ring = call.ringing.get(agent)
        if ring is not None:
            ring.legs |= keys
            return
        call.ringing[agent] = Ring(legs=keys, since=at)
        if agent not in call.agents_rung:
            call.agents_rung.append(agent)
        self.emit(call, AgentsRinging(call_id=call.call_id, at=to_datetime(at), agents=(agent,)))

    def leg_stopped_ringing(self, leg: Leg, reason: RingStopReason, at: float) -> None:
        """One ringing leg stopped; the agent stops ringing when the last of their ringing legs did."""
        agent = leg.agent
        call = leg.call
        ring = call.ringing.get(agent) if agent is not None else None
        if agent is None or ring is None or leg.uid not in ring.legs:
            return
        ring.legs.discard(leg.uid)
        ring.reason = ring.reason or reason
        if not ring.legs:
            del call.ringing[agent]
            self.emit(call, RingStopped(call_id=call.call_id, at=to_datetime(at), agent=agent, reason=ring.reason))

    def agent_stopped_ringing(self, call: Call, agent: str, reason: RingStopReason, at: float) -> None:
        if call.ringing.pop(agent, None) is not None:
            self.emit(call, RingStopped(call_id=call.call_id, at=to_datetime(at), agent=agent, reason=reason))

    def picked_up(self, call: Call, agent: str, at: float) -> None:
        call.ringing.pop(agent, None)
        call.last_pickup = (at, agent)

    def cancel_reason(self, call: Call, agent: str) -> RingStopReason:
        """Why a ringing phone was cancelled: someone else took the call, the caller left, or time ran out."""
        ring = call.ringing.get(agent)
        since = ring.since if ring is not None else float("-inf")
        pickup = call.last_pickup
        if pickup is not None and pickup[1] != agent and pickup[0] >= since:
            return RingStopReason.ANSWERED_ELSEWHERE
        caller = call.external_leg() if call.direction is not Direction.INTERNAL else call.first
        if caller is None:
            caller = call.first
        if caller is None or caller.gone or caller.hanging_up:
            return RingStopReason.CALLER_GONE
        return RingStopReason.NO_ANSWER

    # ---- who talks to the customer ---------------------------------------------------------------------------

    def evaluate(self, call: Call, at: float, *, hint: str | None = None) -> None:
        """Re-check who talks to the customer: the first agent is `answered`, a different one later `transferred`."""
        if call.closed:
            return
        talker = self.bridges.talker(call) or hint
        if talker is None:
            return
        when = to_datetime(at)
        if call.answered_at is None:
            if call.direction is None:
                call.direction = Direction.INTERNAL
            call.answered_at = at
            call.agent = talker
            self.picked_up(call, talker, at)
            self.emit(call, CallAnswered(call_id=call.call_id, at=when, agent=talker))
        elif talker != call.agent:
            previous = call.agent
            pending = call.pending_transfer
            if pending is not None:
                kind, source = pending.kind, pending.from_agent or previous
            else:
                consulted = previous is not None and frozenset((previous, talker)) in call.consulted
                kind, source = (TransferKind.ATTENDED if consulted else TransferKind.BLIND), previous
            call.pending_transfer = None
            call.transfers.append(Transfer(source, talker, kind))
            call.agent = talker
            self.picked_up(call, talker, at)
            self.emit(call, CallTransferred(call_id=call.call_id, at=when, from_agent=source, to_agent=talker,
                                            transfer_kind=kind))

    # ---- recordings and numbers -------------------------------------------------------------------------------

    def add_recording(self, call: Call, path: str, at: float) -> None:
        path = path.strip()
        if not path or path in call.recordings or call.closed:
            return
        call.recordings.append(path)
        self.emit(call, RecordingStarted(call_id=call.call_id, at=to_datetime(at), path=path))

    def dialled_number(self, call: Call, dial_string: str | None, dest_exten: str | None) -> str | None:
        """The customer's number of an outbound dial: the Dial string, the exten, FreePBX OUTNUM, what was dialled."""
        number = self.classifier.number_from_dial_string(dial_string)
        if number:
            return number
        for candidate in (dest_exten, call.outnum, call.originate_exten, call.first.exten if call.first else None):
            if is_number(candidate):
                return candidate
        return None
