"""AMI handlers for channels, dialling and bridges: who rings, who answers, who talks to whom, who hangs up."""

from __future__ import annotations

from bridge.model import Direction
from bridge.model import RingStopReason as Stop
from bridge.pbx.asterisk.classify import ChannelKind, known_value
from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.pbx.asterisk.tracker_core import TrackerCore, to_int
from bridge.pbx.asterisk.tracker_state import Leg

__all__ = ["CallHandlers"]

# A ringing phone's Dial ended without an answer: why (CANCEL is decided per call: answered elsewhere or caller gone).
_DIAL_STOP = {"BUSY": Stop.BUSY, "NOANSWER": Stop.NO_ANSWER, "CONGESTION": Stop.REJECTED,
              "CHANUNAVAIL": Stop.NO_ANSWER}


class CallHandlers(TrackerCore):
    def _on_newstate(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at, adopt=True)
        if leg is not None:
            self._apply_state(leg, to_int(msg.get("ChannelState")), at)

    def _on_newcallerid(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is None:
            return
        number = known_value(msg.get("CallerIDNum"))
        leg.caller_num = number or leg.caller_num
        call = leg.call
        if number and not call.started and call.direction is Direction.INBOUND and leg.uid == call.external_uid:
            call.external_number = number

    def _on_hangup_request(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is not None:
            leg.hanging_up = True

    def _on_hangup(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is not None and not leg.gone:
            self._end_leg(leg, at, to_int(msg.get("Cause")), msg.get("Cause-txt"))

    # ---- dialling

    def _on_dial_begin(self, msg: AmiMessage, at: float) -> None:
        caller = self._leg(msg, at)
        dest = self._leg(msg, at, "Dest", adopt=True)
        if dest is None:
            return
        if caller is not None and caller.call is not dest.call:
            self._book.merge(caller.call, dest.call, at)
        call = dest.call
        originate_dial = not msg.get("Channel")
        if originate_dial and dest.agent is not None:  # an Originate rings the agent first
            call.originator = call.originator or dest.agent
            self._originates.link_by_agent(call, dest.agent)
        if dest.kind is ChannelKind.TRUNK:
            if call.direction is None:
                call.direction = Direction.OUTBOUND
                call.external_number = call.external_number or self._book.dialled_number(
                    call, msg.get("DialString"), known_value(msg.get("DestExten")))
            if call.direction is Direction.OUTBOUND:
                call.external_uid = dest.uid
                call.line = call.line or dest.info.endpoint
            self._book.maybe_start(call)
        elif dest.agent is not None:
            if call.direction is None and not originate_dial and dest.agent != call.originator:
                call.direction = Direction.INTERNAL
                self._book.maybe_start(call)
            self._book.ring(call, dest.agent, dest.uid, at)

    def _on_dial_end(self, msg: AmiMessage, at: float) -> None:
        dest = self._leg(msg, at, "Dest")
        if dest is None:
            return
        status = (msg.get("DialStatus") or "").upper()
        call = dest.call
        if dest.kind is ChannelKind.TRUNK:
            if dest.uid == call.external_uid:
                call.trunk_outcome = status
            return
        agent = dest.agent
        if agent is None or not status:
            return
        (call.device_outcomes if dest.kind is ChannelKind.DEVICE else call.local_outcomes).append(status)
        ring = call.ringing.get(agent)
        if status == "ANSWER":
            if ring is not None and dest.uid in ring.legs:
                self._book.picked_up(call, agent, at)
            return
        reason = self._book.cancel_reason(call, agent) if status == "CANCEL" else _DIAL_STOP.get(status, Stop.NO_ANSWER)
        self._book.leg_stopped_ringing(dest, reason, at)

    # ---- bridges

    def _on_bridge_enter(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at, adopt=True)
        bridge = msg.get("BridgeUniqueid")
        if leg is None or not bridge:
            return
        swapped = self._book.legs.get(msg.get("SwapUniqueid") or "")
        if swapped is not None and swapped.bridge == bridge:
            self._book.bridges.put(swapped, None)
        self._book.bridges.put(leg, bridge)
        # Asterisk gives everyone in a basic bridge the oldest linkedid: the parties are one call from now on.
        if (msg.get("BridgeType") or "basic") == "basic":
            for mate in self._book.bridges.mates(leg):
                if mate.call is not leg.call:
                    self._book.merge(mate.call, leg.call, at)
        self._book.bridges.note_consult(leg.call, leg)
        self._evaluate_bridge(leg, at)

    def _on_bridge_leave(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is not None and leg.bridge == msg.get("BridgeUniqueid"):
            mates = self._book.bridges.mates(leg)
            self._book.bridges.put(leg, None)
            self._book.evaluate(leg.call, at)
            for mate in mates:
                if mate.call is not leg.call:
                    self._book.evaluate(mate.call, at)

    def _on_bridge_destroy(self, msg: AmiMessage, at: float) -> None:
        self._book.bridges.destroy(msg.get("BridgeUniqueid") or "")

    def _evaluate_bridge(self, leg: Leg, at: float) -> None:
        calls = [leg.call] + [m.call for m in self._book.bridges.mates(leg) if m.call is not leg.call]
        for call in dict.fromkeys(calls):
            self._book.evaluate(call, at)

    def _on_local_bridge(self, msg: AmiMessage, at: float) -> None:
        one = self._leg(msg, at, "LocalOne")
        two = self._leg(msg, at, "LocalTwo")
        if one is not None and two is not None and one is not two:
            self._book.pair(one, two)
