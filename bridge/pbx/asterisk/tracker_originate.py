"""Click-to-call Originates the adapter sent: tie them to the call their channels make, or finish them as failed.

A noted originate is recognised by, in order of arrival: the CRM CALL_ID variable on a channel, Asterisk dialling the
agent itself (a `DialBegin` without a caller, to that agent's phone or Local), or `OriginateResponse.Uniqueid`. The
linked call is outbound from the start, with the request's number and agent. If Asterisk reports failure and no
channel ever appeared, the CRM call is finished anyway: `started` + `ended` (failed) under the ActionID as call_id.
"""

from __future__ import annotations

from bridge.model import CallEnded, CallRecord, CallStarted, Direction, Disposition, OriginateRequest
from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.pbx.asterisk.tracker_book import CallBook
from bridge.pbx.asterisk.tracker_record import to_datetime
from bridge.pbx.asterisk.tracker_state import Call, PendingOriginate

__all__ = ["Originates"]

_REASON_TEXT = {0: "no channel", 1: "hung up", 3: "no answer", 5: "busy", 8: "congestion"}
# A noted originate with no OriginateResponse this long after its own timeout is given up as failed.
_GRACE_SECONDS = 60.0


class Originates:
    def __init__(self, book: CallBook) -> None:
        self._book = book
        self._pending: dict[str, PendingOriginate] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def note(self, action_id: str, request: OriginateRequest, at: float) -> None:
        self._pending[action_id] = PendingOriginate(action_id=action_id, request=request, at=at)

    def link(self, pending: PendingOriginate, call: Call) -> None:
        if pending.call is not None or call.originate is not None or call.closed:
            return
        if call.started and call.direction is not Direction.OUTBOUND:
            return
        request = pending.request
        pending.call = call
        call.originate = pending
        call.direction = Direction.OUTBOUND
        call.originator = request.extension
        if not call.started:
            call.external_number = request.number
        call.crm_call_id = call.crm_call_id or request.crm_call_id
        self._book.maybe_start(call)

    def link_by_agent(self, call: Call, agent: str) -> None:
        """Asterisk dialled `agent` for an originate: the oldest unlinked click-to-call for that agent is this call."""
        for pending in self._pending.values():
            wanted = pending.request.crm_call_id
            if pending.call is None and pending.request.extension == agent and (
                    wanted is None or call.crm_call_id in (None, wanted)):
                self.link(pending, call)
                return

    def link_by_crm_id(self, call: Call, crm_call_id: str) -> None:
        for pending in self._pending.values():
            if pending.call is None and pending.request.crm_call_id == crm_call_id:
                self.link(pending, call)
                return

    def on_response(self, msg: AmiMessage, at: float) -> None:
        """`OriginateResponse`: link by Uniqueid; on failure remember the reason, or finish a channel-less call."""
        pending = self._pending.pop(msg.action_id or "", None)
        leg = self._book.legs.get(msg.get("Uniqueid") or "")
        call = leg.call if leg is not None else None
        if call is not None:
            exten = (msg.get("Exten") or "").strip()
            if exten and exten != "s" and call.originate_exten is None:
                call.originate_exten = exten
            if pending is not None:
                self.link(pending, call)
        if msg.response == "Success":
            return
        reason = _to_int(msg.get("Reason"))
        code = reason if reason is not None else 0
        if call is not None:
            call.originate_reason = code
        elif pending is not None and pending.call is None:
            self.failed(pending, at, f"originate failed: {_REASON_TEXT.get(code, 'failure')} (reason {code})")
        elif pending is not None and pending.call is not None and not pending.call.closed:
            pending.call.originate_reason = code

    def on_error_response(self, msg: AmiMessage, at: float) -> None:
        """`Response: Error` to a noted Originate action: Asterisk refused it outright."""
        pending = self._pending.pop(msg.action_id or "", None)
        if pending is not None and pending.call is None:
            self.failed(pending, at, f"originate rejected: {msg.get('Message') or 'error'}")

    def failed(self, pending: PendingOriginate, at: float, why: str) -> None:
        request = pending.request
        call_id = pending.action_id
        start = to_datetime(min(pending.at, at))
        record = CallRecord(
            call_id=call_id, pbx=self._book.pbx, direction=Direction.OUTBOUND, external_number=request.number,
            line=None, agent=request.extension, agents_rung=(), disposition=Disposition.FAILED, started_at=start,
            answered_at=None, ended_at=to_datetime(at), talk_seconds=0, crm_call_id=request.crm_call_id,
            failure_reason=why,
        )
        self._book.out.append(CallStarted(call_id=call_id, at=start, direction=Direction.OUTBOUND,
                                          external_number=request.number, line=None, agent=request.extension,
                                          crm_call_id=request.crm_call_id))
        self._book.out.append(CallEnded(call_id=call_id, at=to_datetime(at), call=record))

    def expire(self, at: float) -> None:
        """Drop originates whose response never came (lost during an outage); unlinked ones end as failed."""
        for action_id, pending in list(self._pending.items()):
            if at - pending.at > pending.request.timeout_seconds + _GRACE_SECONDS:
                del self._pending[action_id]
                if pending.call is None:
                    self.failed(pending, at, "originate failed: no response from Asterisk")

    def restart(self, at: float) -> None:
        for pending in self._pending.values():
            if pending.call is None:
                self.failed(pending, at, "originate failed: Asterisk restarted")
        self._pending.clear()


def _to_int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None
