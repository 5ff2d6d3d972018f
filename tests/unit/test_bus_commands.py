"""The MQTT bus without a broker: topic escaping, command/ack codec, repeats, backoff, pending queue, receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.bus.commands import (
    CommandAck,
    RecentIds,
    decode_ack,
    decode_command,
    encode_ack,
    encode_command,
    new_command,
)
from bridge.bus.counters import BusCounters
from bridge.bus.errors import CommandFormatError, RemoteOriginateError
from bridge.bus.mqtt import backoff_delay
from bridge.bus.pending import PendingCommand, PendingCommands
from bridge.bus.receiver import CommandReceiver
from bridge.bus.topics import decode_level, encode_level, event_topic
from bridge.errors import OriginateError
from bridge.model import OriginateRequest

REQUEST = OriginateRequest(request_id="r-1", extension="250", number="+74951234567", crm_call_id="externalCall.1",
                           caller_id_name="Иван Петров", timeout_seconds=45)


@pytest.mark.parametrize(("call_id", "level"), [
    ("1712345678.101", "1712345678.101"),
    ("a/b", "a%2Fb"),
    ("+#", "%2B%23"),
    ("100%", "100%25"),
    ("x\x00y\n", "x%00y%0A"),
    ("звонок", "звонок"),
])
def test_call_ids_become_one_safe_topic_level(call_id: str, level: str) -> None:
    assert encode_level(call_id) == level
    assert decode_level(level) == call_id


def test_event_topic_layout() -> None:
    assert event_topic("b24bridge", "pbx1", "a/b", "ended") == "b24bridge/pbx1/calls/a%2Fb/ended"


@given(st.text())
def test_any_call_id_round_trips_and_never_opens_a_level_or_wildcard(call_id: str) -> None:
    level = encode_level(call_id)
    assert not set(level) & set("/+#\x00")
    level.encode("utf-8")  # always valid UTF-8 (lone surrogates are encoded too)
    assert decode_level(level) == call_id


def test_command_round_trip_keeps_every_field() -> None:
    command = new_command(REQUEST, origin="pbx1", now=1000.0, ttl=60.0)
    decoded = decode_command(encode_command(command))
    assert decoded == command
    assert decoded.request == REQUEST
    assert not decoded.expired(1060.0)
    assert decoded.expired(1060.5)


def test_commands_get_unique_ids() -> None:
    assert len({new_command(REQUEST, origin="pbx1", now=0, ttl=1).id for _ in range(100)}) == 100


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = json.loads(encode_command(new_command(REQUEST, origin="pbx1", now=1000.0, ttl=60.0)))
    body.update(changes)
    return body


@pytest.mark.parametrize("payload", [
    b"", b"{", b"\xff", b"[]", b"1", b"{}", b"[" * 10000, b" " * 20000,
    json.dumps(_body(id="short")).encode(),
    json.dumps(_body(id="x" * 100)).encode(),
    json.dumps(_body(type=None)).encode(),
    json.dumps(_body(request=[1])).encode(),
    json.dumps(_body(sent_at="now")).encode(),
    json.dumps(_body(sent_at=True)).encode(),
    json.dumps(_body(expires_at=10**400)).encode(),
    json.dumps(_body(v=2)).encode(),
    json.dumps(_body(request={**_body()["request"], "number": "+"})).encode(),  # type: ignore[dict-item]
    json.dumps(_body(request={**_body()["request"], "number": "٤٥٦"})).encode(),  # type: ignore[dict-item]
    json.dumps(_body(request={**_body()["request"], "caller_id_name": "\ud800"})).encode(),  # type: ignore[dict-item]
    json.dumps(_body(request={**_body()["request"], "timeout_seconds": 4})).encode(),  # type: ignore[dict-item]
])
def test_malformed_commands_raise_only_command_format_error(payload: bytes) -> None:
    with pytest.raises(CommandFormatError):
        decode_command(payload)


def test_a_readable_id_is_kept_for_the_rejection_receipt() -> None:
    body = _body(request={**_body()["request"], "number": "1; Action: Hangup"})  # type: ignore[dict-item]
    with pytest.raises(CommandFormatError) as info:
        decode_command(json.dumps(body).encode())
    assert info.value.command_id == body["id"]
    assert info.value.origin == "pbx1"


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    body = _body(extra={"x": 1})
    assert decode_command(json.dumps(body).encode()).request == REQUEST


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(payload: bytes) -> None:
    for decode in (decode_command, decode_ack):
        with contextlib.suppress(CommandFormatError):
            decode(payload)


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_request_never_raises_anything_else(request: object) -> None:
    with contextlib.suppress(CommandFormatError):
        decode_command(json.dumps(_body(request=request)).encode())


def test_ack_round_trip_and_checks() -> None:
    ack = CommandAck(id="a" * 32, site="pbx2", status="rejected", reason="number is malformed")
    assert decode_ack(encode_ack(ack)) == ack
    ok = CommandAck(id="b" * 32, site="pbx2", status="accepted")
    assert decode_ack(encode_ack(ok)) == ok
    for bad in ({"id": "a" * 32, "site": "pbx2", "status": "maybe"},
                {"id": "a" * 32, "site": "p/x", "status": "accepted"},
                {"id": 1, "site": "pbx2", "status": "accepted"}):
        with pytest.raises(CommandFormatError):
            decode_ack(json.dumps(bad).encode())


def test_recent_ids_drop_repeats_for_their_ttl_then_forget() -> None:
    recent = RecentIds(ttl=60.0, max_size=3)
    assert not recent.seen_before("a", now=0.0)
    assert recent.seen_before("a", now=30.0)
    assert not recent.seen_before("a", now=61.0)  # forgotten after the ttl, recorded again
    for cid in ("b", "c", "d"):
        recent.seen_before(cid, now=62.0)
    assert len(recent) == 3  # bounded: the oldest ("a") went first
    assert not recent.seen_before("a", now=62.0)
    with pytest.raises(ValueError):
        RecentIds(ttl=0)


def test_backoff_grows_is_capped_and_jittered() -> None:
    assert backoff_delay(1, 0.5, 30.0, rand=lambda: 1.0) == 0.5
    assert backoff_delay(4, 0.5, 30.0, rand=lambda: 1.0) == 4.0
    assert backoff_delay(100, 0.5, 30.0, rand=lambda: 1.0) == 30.0
    assert backoff_delay(100, 0.5, 30.0, rand=lambda: 0.0) == 15.0
    assert backoff_delay(0, 0.5, 30.0, rand=lambda: 1.0) == 0.5


async def test_pending_commands_settle_by_receipt_from_the_right_site_only() -> None:
    failed: list[tuple[PendingCommand, str]] = []
    pending = PendingCommands(max_size=2, deadline=60.0, on_failed=lambda p, r: failed.append((p, r)))
    one = new_command(REQUEST, origin="pbx1", now=0, ttl=120)
    two = new_command(REQUEST, origin="pbx1", now=0, ttl=120)
    fut_one = pending.add(one, site="pbx2", topic="t", payload=b"1")
    fut_two = pending.add(two, site="pbx2", topic="t", payload=b"2")
    with pytest.raises(RemoteOriginateError, match="queue"):
        _ = pending.add(new_command(REQUEST, origin="pbx1", now=0, ttl=120), site="pbx2", topic="t", payload=b"3")

    assert [p.payload for p in pending.due(now=0.0, retry=3.0)] == [b"1", b"2"]
    for p in pending.due(now=0.0, retry=3.0):
        p.last_sent = 0.0
    assert pending.due(now=1.0, retry=3.0) == []
    assert pending.next_due_in(now=1.0, retry=3.0) == 2.0
    pending.connection_lost()
    assert len(pending.due(now=1.0, retry=3.0)) == 2

    assert pending.settle(CommandAck(id=one.id, site="pbx3", status="accepted")) is None  # wrong site
    assert pending.settle(CommandAck(id=one.id, site="pbx2", status="accepted")) is not None
    assert fut_one.result() is None
    assert pending.settle(CommandAck(id=two.id, site="pbx2", status="rejected", reason="bad number")) is not None
    with pytest.raises(RemoteOriginateError) as info:
        fut_two.result()
    assert isinstance(info.value, OriginateError)
    assert info.value.reason == "bad number"
    assert [r for _, r in failed] == ["bad number"]
    assert len(pending) == 0


async def test_pending_command_fails_at_its_deadline() -> None:
    failed: list[str] = []
    pending = PendingCommands(max_size=5, deadline=0.01, on_failed=lambda p, r: failed.append(r))
    future = pending.add(new_command(REQUEST, origin="pbx1", now=0, ttl=120), site="pbx2", topic="t", payload=b"")
    with pytest.raises(RemoteOriginateError, match="within"):
        await asyncio.wait_for(future, 5)
    assert len(pending) == 0
    assert len(failed) == 1


class Receipts:
    def __init__(self) -> None:
        self.sent: list[tuple[str, CommandAck]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, decode_ack(payload)))


async def test_receiver_runs_each_command_once_and_always_answers() -> None:
    got: list[OriginateRequest] = []
    started = asyncio.Event()

    async def on_originate(req: OriginateRequest) -> None:
        got.append(req)
        started.set()
        if req.extension == "boom":
            raise RuntimeError("PBX adapter bug")

    counters = BusCounters()
    now = [1000.0]
    receiver = CommandReceiver(prefix="p", pbx_id="pbx2", on_originate=on_originate, counters=counters,
                               dedup_seconds=600, wall_clock=lambda: now[0], monotonic=lambda: now[0])
    receipts = Receipts()
    command = new_command(REQUEST, origin="pbx1", now=now[0], ttl=60)
    await receiver.handle(encode_command(command), retained=False, publish=receipts.publish)
    await receiver.handle(encode_command(command), retained=False, publish=receipts.publish)  # a resend
    await asyncio.wait_for(started.wait(), 5)
    assert got == [REQUEST]
    assert receipts.sent == [("p/pbx1/commands/ack", CommandAck(id=command.id, site="pbx2", status="accepted"))] * 2
    assert counters.commands_duplicate == 1

    failing = new_command(OriginateRequest(request_id="r-2", extension="boom", number="+1"), origin="pbx1",
                          now=now[0], ttl=60)
    await receiver.handle(encode_command(failing), retained=False, publish=receipts.publish)
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0)
    assert len(got) == 2  # the handler's error was logged, not raised into the receiver

    now[0] += 120  # past the ttl of a fresh command sent at the old time
    stale = new_command(REQUEST, origin="pbx1", now=now[0] - 120, ttl=60)
    await receiver.handle(encode_command(stale), retained=False, publish=receipts.publish)
    await receiver.handle(encode_command(new_command(REQUEST, origin="pbx1", now=now[0], ttl=60)), retained=True,
                          publish=receipts.publish)
    assert receipts.sent[-1][1].status == "rejected"
    assert "expired" in (receipts.sent[-1][1].reason or "")
    assert counters.commands_expired == 1
    assert counters.commands_malformed == 1  # the retained one (no receipt: it is refused before reading its id)
    assert counters.commands_received == 5
    assert len(got) == 2
    await receiver.aclose()
