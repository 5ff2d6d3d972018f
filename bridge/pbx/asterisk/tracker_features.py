"""AMI handlers for queues, transfers and dialplan variables (DID, CRM CALL_ID, recordings)."""

from __future__ import annotations

from bridge.model import Direction, Transfer, TransferKind
from bridge.model import RingStopReason as Stop
from bridge.pbx.asterisk.classify import ChannelKind, is_number, known_value
from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.pbx.asterisk.tracker_core import TrackerCore
from bridge.pbx.asterisk.tracker_state import Call, Leg, PendingTransfer

__all__ = ["READ_VARIABLES", "FeatureHandlers"]

# Dialplan variables `_variable` reads besides the configured CRM CALL_ID and DID variables.
READ_VARIABLES = ("MIXMONITOR_FILENAME", "DIALSTATUS", "OUTNUM")


class FeatureHandlers(TrackerCore):
    # ---- queues

    def _queue_parties(self, msg: AmiMessage, at: float) -> tuple[Call | None, Leg | None, str | None]:
        member = self._leg(msg, at, "Dest", adopt=True)
        caller = self._leg(msg, at)
        call = member.call if member is not None else (caller.call if caller is not None else None)
        agent = self._classifier.agent_from_interface(msg.get("Interface"))
        if agent is None and member is not None:
            agent = member.agent
        return call, member, agent

    def _on_agent_called(self, msg: AmiMessage, at: float) -> None:
        call, member, agent = self._queue_parties(msg, at)
        if call is not None and agent is not None:
            self._book.ring(call, agent, member.uid if member is not None else f"queue:{agent}", at)

    def _on_agent_ring_no_answer(self, msg: AmiMessage, at: float) -> None:
        call, _, agent = self._queue_parties(msg, at)
        if call is not None and agent is not None:
            self._book.agent_stopped_ringing(call, agent, Stop.NO_ANSWER, at)

    def _on_agent_dump(self, msg: AmiMessage, at: float) -> None:
        call, _, agent = self._queue_parties(msg, at)
        if call is not None and agent is not None:
            self._book.agent_stopped_ringing(call, agent, Stop.REJECTED, at)

    def _on_agent_connect(self, msg: AmiMessage, at: float) -> None:
        """The queue connected a member: that is the answer even before the bridge events arrive."""
        call, member, agent = self._queue_parties(msg, at)
        if call is None:
            return
        if member is not None:
            near = [member.agent] if member.kind is ChannelKind.DEVICE else self._book.bridges.agents_near(member)
            if near and near[0] is not None:
                agent = near[0]
        self._book.evaluate(call, at, hint=agent)

    # ---- transfers

    def _on_blind_transfer(self, msg: AmiMessage, at: float) -> None:
        if msg.get("Result") != "Success":
            return
        transferer = self._leg(msg, at, "Transferer")
        transferee = self._leg(msg, at, "Transferee")
        party = transferer or transferee
        if party is None:
            return
        call = party.call
        source = (transferer.agent if transferer is not None else None) or call.agent
        call.pending_transfer = PendingTransfer(source, TransferKind.BLIND, at)

    def _on_attended_transfer(self, msg: AmiMessage, at: float) -> None:
        if msg.get("Result") != "Success":
            return
        original = self._leg(msg, at, "OrigTransferer")
        target = self._leg(msg, at, "TransferTarget")
        transferee = self._leg(msg, at, "Transferee")
        party = transferee or original
        if party is None:
            return
        call = party.call
        source = (original.agent if original is not None else None) or call.agent
        to_agent = target.agent if target is not None else None
        last = call.transfers[-1] if call.transfers else None
        if last is not None and to_agent is not None and last.to_agent == to_agent and call.agent == to_agent:
            # The bridges moved before this event arrived: the transfer is already applied, fix its kind.
            call.transfers[-1] = Transfer(last.from_agent, last.to_agent, TransferKind.ATTENDED)
            return
        call.pending_transfer = PendingTransfer(source, TransferKind.ATTENDED, at)

    # ---- dialplan

    def _on_varset(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is not None:
            self._variable(leg, msg.get("Variable") or "", msg.get("Value") or "", at)

    def _on_chan_variables(self, msg: AmiMessage, at: float) -> None:
        leg = self._book.legs.get(msg.get("Uniqueid") or "")
        if leg is not None:
            for name, value in msg.variables().items():
                self._variable(leg, name, value, at)

    def _variable(self, leg: Leg, name: str, value: str, at: float) -> None:
        name = name.lstrip("_")
        call = leg.call
        if name == "MIXMONITOR_FILENAME":
            if value.strip():
                leg.mixmon_candidate = None
                self._book.add_recording(call, value, at)
        elif name == self._crm_variable:
            value = value.strip()
            if value and call.crm_call_id is None:
                call.crm_call_id = value
                self._originates.link_by_crm_id(call, value)
        elif name == self._did_variable:
            did = known_value(value)
            if is_number(did) and call.direction is Direction.INBOUND and call.line is None:
                call.line = did
                call.awaiting_line = False
                self._book.maybe_start(call)
        elif name == "DIALSTATUS":
            if value.strip():
                call.dialstatus = value.strip().upper()
        elif name == "OUTNUM" and is_number(value.strip()):
            call.outnum = value.strip()

    def _on_newexten(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is None:
            return
        call = leg.call
        if msg.get("Application") == "MixMonitor":
            path = (msg.get("AppData") or "").split(",", 1)[0].strip()
            leg.mixmon_candidate = path or None
        elif call.direction is Direction.INBOUND and call.line is None and leg.uid == call.external_uid:
            context = msg.get("Context") or ""
            exten = known_value(msg.get("Extension"))
            if is_number(exten) and (context.startswith("ext-did") or self._classifier.is_trunk_context(context)):
                call.line = exten
                call.awaiting_line = False
                self._book.maybe_start(call)

    def _on_mixmonitor_start(self, msg: AmiMessage, at: float) -> None:
        leg = self._leg(msg, at)
        if leg is not None and leg.mixmon_candidate:
            self._book.add_recording(leg.call, leg.mixmon_candidate, at)
            leg.mixmon_candidate = None
