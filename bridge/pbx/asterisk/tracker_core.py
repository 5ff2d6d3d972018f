"""The tracker's base: legs from AMI channel blocks, a call's first leg, channel states, a leg's end.

Shared by the handler groups (`tracker_calls.py`, `tracker_features.py`) that `CallTracker` combines.
"""

from __future__ import annotations

from bridge.model import Direction
from bridge.pbx.asterisk.classify import ChannelKind, Classifier, is_number, known_value
from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.pbx.asterisk.tracker_book import CallBook
from bridge.pbx.asterisk.tracker_originate import Originates
from bridge.pbx.asterisk.tracker_record import ring_stop_for_cause
from bridge.pbx.asterisk.tracker_state import Call, Leg

__all__ = ["TrackerCore", "to_int"]


class TrackerCore:
    def __init__(self, classifier: Classifier, *, pbx: str) -> None:
        self._classifier = classifier
        self._crm_variable = classifier.settings.crm_call_id_variable.lstrip("_")
        self._did_variable = classifier.settings.did_variable.lstrip("_")
        self._book = CallBook(classifier, pbx=pbx)
        self._originates = Originates(self._book)

    def _leg(self, msg: AmiMessage, at: float, prefix: str = "", *, adopt: bool = False) -> Leg | None:
        """The leg a channel block names; follows Linkedid changes. `adopt`: a channel of a known call that was
        never announced by Newchannel is taken in."""
        uid = msg.get(prefix + "Uniqueid")
        if not uid:
            return None
        leg = self._book.legs.get(uid)
        linkedid = msg.get(prefix + "Linkedid")
        if leg is None:
            if adopt and linkedid:
                call = self._book.by_linkedid.get(linkedid)
                if call is not None and not call.closed:
                    return self._create_leg(call, msg, prefix, uid=uid, linkedid=linkedid, at=at)
            return None
        if linkedid and linkedid != leg.linkedid:
            self._book.relink(leg, linkedid, at)
        return leg

    def _create_leg(self, call: Call, msg: AmiMessage, prefix: str, *, uid: str, linkedid: str,
                    at: float) -> Leg | None:
        name = msg.get(prefix + "Channel")
        if not name:
            return None
        context = msg.get(prefix + "Context")
        info = self._classifier.classify(name, context)
        if info.kind is ChannelKind.HELPER:
            return None
        leg = self._book.add_leg(call, uid, info, linkedid)
        leg.context = context
        leg.exten = known_value(msg.get(prefix + "Exten"))
        leg.caller_num = known_value(msg.get(prefix + "CallerIDNum"))
        if info.kind is ChannelKind.TRUNK and call.external_uid is None and call.direction is not Direction.INBOUND:
            call.external_uid = uid
        return leg

    def _on_newchannel(self, msg: AmiMessage, at: float, *, adopted: bool = False) -> None:
        uid = msg.get("Uniqueid")
        if not uid or uid in self._book.legs:
            return
        linkedid = msg.get("Linkedid") or uid
        call = self._book.by_linkedid.get(linkedid)
        if call is None:
            name = msg.get("Channel") or ""
            if linkedid in self._book.ended or self._classifier.classify(name).kind is ChannelKind.HELPER:
                return
            call = self._book.new_call(linkedid, at)
        leg = self._create_leg(call, msg, "", uid=uid, linkedid=linkedid, at=at)
        if leg is None:
            if not call.legs:
                self._book.calls.pop(call.call_id, None)
                self._book.by_linkedid.pop(linkedid, None)
            return
        state = to_int(msg.get("ChannelState"))
        if call.first is None:
            self._first_leg(call, leg, state, adopted=adopted)
        self._apply_state(leg, state, at)

    def _first_leg(self, call: Call, leg: Leg, state: int | None, *, adopted: bool) -> None:
        """The first channel decides: a call coming in on a trunk is inbound at once; from an agent (or a trunk
        channel Asterisk creates itself, state Down: an Originate to the customer first) wait for what it dials."""
        call.first = leg
        if leg.kind is ChannelKind.TRUNK and state == 0 and not adopted:
            call.external_uid = leg.uid
        elif leg.kind is ChannelKind.TRUNK:
            call.direction = Direction.INBOUND
            call.external_uid = leg.uid
            call.external_number = leg.caller_num
            trunk_context = self._classifier.is_trunk_context(leg.context)
            call.line = leg.exten if is_number(leg.exten) and (trunk_context or not adopted) else None
            call.awaiting_line = call.line is None and not adopted
        else:
            call.originator = leg.agent
        self._book.maybe_start(call)

    def _apply_state(self, leg: Leg, state: int | None, at: float) -> None:
        if state is None:
            return
        leg.state = state
        agent = leg.agent
        if agent is None:
            return
        call = leg.call
        if state == 5:
            self._book.ring(call, agent, leg.uid, at)
        elif state == 6:
            ring = call.ringing.get(agent)
            if ring is not None and leg.uid in ring.legs:
                self._book.picked_up(call, agent, at)

    def _end_leg(self, leg: Leg, at: float, cause: int | None, cause_txt: str | None) -> None:
        leg.gone = True
        leg.cause = cause
        leg.cause_txt = cause_txt
        call = leg.call
        if leg.agent is not None and leg.agent in call.ringing:
            reason = ring_stop_for_cause(cause) or self._book.cancel_reason(call, leg.agent)
            self._book.leg_stopped_ringing(leg, reason, at)
        self._book.bridges.put(leg, None)
        if not call.alive_legs():
            self._book.finish(call, at)
        else:
            self._book.evaluate(call, at)


def to_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
