"""Asterisk call tracker: AMI events in, normalized `CallEvent`s out (docs: call-model.md, asterisk-ami.md part 1).

Pure: no clock reads (times come from the caller or the events' `Timestamp:`), no I/O. The adapter feeds every AMI
event with its arrival time and forwards what comes back; after a reconnect it calls `resync`, after an Asterisk
restart `restart`, and before it sends a click-to-call Originate `note_originate`.

The AMI events handled are listed in `_HANDLERS` just below; every other event (Cdr, DeviceStateChange, DialState,
QueueMember*, RTCP*, Hold, LocalOptimization*, ...) is ignored on purpose. Odd input (missing headers, unknown
channels, repeated Hangups) is skipped, never raised.

How a call is read: legs are grouped by Linkedid (groups merge when a channel's Linkedid changes or two calls meet
in a basic bridge); the first leg gives the direction (a trunk: inbound; an agent: outbound once it dials a trunk,
internal once it dials another agent; events wait until then). An agent is "answered" / "transferred to" when their
phone is connected to the customer's leg through bridges, crossing Local pairs (so queue members, ring groups and
Local optimisation swaps all resolve to the real phone); a customer answered by the dialplan alone (FreePBX vmret,
IVR) is not. Dispositions: `tracker_record.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from bridge.model import CallEvent, Direction, OriginateRequest
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.pbx.asterisk.tracker_calls import CallHandlers
from bridge.pbx.asterisk.tracker_core import to_int
from bridge.pbx.asterisk.tracker_features import READ_VARIABLES, FeatureHandlers

__all__ = ["ActiveCall", "CallTracker", "TrackerStats"]

# AMI event -> handler method. Everything else is ignored on purpose.
_HANDLERS: dict[str, str] = {
    # channels
    "Newchannel": "_on_newchannel",
    "Newstate": "_on_newstate",
    "NewCallerid": "_on_newcallerid",
    "HangupRequest": "_on_hangup_request",
    "SoftHangupRequest": "_on_hangup_request",
    "Hangup": "_on_hangup",
    # dialling and talking
    "DialBegin": "_on_dial_begin",
    "DialEnd": "_on_dial_end",
    "BridgeEnter": "_on_bridge_enter",
    "BridgeLeave": "_on_bridge_leave",
    "BridgeDestroy": "_on_bridge_destroy",
    "LocalBridge": "_on_local_bridge",
    # queues (the member is the Dest* block, the caller the plain block)
    "AgentCalled": "_on_agent_called",
    "AgentRingNoAnswer": "_on_agent_ring_no_answer",
    "AgentConnect": "_on_agent_connect",
    "AgentDump": "_on_agent_dump",
    # transfers
    "BlindTransfer": "_on_blind_transfer",
    "AttendedTransfer": "_on_attended_transfer",
    # dialplan: DID, CRM CALL_ID, recordings
    "VarSet": "_on_varset",
    "Newexten": "_on_newexten",
    "MixMonitorStart": "_on_mixmonitor_start",
    # click-to-call and Asterisk itself
    "OriginateResponse": "_on_originate_response",
    "FullyBooted": "_on_fully_booted",
    "Shutdown": "_on_shutdown",
}

_MAX_TIMESTAMP = 1e11
_EVENT = b"Event: "


@dataclass(frozen=True, slots=True)
class ActiveCall:
    """A live call for status pages and metrics."""

    call_id: str
    direction: Direction | None
    external_number: str | None
    agent: str | None
    state: str  # "setup", "ringing", "talking"
    started_at: float
    legs: int


@dataclass(slots=True)
class TrackerStats:
    messages: int = 0
    handler_errors: int = 0  # internal errors caught so one odd event cannot stop the stream (should stay 0)


class CallTracker(CallHandlers, FeatureHandlers):
    """Groups Asterisk channels into calls and reports what happens to them as `CallEvent`s."""

    def __init__(self, classifier: Classifier, *, pbx: str = "asterisk") -> None:
        super().__init__(classifier, pbx=pbx)
        self._last_at: float | None = None
        self.stats = TrackerStats()
        self._dispatch: dict[str, Callable[[AmiMessage, float], None]] = {
            event: getattr(self, method) for event, method in _HANDLERS.items()
        }

    def __len__(self) -> int:
        return len(self._book.calls)

    # ---- public API -------------------------------------------------------------------------------------------

    def feed(self, message: AmiMessage, at: float) -> list[CallEvent]:
        """One AMI message received at `at` (unix seconds); returns the events it caused, in order."""
        out: list[CallEvent] = []
        self._book.out = out
        at = _event_time(message, at)
        self.stats.messages += 1
        try:
            name = message.event
            if name is None:
                self._originates.on_error_response(message, at)
            else:
                # `channelvars` lines: read while the channel is known (before its Hangup, after its Newchannel).
                variables = "ChanVariable" in message.headers
                known = variables and message.get("Uniqueid", "") in self._book.legs
                if known:
                    self._on_chan_variables(message, at)
                handler = self._dispatch.get(name)
                if handler is not None:
                    handler(message, at)
                if variables and not known:
                    self._on_chan_variables(message, at)
            if self._originates:
                self._originates.expire(at)
        except Exception:  # last resort: one odd event must never stop the event stream
            self.stats.handler_errors += 1
        self._last_at = at
        return out

    def frame_filter(self) -> Callable[[bytes], bool]:
        """A `skip` for `AmiParser`: event frames this tracker would ignore, recognised without decoding them.

        Skipped: events it has no handler for (DeviceStateChange, Cdr, RTCP*, QueueMember*, DialState, ...) and
        VarSet frames that mention none of the variables it reads; together most of a busy PBX's traffic. Kept, to
        stay on the safe side: anything with an ActionID (list-action items such as CoreShowChannel answer the
        adapter, not the tracker) or `ChanVariable` lines, and any frame that names a wanted variable anywhere.
        """
        handled = frozenset(name.encode() for name in _HANDLERS)
        names = sorted({*READ_VARIABLES, self._crm_variable, self._did_variable} - {""})
        wanted = re.compile(b"|".join(re.escape(name.encode()) for name in names))

        def skip(raw: bytes) -> bool:
            if not raw.startswith(_EVENT):
                return False
            end = raw.find(b"\r\n")
            name = raw[len(_EVENT):end] if end >= 0 else raw[len(_EVENT):]
            if name == b"VarSet":
                return wanted.search(raw) is None
            return name not in handled and b"ActionID:" not in raw and b"ChanVariable" not in raw

        return skip

    def note_originate(self, action_id: str, request: OriginateRequest, at: float) -> None:
        """The adapter sent a click-to-call Originate with this ActionID; the call it creates is outbound."""
        self._originates.note(action_id, request, at)

    def resync(self, channels: list[AmiMessage], at: float) -> list[CallEvent]:
        """Reconcile with a `CoreShowChannels` snapshot taken after a reconnect.

        Tracked channels missing from the snapshot hung up during the outage: a call with none left is closed at
        `at` with what was known (answered if it had been, else missed / no_answer). Channels the tracker does not
        know are adopted: each unknown linkedid group becomes a call that started `Duration` ago, whose ringing and
        talking state is read from `ChannelState` and `BridgeId` (answer times are then approximate: `at`).
        """
        out: list[CallEvent] = []
        self._book.out = out
        try:
            self._resync(channels, at)
        except Exception:
            self.stats.handler_errors += 1
        self._last_at = at
        return out

    def restart(self, at: float) -> list[CallEvent]:
        """Asterisk restarted (or shut down): every call is over. Close them all at `at` and forget everything."""
        out: list[CallEvent] = []
        self._book.out = out
        for call in list(self._book.calls.values()):
            self._book.finish(call, at)
        self._originates.restart(at)
        self._book.reset()
        self._last_at = at
        return out

    def sizes(self) -> dict[str, int]:
        """How much state is held (metrics, leak checks): open calls, channels, bridges, pending originates."""
        book = self._book
        return {"calls": len(book.calls), "legs": len(book.legs), "linkedids": len(book.by_linkedid),
                "bridges": len(book.bridges), "local_pairs": len(book.local_pairs), "originates": len(self._originates)}

    def active_calls(self) -> list[ActiveCall]:
        result = []
        for call in self._book.calls.values():
            state = "talking" if call.answered_at is not None else ("ringing" if call.ringing else "setup")
            result.append(ActiveCall(call_id=call.call_id, direction=call.direction,
                                     external_number=call.external_number, agent=call.agent or call.originator,
                                     state=state, started_at=call.started_at, legs=len(call.alive_legs())))
        return result

    # ---- Asterisk itself and resync ---------------------------------------------------------------------------

    def _on_originate_response(self, msg: AmiMessage, at: float) -> None:
        self._originates.on_response(msg, at)

    def _on_fully_booted(self, msg: AmiMessage, at: float) -> None:
        """After a login: if Asterisk booted after the last event we saw, it restarted and every call is over."""
        uptime = to_int(msg.get("Uptime"))
        if uptime is not None and uptime >= 0 and self._last_at is not None and at - uptime > self._last_at:
            self._restart_within_feed(at)

    def _on_shutdown(self, msg: AmiMessage, at: float) -> None:
        self._restart_within_feed(at)

    def _restart_within_feed(self, at: float) -> None:
        out = self._book.out
        events = self.restart(at)
        self._book.out = out
        out.extend(events)

    def _resync(self, channels: list[AmiMessage], at: float) -> None:
        snapshot = {uid: m for m in channels if (uid := m.get("Uniqueid")) and m.get("Channel")}
        for call in list(self._book.calls.values()):
            for gone in list(call.legs.values()):
                if not gone.gone and gone.uid not in snapshot and not call.closed:
                    self._end_leg(gone, at, None, None)
        order = sorted(snapshot.values(), key=lambda m: (m.get("Uniqueid") != m.get("Linkedid"), -_duration(m)))
        for msg in order:
            uid = msg.get("Uniqueid") or ""
            if uid not in self._book.legs:
                self._on_newchannel(msg, at - _duration(msg), adopted=True)
            leg = self._leg(msg, at)
            if leg is None:
                continue
            state = to_int(msg.get("ChannelState"))
            if state is not None and state != leg.state:
                self._apply_state(leg, state, at)
            bridge = msg.get("BridgeId") or None
            if bridge != leg.bridge:
                self._book.bridges.put(leg, bridge)
        for call in list(self._book.calls.values()):
            self._book.evaluate(call, at)


def _duration(msg: AmiMessage) -> float:
    """`Duration: HH:MM:SS` of a CoreShowChannel item, in seconds (0 when absent or odd)."""
    parts = (msg.get("Duration") or "").split(":")
    try:
        seconds = 0
        for part in parts:
            seconds = seconds * 60 + int(part)
    except ValueError:
        return 0.0
    return float(max(0, seconds))


def _event_time(msg: AmiMessage, at: float) -> float:
    """The event's own `Timestamp:` (timestampevents=yes) when it is sane, else the arrival time."""
    raw = msg.get("Timestamp")
    if raw:
        try:
            stamp = float(raw)
        except ValueError:
            return at
        if math.isfinite(stamp) and 0 < stamp < _MAX_TIMESTAMP:
            return stamp
    return at
