"""Hand-written AMI event sequences for what the recorded traces lack, plus garbage and random input."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import AsteriskSettings
from bridge.model import (
    AgentsRinging,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRecord,
    CallStarted,
    CallTransferred,
    Direction,
    Disposition,
    OriginateRequest,
    RecordingStarted,
    RingStopped,
    TransferKind,
)
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiMessage, AmiParser
from bridge.pbx.asterisk.tracker import CallTracker

T0 = 1_800_000_000.0


@dataclass
class Chan:
    name: str
    uid: str
    linkedid: str
    context: str = "from-internal"
    exten: str = "s"
    cid: str = "<unknown>"
    state: int = 0

    def block(self, prefix: str = "") -> dict[str, str]:
        return {f"{prefix}Channel": self.name, f"{prefix}ChannelState": str(self.state),
                f"{prefix}CallerIDNum": self.cid, f"{prefix}ConnectedLineNum": "<unknown>",
                f"{prefix}Context": self.context, f"{prefix}Exten": self.exten, f"{prefix}Priority": "1",
                f"{prefix}Uniqueid": self.uid, f"{prefix}Linkedid": self.linkedid}


class Pbx:
    """Writes AMI events the way Asterisk 13-22 does, feeds them to a tracker and keeps what comes out."""

    def __init__(self, tracker: CallTracker | None = None) -> None:
        self.tracker = tracker if tracker is not None else CallTracker(Classifier())
        self.now = T0
        self.events: list[CallEvent] = []
        self._ids = itertools.count(1)

    # ---- plumbing
    def send(self, event: str, *blocks: tuple[str, Chan], dt: float = 0.01, **headers: str) -> list[CallEvent]:
        fields: dict[str, str] = {"Event": event, "Privilege": "call,all"} if event else {}
        for prefix, chan in blocks:
            fields.update(chan.block(prefix))
        fields.update(headers)
        self.now += dt
        out = self.tracker.feed(AmiMessage(fields), self.now)
        self.events.extend(out)
        return out

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def _chan(self, name: str, linkedid: str | None, **kw: Any) -> Chan:
        n = next(self._ids)
        uid = f"{int(T0)}.{n}"
        return Chan(name=name, uid=uid, linkedid=linkedid or uid, **kw)

    # ---- channels
    def trunk_in(self, number: str, did: str, *, endpoint: str = "provider", context: str = "from-provider") -> Chan:
        chan = self._chan(f"PJSIP/{endpoint}-{next(self._ids):08x}", None, context=context, exten=did, cid=number,
                          state=4)
        self.send("Newchannel", ("", chan))
        return chan

    def phone(self, ext: str, linkedid: str | None, *, state: int = 0, exten: str = "s") -> Chan:
        chan = self._chan(f"PJSIP/{ext}-{next(self._ids):08x}", linkedid, exten=exten, cid=ext, state=state)
        self.send("Newchannel", ("", chan))
        return chan

    def trunk_out(self, linkedid: str, *, endpoint: str = "provider") -> Chan:
        chan = self._chan(f"PJSIP/{endpoint}-{next(self._ids):08x}", linkedid, context="from-provider")
        self.send("Newchannel", ("", chan))
        return chan

    def local(self, exten: str, context: str, linkedid: str) -> tuple[Chan, Chan]:
        base = f"Local/{exten}@{context}-{next(self._ids):08x}"
        one = self._chan(base + ";1", linkedid, context=context, exten=exten)
        two = self._chan(base + ";2", linkedid, context=context, exten=exten, state=4)
        self.send("Newchannel", ("", one))
        self.send("Newchannel", ("", two), dt=0)
        self.send("LocalBridge", ("LocalOne", one), ("LocalTwo", two), Context=context, Exten=exten,
                  LocalOptimization="Yes")
        return one, two

    # ---- events
    def state(self, chan: Chan, state: int, dt: float = 0.01) -> None:
        chan.state = state
        self.send("Newstate", ("", chan), dt=dt)

    def dial(self, caller: Chan | None, dest: Chan, dial_string: str = "") -> None:
        blocks = ([("", caller)] if caller else []) + [("Dest", dest)]
        self.send("DialBegin", *blocks, DialString=dial_string or dest.name.split("/", 1)[1].rsplit("-", 1)[0])

    def dial_end(self, caller: Chan | None, dest: Chan, status: str) -> None:
        blocks = ([("", caller)] if caller else []) + [("Dest", dest)]
        self.send("DialEnd", *blocks, DialStatus=status)

    def answer(self, caller: Chan | None, dest: Chan) -> None:
        self.state(dest, 6)
        self.dial_end(caller, dest, "ANSWER")

    def bridge(self, bridge_id: str, *chans: Chan, swap: Chan | None = None) -> None:
        for chan in chans:
            if swap is None:
                self.send("BridgeEnter", ("", chan), BridgeUniqueid=bridge_id, BridgeType="basic")
            else:
                self.send("BridgeEnter", ("", chan), BridgeUniqueid=bridge_id, BridgeType="basic",
                          SwapUniqueid=swap.uid)

    def leave(self, bridge_id: str, *chans: Chan) -> None:
        for chan in chans:
            self.send("BridgeLeave", ("", chan), BridgeUniqueid=bridge_id, BridgeType="basic")

    def hangup(self, *chans: Chan, cause: int = 16, dt: float = 0.01) -> None:
        for chan in chans:
            self.send("Hangup", ("", chan), dt=dt, Cause=str(cause), **{"Cause-txt": "x"})

    def varset(self, chan: Chan, name: str, value: str) -> None:
        self.send("VarSet", ("", chan), Variable=name, Value=value)

    # ---- results
    def records(self) -> list[CallRecord]:
        return [e.call for e in self.events if isinstance(e, CallEnded)]

    def record(self) -> CallRecord:
        (record,) = self.records()
        return record

    def kinds(self, call_id: str | None = None) -> list[str]:
        return [e.kind for e in self.events if call_id is None or e.call_id == call_id]

    def of(self, cls: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def assert_well_formed(events: list[CallEvent]) -> None:
    per_call: dict[str, list[str]] = defaultdict(list)
    for event in events:
        per_call[event.call_id].append(event.kind)
    for kinds in per_call.values():
        assert kinds[0] == "started" and kinds.count("started") == 1
        assert kinds.count("ended") <= 1
        if "ended" in kinds:
            assert kinds[-1] == "ended"


# ---- FreePBX queue with Local members: nobody answers ------------------------------------------------------------


def test_freepbx_local_queue_nobody_answers() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_in("79161110099", "s", endpoint="fpbx-trunk", context="from-pstn")
    assert pbx.events == [], "exten `s`: wait for the DID"
    pbx.varset(trunk, "__FROM_DID", "5553000")
    (started,) = pbx.of(CallStarted)
    assert (started.direction, started.line, started.external_number) == (Direction.INBOUND, "5553000", "79161110099")
    pbx.send("QueueCallerJoin", ("", trunk), Queue="400", Position="1", Count="1")
    members = {}
    for ext in ("101", "102", "103"):
        one, two = pbx.local(ext, "from-queue", trunk.linkedid)
        pbx.send("AgentCalled", ("", trunk), ("Dest", one), Queue="400", Interface=f"Local/{ext}@from-queue/n",
                 MemberName=ext)
        pbx.dial(trunk, one, f"Local/{ext}@from-queue/n")
        phone = pbx.phone(ext, trunk.linkedid)
        pbx.dial(two, phone, f"{ext}/sip:{ext}@127.0.0.1:5060")
        pbx.state(phone, 5)
        pbx.state(one, 5)
        members[ext] = (one, two, phone)
    assert [e.agents for e in pbx.of(AgentsRinging)] == [("101",), ("102",), ("103",)]
    pbx.wait(15)
    one, two, phone = members["101"]  # 101 rang out: the queue gives up on it
    pbx.send("AgentRingNoAnswer", ("", trunk), ("Dest", one), Queue="400", Interface="Local/101@from-queue/n",
             RingTime="15000")
    pbx.dial_end(two, phone, "CANCEL")
    pbx.hangup(phone, two, one, cause=16)
    pbx.wait(4)
    pbx.send("HangupRequest", ("", trunk), Cause="16")  # the customer gives up
    for ext in ("102", "103"):
        one, two, phone = members[ext]
        pbx.dial_end(trunk, one, "CANCEL")
        pbx.dial_end(two, phone, "CANCEL")
        pbx.hangup(phone, two, one, cause=16)
    pbx.send("QueueCallerAbandon", ("", trunk), Queue="400", Position="1", OriginalPosition="1", HoldTime="19")
    pbx.hangup(trunk, cause=16)
    record = pbx.record()
    assert record.disposition is Disposition.MISSED and record.agent is None and record.answered_at is None
    assert record.agents_rung == ("101", "102", "103") and record.line == "5553000" and record.talk_seconds == 0
    stops = {e.agent: e.reason.value for e in pbx.of(RingStopped)}
    assert stops == {"101": "no_answer", "102": "caller_gone", "103": "caller_gone"}
    assert not pbx.of(CallAnswered)
    assert_well_formed(pbx.events)
    assert len(pbx.tracker) == 0


def test_did_from_a_later_newexten_and_start_without_any_did() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_in("79160000001", "s", endpoint="fpbx-trunk", context="from-pstn")
    pbx.send("Newexten", ("", trunk), Context="from-pstn", Extension="5553100", Application="Set",
             AppData="__FROM_DID=5553100")
    (started,) = pbx.of(CallStarted)
    assert started.line == "5553100"
    other = Pbx()
    trunk = other.trunk_in("79160000002", "s", endpoint="fpbx-trunk", context="from-pstn")
    phone = other.phone("101", trunk.linkedid)
    other.dial(trunk, phone)  # ringing must not wait for a DID that never comes
    assert other.kinds() == ["started", "ringing"]
    assert other.of(CallStarted)[0].line is None


# ---- FreePBX vmret: the customer's channel is answered by Asterisk, not by an agent -----------------------------


def test_vmret_answering_the_caller_is_missed_not_answered() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_in("79160000003", "5553101", endpoint="fpbx-trunk", context="from-pstn")
    phone = pbx.phone("101", trunk.linkedid)
    pbx.dial(trunk, phone)
    pbx.state(phone, 5)
    pbx.wait(15)
    pbx.dial_end(trunk, phone, "NOANSWER")
    pbx.hangup(phone, cause=16)
    pbx.state(trunk, 6)  # vmret: Answer() + Playback on the customer's channel
    pbx.send("Newexten", ("", trunk), Context="vmret", Extension="s", Application="Playback", AppData="vm-nobodyavail")
    pbx.wait(8)
    pbx.hangup(trunk, cause=16)
    record = pbx.record()
    assert record.disposition is Disposition.MISSED and record.answered_at is None and record.agent is None
    assert [(e.agent, e.reason.value) for e in pbx.of(RingStopped)] == [("101", "no_answer")]


# ---- outbound ---------------------------------------------------------------------------------------------------


def outbound_start(pbx: Pbx, number: str = "79162220009") -> tuple[Chan, Chan]:
    agent = pbx.phone("101", None, state=4, exten=number)
    assert pbx.events == [], "direction unknown until the agent's call reaches a trunk or a phone"
    trunk = pbx.trunk_out(agent.linkedid)
    pbx.dial(agent, trunk, f"{number}@provider")
    return agent, trunk


def test_outbound_busy() -> None:
    pbx = Pbx()
    agent, trunk = outbound_start(pbx)
    (started,) = pbx.of(CallStarted)
    assert (started.direction, started.external_number, started.agent, started.line) == (
        Direction.OUTBOUND, "79162220009", "101", "provider")
    pbx.state(trunk, 5)
    pbx.send("HangupRequest", ("", trunk), Cause="17")
    pbx.dial_end(agent, trunk, "BUSY")
    pbx.hangup(trunk, cause=17)
    pbx.hangup(agent, cause=17)
    record = pbx.record()
    assert (record.disposition, record.agent, record.hangup_cause, record.agents_rung) == (
        Disposition.BUSY, "101", 17, ())


def test_outbound_failed_chanunavail() -> None:
    pbx = Pbx()
    agent, trunk = outbound_start(pbx)
    pbx.dial_end(agent, trunk, "CHANUNAVAIL")
    pbx.hangup(trunk, cause=20)
    pbx.hangup(agent, cause=20)
    record = pbx.record()
    assert record.disposition is Disposition.FAILED and record.failure_reason == "dial status CHANUNAVAIL"
    assert record.direction is Direction.OUTBOUND and record.external_number == "79162220009"


def test_outbound_failed_before_any_trunk_channel() -> None:
    """Asterisk could not even create the trunk channel: no DialBegin, only DIALSTATUS in the dialplan."""
    pbx = Pbx()
    agent = pbx.phone("101", None, state=4, exten="89162220010")
    pbx.varset(agent, "DIALSTATUS", "CHANUNAVAIL")
    pbx.hangup(agent, cause=66)
    assert pbx.kinds() == ["started", "ended"]
    record = pbx.record()
    assert (record.direction, record.external_number, record.agent, record.disposition) == (
        Direction.OUTBOUND, "89162220010", "101", Disposition.FAILED)


def test_outbound_cancelled_by_agent_is_no_answer_and_declined_by_customer() -> None:
    pbx = Pbx()
    agent, trunk = outbound_start(pbx)
    pbx.state(trunk, 5)
    pbx.dial_end(agent, trunk, "CANCEL")
    pbx.hangup(trunk, cause=16)
    pbx.hangup(agent, cause=16)
    assert pbx.record().disposition is Disposition.NO_ANSWER
    pbx = Pbx()
    agent, trunk = outbound_start(pbx)
    pbx.hangup(trunk, cause=21)
    pbx.dial_end(agent, trunk, "CONGESTION")
    pbx.hangup(agent, cause=21)
    assert pbx.record().disposition is Disposition.DECLINED


def test_freepbx_outbound_route_strips_the_8() -> None:
    """outrt-1: the agent dials 8XXXXXXXXXX; the route sends 7XXXXXXXXXX to the trunk, which is the customer."""
    pbx = Pbx()
    agent = pbx.phone("101", None, state=4, exten="89161234567")
    pbx.varset(agent, "OUTNUM", "79161234567")
    trunk = pbx.trunk_out(agent.linkedid, endpoint="fpbx-trunk")
    trunk.cid = "s"
    pbx.dial(agent, trunk, "79161234567@fpbx-trunk")
    (started,) = pbx.of(CallStarted)
    assert (started.external_number, started.line, started.agent) == ("79161234567", "fpbx-trunk", "101")
    active = pbx.tracker.active_calls()
    assert [(a.call_id, a.direction, a.agent, a.state) for a in active] == [
        (agent.linkedid, Direction.OUTBOUND, "101", "setup")]
    pbx.answer(agent, trunk)
    pbx.bridge("b1", agent, trunk)
    assert pbx.tracker.active_calls()[0].state == "talking"
    pbx.hangup(agent, trunk)
    assert pbx.record().external_number == "79161234567"


def test_originate_to_the_customer_first_is_outbound() -> None:
    """A callback that rings the customer first: the first channel is a trunk leg Asterisk created (state Down)."""
    pbx = Pbx()
    trunk = pbx._chan("PJSIP/provider-0000cccc", None, context="from-provider", exten="s")
    pbx.send("Newchannel", ("", trunk))
    assert pbx.events == []
    pbx.dial(None, trunk, "79165550000@provider")
    pbx.answer(None, trunk)
    agent = pbx.phone("101", trunk.linkedid)
    pbx.dial(trunk, agent)
    pbx.state(agent, 5)
    pbx.answer(trunk, agent)
    pbx.bridge("b1", trunk, agent)
    pbx.wait(4)
    pbx.hangup(agent, trunk)
    record = pbx.record()
    assert (record.direction, record.external_number, record.agent, record.disposition, record.agents_rung) == (
        Direction.OUTBOUND, "79165550000", "101", Disposition.ANSWERED, ("101",))


# ---- internal ---------------------------------------------------------------------------------------------------


def test_internal_busy_and_unanswered() -> None:
    pbx = Pbx()
    caller = pbx.phone("101", None, state=4, exten="102")
    callee = pbx.phone("102", caller.linkedid)
    pbx.dial(caller, callee)
    pbx.dial_end(caller, callee, "BUSY")
    pbx.hangup(callee, caller, cause=17)
    record = pbx.record()
    assert (record.direction, record.agent, record.agents_rung, record.disposition) == (
        Direction.INTERNAL, "101", ("102",), Disposition.BUSY)
    assert [(e.agent, e.reason.value) for e in pbx.of(RingStopped)] == [("102", "busy")]
    pbx = Pbx()
    caller = pbx.phone("101", None, state=4, exten="*97")  # voicemail: no other party at all
    pbx.hangup(caller)
    assert pbx.record().direction is Direction.INTERNAL


# ---- ring group with Local channels that Asterisk optimises away ------------------------------------------------


def test_ring_group_with_local_channels_optimised_away() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_in("79161110050", "5553600", endpoint="fpbx-trunk", context="from-pstn")
    legs = {}
    for ext in ("101", "102"):
        one, two = pbx.local(ext, "from-internal", trunk.linkedid)
        pbx.dial(trunk, one, f"{ext}@from-internal")
        phone = pbx.phone(ext, trunk.linkedid)
        pbx.dial(two, phone, ext)
        pbx.state(phone, 5)
        pbx.state(one, 5)
        legs[ext] = (one, two, phone)
    pbx.wait(3)
    one, two, phone = legs["102"]
    pbx.answer(two, phone)
    pbx.bridge("b-local", phone, two)
    pbx.state(one, 6)
    pbx.dial_end(trunk, one, "ANSWER")
    lose_one, lose_two, lose_phone = legs["101"]
    pbx.dial_end(trunk, lose_one, "CANCEL")
    pbx.dial_end(lose_two, lose_phone, "CANCEL")
    pbx.hangup(lose_phone, lose_two, lose_one, cause=26)
    pbx.state(trunk, 6)
    pbx.bridge("b-main", trunk, one)
    (answered,) = pbx.of(CallAnswered)
    assert answered.agent == "102"
    pbx.send("LocalOptimizationBegin", ("LocalOne", one), ("LocalTwo", two), Id="1", DestUniqueId=phone.uid)
    pbx.leave("b-local", phone)
    pbx.bridge("b-main", phone, swap=one)  # the phone takes the Local half's place next to the customer
    pbx.leave("b-main", one)
    pbx.leave("b-local", two)
    pbx.send("LocalOptimizationEnd", ("LocalOne", one), ("LocalTwo", two), Id="1", Success="Yes")
    pbx.hangup(one, two, cause=16)
    pbx.wait(10)
    pbx.hangup(trunk, phone, cause=16)
    record = pbx.record()
    assert (record.disposition, record.agent, record.agents_rung, record.transfers) == (
        Disposition.ANSWERED, "102", ("101", "102"), ())
    assert record.talk_seconds == 10
    assert [(e.agent, e.reason.value) for e in pbx.of(RingStopped)] == [("101", "answered_elsewhere")]
    assert len(pbx.of(CallAnswered)) == 1 and not pbx.of(CallTransferred)


# ---- attended transfer ------------------------------------------------------------------------------------------


def inbound_answered_by(pbx: Pbx, ext: str) -> tuple[Chan, Chan]:
    trunk = pbx.trunk_in("79161110060", "5552001")
    phone = pbx.phone(ext, trunk.linkedid)
    pbx.dial(trunk, phone)
    pbx.state(phone, 5)
    pbx.answer(trunk, phone)
    pbx.state(trunk, 6)
    pbx.bridge("b1", phone, trunk)
    return trunk, phone


def test_attended_transfer_within_one_call() -> None:
    """Atxfer: the agent's consultation leg shares the call's linkedid; on completion 102 joins the customer."""
    pbx = Pbx()
    trunk, a101 = inbound_answered_by(pbx, "101")
    pbx.wait(5)
    pbx.leave("b1", a101)  # 101 leaves the customer on hold and calls 102
    b102 = pbx.phone("102", trunk.linkedid)
    pbx.dial(a101, b102)
    pbx.state(b102, 5)
    pbx.answer(a101, b102)
    pbx.bridge("b2", a101, b102)
    pbx.wait(5)
    assert not pbx.of(CallTransferred), "a consultation is no transfer yet"
    pbx.send("AttendedTransfer", ("OrigTransferer", a101), ("SecondTransferer", a101), ("TransferTarget", b102),
             ("Transferee", trunk), Result="Success", DestType="Bridge", IsExternal="No")
    pbx.leave("b2", a101, b102)
    pbx.bridge("b1", b102)
    pbx.hangup(a101)
    pbx.wait(7)
    pbx.hangup(trunk, b102)
    record = pbx.record()
    assert [(t.from_agent, t.to_agent, t.kind) for t in record.transfers] == [("101", "102", TransferKind.ATTENDED)]
    assert (record.agent, record.agents_rung, record.disposition) == ("102", ("101", "102"), Disposition.ANSWERED)
    assert record.talk_seconds == 17
    (moved,) = pbx.of(CallTransferred)
    assert (moved.from_agent, moved.to_agent, moved.transfer_kind) == ("101", "102", TransferKind.ATTENDED)
    assert_well_formed(pbx.events)


def test_attended_transfer_from_the_phone_merges_the_consultation_call() -> None:
    """A SIP phone's own transfer: the consultation is a separate call (own linkedid) that joins the customer's."""
    pbx = Pbx()
    trunk, a101 = inbound_answered_by(pbx, "101")
    customer_call = trunk.linkedid
    pbx.wait(3)
    pbx.send("Hold", ("", a101))
    second = pbx.phone("101", None, state=4, exten="102")  # 101's second line calls 102
    b102 = pbx.phone("102", second.linkedid)
    pbx.dial(second, b102)
    pbx.state(b102, 5)
    pbx.answer(second, b102)
    pbx.bridge("b2", b102, second)
    consult = second.linkedid
    assert pbx.kinds(consult)[:3] == ["started", "ringing", "answered"]
    pbx.wait(4)
    # The transfer: 102's channel moves next to the customer; Asterisk re-stamps its linkedid to the older one.
    pbx.leave("b2", b102)
    pbx.leave("b1", a101)
    pbx.bridge("b1", b102)
    b102.linkedid = customer_call
    pbx.state(b102, 6)
    pbx.send("AttendedTransfer", ("OrigTransferer", a101), ("SecondTransferer", second), ("TransferTarget", b102),
             ("Transferee", trunk), Result="Success", DestType="Bridge", IsExternal="No")
    pbx.hangup(a101, second)
    pbx.wait(6)
    pbx.hangup(trunk, b102)
    records = {r.call_id: r for r in pbx.records()}
    assert set(records) == {customer_call, consult}
    main = records[customer_call]
    assert [(t.from_agent, t.to_agent, t.kind) for t in main.transfers] == [("101", "102", TransferKind.ATTENDED)]
    assert main.agent == "102" and main.disposition is Disposition.ANSWERED and main.talk_seconds >= 10
    side = records[consult]
    assert side.direction is Direction.INTERNAL and side.disposition is Disposition.ANSWERED
    assert pbx.kinds(consult)[-1] == "ended"
    assert_well_formed(pbx.events)
    assert pbx.tracker.sizes() == dict.fromkeys(pbx.tracker.sizes(), 0)


def test_attended_transfer_reported_after_the_move_fixes_the_kind() -> None:
    pbx = Pbx()
    trunk, a101 = inbound_answered_by(pbx, "101")
    b102 = pbx.phone("102", trunk.linkedid)
    pbx.leave("b1", a101)
    pbx.bridge("b1", b102)  # no consultation seen (events filtered): looks blind at first
    (moved,) = pbx.of(CallTransferred)
    assert moved.transfer_kind is TransferKind.BLIND
    pbx.send("AttendedTransfer", ("OrigTransferer", a101), ("TransferTarget", b102), ("Transferee", trunk),
             Result="Success", DestType="Bridge")
    pbx.hangup(a101, trunk, b102)
    assert [(t.from_agent, t.to_agent, t.kind) for t in pbx.record().transfers] == [
        ("101", "102", TransferKind.ATTENDED)]


def test_blind_transfer_nobody_takes_it() -> None:
    pbx = Pbx()
    trunk, a101 = inbound_answered_by(pbx, "101")
    pbx.send("BlindTransfer", ("Transferer", a101), ("Transferee", trunk), Result="Success", IsExternal="No",
             Context="from-internal", Extension="102")
    pbx.leave("b1", trunk, a101)
    pbx.hangup(a101)
    b102 = pbx.phone("102", trunk.linkedid)
    pbx.dial(trunk, b102)
    pbx.state(b102, 5)
    pbx.wait(20)
    pbx.send("HangupRequest", ("", trunk))
    pbx.dial_end(trunk, b102, "CANCEL")
    pbx.hangup(b102, trunk)
    record = pbx.record()
    assert record.agent == "101" and record.disposition is Disposition.ANSWERED
    assert [(t.from_agent, t.to_agent, t.kind) for t in record.transfers] == [("101", None, TransferKind.BLIND)]
    assert [(e.agent, e.reason.value) for e in pbx.of(RingStopped)] == [("102", "caller_gone")]


# ---- click-to-call ------------------------------------------------------------------------------------------------


def request(**kw: Any) -> OriginateRequest:
    base: dict[str, Any] = {"request_id": "r1", "extension": "101", "number": "+79162220011",
                            "crm_call_id": "externalCall.abc.1"}
    base.update(kw)
    return OriginateRequest(**base)


def test_originate_failure_without_any_channel() -> None:
    pbx = Pbx()
    pbx.tracker.note_originate("act-1", request(), T0)
    out = pbx.send("OriginateResponse", ActionID="act-1", Response="Failure", Channel="PJSIP/101",
                   Context="from-internal", Exten="79162220011", Reason="0", Uniqueid="<unknown>")
    assert [e.kind for e in out] == ["started", "ended"]
    started, ended = out
    assert isinstance(started, CallStarted) and isinstance(ended, CallEnded)
    assert (started.direction, started.agent, started.external_number, started.crm_call_id) == (
        Direction.OUTBOUND, "101", "+79162220011", "externalCall.abc.1")
    record = ended.call
    assert (record.call_id, record.disposition, record.agent, record.external_number, record.crm_call_id) == (
        "act-1", Disposition.FAILED, "101", "+79162220011", "externalCall.abc.1")
    assert record.failure_reason == "originate failed: no channel (reason 0)"
    assert pbx.send("OriginateResponse", ActionID="act-1", Response="Failure", Reason="0") == []  # once only


def test_originate_refused_lost_or_cut_by_restart_still_finishes() -> None:
    pbx = Pbx()
    tracker = pbx.tracker
    tracker.note_originate("act-2", request(crm_call_id="c2"), T0)
    (_, ended) = pbx.send("", ActionID="act-2", Response="Error", Message="Extension does not exist.")  # no Event
    assert isinstance(ended, CallEnded) and "Extension does not exist" in (ended.call.failure_reason or "")
    tracker.note_originate("act-3", request(crm_call_id="c3", timeout_seconds=30), pbx.now)
    pbx.send("Newexten", dt=60)
    assert pbx.of(CallEnded)[-1].call.crm_call_id == "c2"  # not yet given up
    pbx.send("Newexten", dt=60)
    assert pbx.of(CallEnded)[-1].call.failure_reason == "originate failed: no response from Asterisk"
    tracker.note_originate("act-4", request(crm_call_id="c4"), pbx.now)
    out = tracker.restart(pbx.now + 1)
    assert [e.kind for e in out] == ["started", "ended"] and tracker.sizes()["originates"] == 0


def test_noted_originate_is_outbound_from_the_first_ring() -> None:
    pbx = Pbx()
    pbx.tracker.note_originate("act-5", request(), T0)
    agent = pbx._chan("PJSIP/101-0000aaaa", None, cid="101")
    pbx.send("Newchannel", ("", agent))
    pbx.varset(agent, "B24_CALL_ID", "externalCall.abc.1")
    pbx.dial(None, agent, "101")  # Asterisk rings the agent itself
    pbx.state(agent, 5)
    assert pbx.kinds() == ["started", "ringing"]
    (started,) = pbx.of(CallStarted)
    assert (started.direction, started.external_number, started.agent, started.crm_call_id) == (
        Direction.OUTBOUND, "+79162220011", "101", "externalCall.abc.1")
    pbx.wait(3)
    pbx.answer(None, agent)
    pbx.send("OriginateResponse", ("", agent), ActionID="act-5", Response="Success", Reason="4")
    pbx.varset(agent, "MIXMONITOR_FILENAME", "/var/spool/asterisk/monitor/out-1.wav")
    trunk = pbx.trunk_out(agent.linkedid)
    pbx.dial(agent, trunk, "79162220011@provider")
    pbx.state(trunk, 5)
    pbx.answer(agent, trunk)
    pbx.bridge("b1", trunk, agent)
    pbx.wait(12)
    pbx.hangup(trunk, agent)
    record = pbx.record()
    assert (record.disposition, record.agent, record.talk_seconds, record.line) == (
        Disposition.ANSWERED, "101", 12, "provider")
    assert record.recordings == ("/var/spool/asterisk/monitor/out-1.wav",)
    assert [e.path for e in pbx.of(RecordingStarted)] == list(record.recordings)
    assert len(pbx.of(CallStarted)) == 1


def test_originate_agent_never_answers() -> None:
    pbx = Pbx()
    pbx.tracker.note_originate("act-6", request(crm_call_id=None), T0)
    one, two = pbx.local("101", "from-internal", "")
    assert one.linkedid == one.uid
    pbx.dial(None, one, "101@from-internal")
    assert pbx.kinds() == ["started", "ringing"]
    phone = pbx.phone("101", one.linkedid)
    pbx.dial(two, phone, "101")
    pbx.state(phone, 5)
    pbx.wait(30)
    pbx.dial_end(two, phone, "NOANSWER")
    pbx.dial_end(None, one, "NOANSWER")
    pbx.hangup(phone, two, one, cause=19)
    pbx.send("OriginateResponse", ActionID="act-6", Response="Failure", Reason="3", Uniqueid=one.uid)
    record = pbx.record()
    assert (record.direction, record.disposition, record.agent, record.external_number) == (
        Direction.OUTBOUND, Disposition.NO_ANSWER, "101", "+79162220011")
    assert len(pbx.of(CallEnded)) == 1


# ---- resync after a reconnect -----------------------------------------------------------------------------------


def snapshot(chan: Chan, *, bridge: str = "", seconds: int = 0) -> AmiMessage:
    fields = {"Event": "CoreShowChannel", "ActionID": "resync-1", **chan.block(), "BridgeId": bridge,
              "Duration": f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
              "Application": "Dial", "ApplicationData": ""}
    return AmiMessage(fields)


def test_resync_closes_vanished_calls_keeps_survivors_and_adopts_newcomers() -> None:
    pbx = Pbx()
    trunk_a, _ = inbound_answered_by(pbx, "101")
    trunk_b = pbx.trunk_in("79161110070", "5552002")
    phone_b = pbx.phone("102", trunk_b.linkedid)
    pbx.dial(trunk_b, phone_b)
    pbx.state(phone_b, 5)
    pbx.answer(trunk_b, phone_b)
    pbx.bridge("b2", phone_b, trunk_b)
    trunk_c = pbx.trunk_in("79161110071", "5552003")  # a call that will vanish unanswered
    pbx.wait(30)  # the link is down; A and C end meanwhile, D starts
    trunk_d = Chan("PJSIP/provider-0000ffff", "1800000099.1", "1800000099.1", context="from-provider",
                   exten="5552004", cid="79161110072", state=4)
    phone_d = Chan("PJSIP/103-0000fffe", "1800000099.2", "1800000099.1", cid="103", state=5)
    at = pbx.now
    out = pbx.tracker.resync([snapshot(trunk_b, bridge="b2", seconds=31), snapshot(phone_b, bridge="b2", seconds=31),
                              snapshot(phone_d, seconds=4), snapshot(trunk_d, seconds=5)], at)
    ended = {e.call_id: e.call for e in out if isinstance(e, CallEnded)}
    assert set(ended) == {trunk_a.linkedid, trunk_c.linkedid}
    assert ended[trunk_a.linkedid].disposition is Disposition.ANSWERED
    assert ended[trunk_a.linkedid].ended_at.timestamp() == pytest.approx(at)
    assert ended[trunk_c.linkedid].disposition is Disposition.MISSED
    adopted = [e for e in out if e.call_id == trunk_d.linkedid]
    assert [e.kind for e in adopted] == ["started", "ringing"]
    assert isinstance(adopted[0], CallStarted) and adopted[0].at.timestamp() == pytest.approx(at - 5)
    assert (adopted[0].external_number, adopted[0].line) == ("79161110072", "5552004")
    assert len(pbx.tracker) == 2
    pbx.events.extend(out)
    assert pbx.send("Hangup", ("", trunk_a), Cause="16") == []  # a straggler of a closed call changes nothing
    pbx.wait(10)
    pbx.hangup(trunk_b, phone_b)
    survivor = pbx.records()[-1]
    assert survivor.call_id == trunk_b.linkedid and survivor.talk_seconds >= 40
    assert_well_formed(pbx.events)


def test_resync_with_empty_snapshot_closes_everything() -> None:
    pbx = Pbx()
    inbound_answered_by(pbx, "101")
    out = pbx.tracker.resync([], pbx.now + 5)
    assert [e.kind for e in out][-1] == "ended" and len(pbx.tracker) == 0
    assert pbx.tracker.sizes() == dict.fromkeys(pbx.tracker.sizes(), 0)


# ---- small things -------------------------------------------------------------------------------------------------


def test_timestamp_header_wins_over_arrival_and_garbage_timestamp_is_ignored() -> None:
    pbx = Pbx()
    trunk = Chan("PJSIP/provider-00000001", "1.1", "1.1", context="from-provider", exten="5552001", cid="7916", state=4)
    (started,) = pbx.tracker.feed(AmiMessage({"Event": "Newchannel", **trunk.block(), "Timestamp": "1700000000.250"}),
                                  T0)
    assert started.at.timestamp() == 1700000000.25
    out = pbx.tracker.feed(AmiMessage({"Event": "Hangup", **trunk.block(), "Cause": "16",
                                       "Timestamp": "not-a-time"}), T0 + 3)
    assert isinstance(out[-1], CallEnded) and out[-1].at.timestamp() == T0 + 3


def test_channel_variables_carry_crm_id_and_recording() -> None:
    """With `channelvars` instead of VarSet events the same variables arrive as ChanVariable lines."""
    parser = AmiParser()
    raw = (b"Event: Newchannel\r\nChannel: PJSIP/provider-00000001\r\nChannelState: 4\r\nCallerIDNum: 7916\r\n"
           b"CallerIDName: \xcc\xe0\xf0\xe8\xff\r\nContext: from-provider\r\nExten: 5552001\r\nUniqueid: 9.1\r\n"
           b"Linkedid: 9.1\r\nChanVariable: B24_CALL_ID=crm-9\r\n"
           b"ChanVariable: MIXMONITOR_FILENAME=/var/spool/asterisk/monitor/in-9.wav\r\n\r\n"
           b"Event: Hangup\r\nChannel: PJSIP/provider-00000001\r\nUniqueid: 9.1\r\nLinkedid: 9.1\r\nCause: 16\r\n\r\n")
    tracker = CallTracker(Classifier())
    events = [e for m in parser.feed(raw) for e in tracker.feed(m, T0)]
    record = events[-1].call if isinstance(events[-1], CallEnded) else None
    assert record is not None
    assert (record.crm_call_id, record.recordings) == ("crm-9", ("/var/spool/asterisk/monitor/in-9.wav",))


def test_mixmonitor_app_data_is_used_only_without_mixmonitor_filename() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_in("7916", "5551001")
    pbx.send("Newexten", ("", trunk), Application="MixMonitor", AppData="/mon/in-1.wav49,b")
    pbx.varset(trunk, "MIXMONITOR_FILENAME", "/mon/in-1.WAV")
    pbx.send("MixMonitorStart", ("", trunk))
    pbx.send("Newexten", ("", trunk), Application="MixMonitor", AppData="/mon/second.wav,a")
    pbx.send("MixMonitorStart", ("", trunk))
    pbx.hangup(trunk)
    assert pbx.record().recordings == ("/mon/in-1.WAV", "/mon/second.wav")


def test_configured_crm_variable_name() -> None:
    tracker = CallTracker(Classifier(AsteriskSettings(crm_call_id_variable="CRM_CALL_ID")))
    pbx = Pbx(tracker)
    trunk = pbx.trunk_in("7916", "5551001")
    pbx.varset(trunk, "B24_CALL_ID", "ignored")
    pbx.varset(trunk, "__CRM_CALL_ID", "crm-1")
    pbx.hangup(trunk)
    assert pbx.record().crm_call_id == "crm-1"


def test_helper_channels_are_ignored() -> None:
    pbx = Pbx()
    helper = Chan("Announcer/ARI-1", "5.1", "5.1", state=6)
    pbx.send("Newchannel", ("", helper))
    pbx.send("Hangup", ("", helper), Cause="16")
    assert pbx.events == [] and len(pbx.tracker) == 0


def test_linkedid_change_merges_a_pickup_into_the_ringing_call() -> None:
    """102 picks up 101's ringing call with *8: its own call (unannounced) becomes part of the customer's."""
    pbx = Pbx()
    trunk = pbx.trunk_in("79161110080", "5552001")
    a101 = pbx.phone("101", trunk.linkedid)
    pbx.dial(trunk, a101)
    pbx.state(a101, 5)
    picker = pbx.phone("102", None, state=4, exten="*8")
    pbx.bridge("b1", picker, trunk)
    pbx.send("HangupRequest", ("", a101), Cause="26")
    pbx.dial_end(trunk, a101, "CANCEL")
    pbx.hangup(a101, cause=26)
    pbx.wait(5)
    pbx.hangup(trunk, picker)
    (record,) = pbx.records()
    assert (record.call_id, record.agent, record.disposition) == (trunk.linkedid, "102", Disposition.ANSWERED)
    assert [(e.agent, e.reason.value) for e in pbx.of(RingStopped)] == [("101", "answered_elsewhere")]
    assert_well_formed(pbx.events)


# ---- garbage ------------------------------------------------------------------------------------------------------


def test_garbage_and_out_of_order_events_are_skipped() -> None:
    pbx = Pbx()
    tracker = pbx.tracker
    junk = [
        {}, {"Event": ""}, {"Event": "Hangup"}, {"Event": "Hangup", "Uniqueid": "nope", "Cause": "x"},
        {"Event": "Newchannel"}, {"Event": "Newchannel", "Uniqueid": "1.1"},
        {"Event": "Newstate", "Uniqueid": "1.1", "ChannelState": "abc"},
        {"Event": "DialBegin", "DestUniqueid": "2.2"}, {"Event": "DialEnd", "DestUniqueid": "2.2", "DialStatus": ""},
        {"Event": "BridgeEnter", "Uniqueid": "1.1"}, {"Event": "BridgeLeave", "BridgeUniqueid": "b"},
        {"Event": "BridgeDestroy"}, {"Event": "LocalBridge", "LocalOneUniqueid": "1.1"},
        {"Event": "AgentConnect", "Interface": "Local/@/n"}, {"Event": "AgentCalled"},
        {"Event": "BlindTransfer", "Result": "Success"}, {"Event": "AttendedTransfer", "Result": "Success"},
        {"Event": "VarSet", "Uniqueid": "1.1"}, {"Event": "OriginateResponse", "Response": "Failure", "Reason": "x"},
        {"Event": "FullyBooted", "Uptime": "-5"}, {"Event": "Cdr", "Uniqueid": "1.1"},
        {"Response": "Error", "ActionID": "nobody", "Message": "x"}, {"Response": "Success"},
        {"Event": "Newchannel", "Uniqueid": "3.3", "Linkedid": "3.3", "Channel": "???", "ChannelState": "99"},
        {"Event": "Newstate", "Uniqueid": "3.3", "Linkedid": "9.9", "ChannelState": "5"},
        {"Event": "CoreShowChannel", "Uniqueid": "4.4", "Channel": "PJSIP/101-00000001", "Duration": "zz"},
    ]
    for fields in junk:
        tracker.feed(AmiMessage(dict(fields)), pbx.now)
    trunk = pbx.trunk_in("7916", "5552001")
    pbx.hangup(trunk)
    pbx.hangup(trunk)  # a duplicate Hangup
    pbx.send("Newstate", ("", trunk))  # an event after the end
    assert tracker.stats.handler_errors == 0
    assert [e.kind for e in pbx.events if e.call_id == trunk.linkedid] == ["started", "ended"]
    tracker.restart(pbx.now)
    assert tracker.sizes() == dict.fromkeys(tracker.sizes(), 0)


# ---- random input -----------------------------------------------------------------------------------------------

_EVENTS = ["Newchannel", "Newstate", "Hangup", "HangupRequest", "DialBegin", "DialEnd", "BridgeEnter",
           "BridgeLeave", "BridgeDestroy", "LocalBridge", "AgentCalled", "AgentConnect", "AgentRingNoAnswer",
           "BlindTransfer", "AttendedTransfer", "VarSet", "Newexten", "MixMonitorStart", "OriginateResponse",
           "NewCallerid", "AgentDump", "Cdr"]
_NAMES = ["PJSIP/provider-00000001", "PJSIP/101-00000002", "PJSIP/102-00000003", "Local/103@from-queue-00000004;1",
          "Local/103@from-queue-00000004;2", "Local/104@from-internal-00000005;1", "PJSIP/fpbx-trunk-00000006",
          "Announcer/x", "SIP/odd", "DAHDI/i1/7916-1"]
_IDS = ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6"]


@st.composite
def ami_events(draw: st.DrawFn) -> dict[str, str]:
    fields = {"Event": draw(st.sampled_from(_EVENTS))}
    for prefix in draw(st.lists(st.sampled_from(["", "Dest", "LocalOne", "LocalTwo", "Transferer", "Transferee",
                                                 "OrigTransferer", "TransferTarget"]), max_size=2, unique=True)):
        fields[prefix + "Channel"] = draw(st.sampled_from(_NAMES))
        fields[prefix + "Uniqueid"] = draw(st.sampled_from(_IDS))
        fields[prefix + "Linkedid"] = draw(st.sampled_from(_IDS))
        fields[prefix + "ChannelState"] = draw(st.sampled_from(["0", "4", "5", "6", "x"]))
        fields[prefix + "Context"] = draw(st.sampled_from(["from-pstn", "from-internal", "from-queue", ""]))
        fields[prefix + "Exten"] = draw(st.sampled_from(["s", "5551000", "102", "79161234567", ""]))
        fields[prefix + "CallerIDNum"] = draw(st.sampled_from(["<unknown>", "7916", "101"]))
    optional = {
        "BridgeUniqueid": st.sampled_from(["b1", "b2"]), "SwapUniqueid": st.sampled_from(_IDS),
        "DialStatus": st.sampled_from(["ANSWER", "BUSY", "NOANSWER", "CANCEL", "CHANUNAVAIL", "??"]),
        "Cause": st.sampled_from(["16", "17", "21", "26", "0", "zz"]), "Result": st.just("Success"),
        "Variable": st.sampled_from(["__FROM_DID", "MIXMONITOR_FILENAME", "B24_CALL_ID", "DIALSTATUS", "X"]),
        "Value": st.sampled_from(["5551000", "/m/a.wav", "crm-1", "BUSY", ""]),
        "Interface": st.sampled_from(["Local/103@from-queue/n", "PJSIP/102", "bad"]),
        "Response": st.sampled_from(["Success", "Failure"]), "ActionID": st.sampled_from(["a1", "a2"]),
        "Reason": st.sampled_from(["0", "3", "x"]), "Application": st.sampled_from(["MixMonitor", "Dial"]),
        "AppData": st.sampled_from(["/m/b.wav,b", ""]), "Timestamp": st.sampled_from(["", "nan", "1e300", "5.5"]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(strategy)
    return fields


_SNAPSHOT = st.lists(st.fixed_dictionaries({
    "Event": st.just("CoreShowChannel"), "Channel": st.sampled_from(_NAMES), "Uniqueid": st.sampled_from(_IDS),
    "Linkedid": st.sampled_from(_IDS), "ChannelState": st.sampled_from(["4", "5", "6"]),
    "Context": st.sampled_from(["from-pstn", "from-internal"]), "Exten": st.sampled_from(["s", "5551000"]),
    "BridgeId": st.sampled_from(["", "b1", "b2"]), "Duration": st.sampled_from(["00:00:07", "bad"]),
}), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ami_events(), st.floats(min_value=0, max_value=5)), max_size=40), st.booleans(),
       st.one_of(st.none(), _SNAPSHOT))
def test_random_events_never_raise_and_restart_ends_every_started_call_once(
        steps: list[tuple[dict[str, str], float]], with_originate: bool, snapshot: list[dict[str, str]] | None,
) -> None:
    tracker = CallTracker(Classifier())
    events: list[CallEvent] = []
    now = T0
    if with_originate:
        tracker.note_originate("a1", request(), now)
    for index, (fields, dt) in enumerate(steps):
        now += dt
        events.extend(tracker.feed(AmiMessage(fields), now))
        if snapshot is not None and index == len(steps) // 2:  # a reconnect in the middle
            events.extend(tracker.resync([AmiMessage(dict(item)) for item in snapshot], now))
    events.extend(tracker.restart(now + 1))
    assert tracker.stats.handler_errors == 0
    started: dict[str, int] = defaultdict(int)
    ended: dict[str, int] = defaultdict(int)
    for event in events:
        if isinstance(event, CallStarted):
            assert ended[event.call_id] == 0
            started[event.call_id] += 1
        elif isinstance(event, CallEnded):
            assert started[event.call_id] == 1, "ended only after started"
            ended[event.call_id] += 1
        else:
            assert started[event.call_id] == 1 and ended[event.call_id] == 0, f"{event.kind} outside its call"
    assert started == ended and all(n == 1 for n in started.values())
    assert len(tracker) == 0 and tracker.sizes() == dict.fromkeys(tracker.sizes(), 0)
