"""The AMI simulator over real TCP: exact replay, event classes, CoreShowChannels/Status, Originate outcomes,
re-identified synthetic calls and load, restarts."""

from __future__ import annotations

import asyncio
import re

import pytest

from bridge.pbx.asterisk.items import Disconnected, Received, Reconnected
from bridge.pbx.asterisk.protocol import AmiMessage, AmiParser
from bridge.sim.ami import AmiSimulator, serve_forever
from bridge.sim.ami_traces import default_fixtures_dir, load_trace, synthesize
from tests.integration.conftest_ami import FIXTURES, Collector, RawAmi, make_conn, markers, sim
from tests.integration.conftest_ami import events as events_of

__all__ = ["sim"]  # the fixture, re-exported so pytest finds it


def _parse(raws: list[bytes]) -> list[AmiMessage]:
    parser = AmiParser()
    return [m for raw in raws for m in parser.feed(raw)]


async def test_play_trace_sends_the_recorded_bytes_exactly(sim: AmiSimulator) -> None:
    raw = await RawAmi.open(sim.port)
    assert raw.banner == "Asterisk Call Manager/11.0.0"
    await raw.login()
    booted = await raw.read_message()
    assert booted.event == "FullyBooted"
    trace = load_trace("inbound_answered", FIXTURES)
    body = b"".join(frame.raw for frame in trace.call_frames())
    sent = await sim.play_trace("inbound_answered", speed=0)
    received = await asyncio.wait_for(raw.reader.readexactly(len(body)), 2)
    assert received == body
    assert sent == len(trace.frames) - 2  # the recording session's FullyBooted and SuccessfulAuth are not replayed
    await raw.close()


async def test_event_mask_filters_by_privilege_class(sim: AmiSimulator) -> None:
    raw = await RawAmi.open(sim.port)
    await raw.login(events="call")
    await sim.play_trace("inbound_busy", speed=0)
    await sim.emit([("Event", "UserEvent"), ("Privilege", "call,all"), ("UserEvent", "end")])
    got: list[AmiMessage] = []
    while not got or got[-1].get("UserEvent") != "end":
        got.append(await raw.read_message())
    frames = _parse([f.raw for f in load_trace("inbound_busy", FIXTURES).call_frames()])
    expected = [m.event for m in frames if "call" in (m.get("Privilege") or "").split(",")]
    assert [m.event for m in got[:-1]] == expected
    assert "Cdr" not in expected and any(m.event == "Cdr" for m in frames)  # the filter really removed something
    await raw.close()


async def test_actions_before_login_unknown_actions_and_logoff(sim: AmiSimulator) -> None:
    raw = await RawAmi.open(sim.port)
    denied = await raw.request("CoreShowChannels", [("ActionID", "a1")])
    assert (denied.response, denied.get("Message"), denied.action_id) == ("Error", "Permission denied", "a1")
    bad = await raw.request("Login", [("ActionID", "a2"), ("Username", "bridge"), ("Secret", "nope")])
    assert (bad.response, bad.get("Message")) == ("Error", "Authentication failed")
    assert await raw.reader.read() == b""  # the server hangs up after a failed login, as Asterisk does
    raw = await RawAmi.open(sim.port)
    await raw.login(events="off")
    unknown = await raw.request("FlyToTheMoon", [("ActionID", "a3")])
    assert (unknown.response, unknown.get("Message")) == ("Error", "Invalid/unknown command")
    events = await raw.request("Events", [("ActionID", "a4"), ("EventMask", "off")])
    assert events.get("Events") == "Off"
    bye = await raw.request("Logoff", [("ActionID", "a5")])
    assert bye.response == "Goodbye"
    assert await raw.reader.read() == b""
    assert [a.name for a in sim.actions] == ["CoreShowChannels", "Login", "Login", "FlyToTheMoon", "Events",
                                             "Logoff"]


async def test_core_show_channels_and_status_follow_what_was_emitted(sim: AmiSimulator) -> None:
    script = synthesize("recorded", call_no=11, fixtures_dir=FIXTURES)
    messages = _parse([raw for _, raw in script])
    answered = next(i for i, m in enumerate(messages) if m.event == "BridgeEnter" and
                    sum(x.event == "BridgeEnter" for x in messages[:i + 1]) == 2)
    live: dict[str, AmiMessage] = {}
    for m in messages[:answered + 1]:
        if m.event == "Newchannel":
            live[m.get("Uniqueid") or ""] = m
        elif m.event == "Hangup":
            live.pop(m.get("Uniqueid") or "", None)
    bridge_id = messages[answered].get("BridgeUniqueid")
    conn = make_conn(sim, events="off")
    async with conn:
        await conn.wait_connected(2)
        await sim.play(script[:answered + 1], speed=0)
        items = await conn.send_list_action("CoreShowChannels")
        assert sorted(m.get("Uniqueid") or "" for m in items) == sorted(live)
        for item in items:
            assert item.get("Channel") == live[item.get("Uniqueid") or ""].get("Channel")
            assert item.get("BridgeId") == bridge_id  # both legs talk at this point
            assert item.get("ChannelState") == "6"
            assert re.fullmatch(r"\d\d:\d\d:\d\d", item.get("Duration") or "")
        some = items[0]
        status = await conn.send_list_action("Status", {"Channel": some.get("Channel") or "",
                                                        "Variables": "MIXMONITOR_FILENAME,NOPE"})
        assert [m.event for m in status] == ["Status"]
        variables = status[0].variables("Variable")
        assert set(variables) == {"MIXMONITOR_FILENAME", "NOPE"} and variables["NOPE"] == ""
        await sim.play(script[answered + 1:], speed=0)
        assert await conn.send_list_action("CoreShowChannels") == []
        assert len(sim.channels) == 0


@pytest.mark.parametrize("channel", ["Local/101@from-internal", "PJSIP/101"])
@pytest.mark.parametrize("outcome", ["answered", "agent_no_answer", "customer_busy", "failed"])
async def test_originate_outcomes(sim: AmiSimulator, channel: str, outcome: str) -> None:
    sim.originate_speed = 0  # play the whole outcome at once
    sim.next_originate_outcome = outcome  # type: ignore[assignment]
    channel_id = None if outcome == "failed" else f"c2c-{outcome}"
    headers = [("Channel", channel), ("Context", "from-internal"), ("Exten", "89035551234"), ("Priority", "1"),
               ("Variable", "__B24_CALL_ID=externalCall.test.42")]
    if channel_id:
        headers.append(("ChannelId", channel_id))
    conn = make_conn(sim)
    async with conn, Collector(conn) as collector:
        await conn.wait_connected(2)
        reply = await conn.send_action("Originate", headers)
        assert reply.get("Message") == "Originate successfully queued"
        response = await collector.wait_event(lambda m: m.event == "OriginateResponse")
        await sim.wait_idle(5)
        await collector.wait_for(lambda items: len(events_of(items)) == sim.stats.frames_emitted)
    assert sim.next_originate_outcome is None  # one-shot
    assert response.action_id == reply.action_id
    events = collector.events()
    assert len(sim.channels) == 0  # every channel the outcome created was hung up again
    created = [m for m in events if m.event == "Newchannel"]
    reason = response.get("Reason")
    if outcome == "failed":
        assert (response.response, reason, response.get("Uniqueid")) == ("Failure", "0", "<unknown>")
        assert created == []
        return
    assert created[0].get("Uniqueid") == channel_id
    assert all(m.get("Linkedid") == channel_id for m in created)
    assert any(m.event == "VarSet" and m.get("Value") == "externalCall.test.42" for m in events)
    agent_legs = [m for m in created if (m.get("Channel") or "").startswith("PJSIP/101-")]
    assert len(agent_legs) == 1
    assert not any("0123456789abcdef" in (m.get("Value") or "") for m in events)  # the template's id is gone
    if outcome == "answered":
        assert (response.response, reason) == ("Success", "4")
        assert response.get("Exten") == "89035551234"
        assert any(m.event == "BridgeEnter" for m in events)
        values = [v for m in events if m.event != "OriginateResponse" for v in m.headers.values()]
        assert any("9035551234" in v for v in values)  # the customer number reached the dial plan and trunk
        assert not any(old in v for v in values for old in ("9162220005", "9162220004"))  # template's number
    elif outcome == "agent_no_answer":
        assert (response.response, reason) == ("Failure", "3")
        hangup = next(m for m in events if m.event == "Hangup" and m.get("Uniqueid") == agent_legs[0].get("Uniqueid"))
        assert hangup.get("Cause") == "19"
        assert not any(m.event == "BridgeEnter" for m in events)
    else:
        assert (response.response, reason) == ("Success", "4")
        assert any(m.event == "DialEnd" and m.get("DialStatus") == "BUSY" for m in events)
        trunk = next(m for m in created if (m.get("Channel") or "").startswith("PJSIP/provider-"))
        hangup = next(m for m in events if m.event == "Hangup" and m.get("Uniqueid") == trunk.get("Uniqueid"))
        assert hangup.get("Cause") == "17"


async def test_originate_refusals(sim: AmiSimulator) -> None:
    raw = await RawAmi.open(sim.port)
    await raw.login(events="off")
    sync = await raw.request("Originate", [("ActionID", "o1"), ("Channel", "PJSIP/101"), ("Exten", "1"),
                                           ("Context", "from-internal"), ("Priority", "1")])
    assert sync.response == "Error"
    invalid = await raw.request("Originate", [("ActionID", "o2"), ("Channel", "nonsense"), ("Async", "true")])
    assert (invalid.response, invalid.get("Message")) == ("Error", "Invalid channel")
    first = await sim.wait_for_action("Originate", 1)
    second = await sim.wait_for_action("Originate", 1)
    assert (first.get("ActionID"), second.get("ActionID")) == ("o1", "o2")
    with pytest.raises(TimeoutError):
        await sim.wait_for_action("Originate", 0.05)
    await raw.close()


def test_synthesized_copies_never_share_identities() -> None:
    trace = load_trace("inbound_queue", FIXTURES)
    original = b"".join(f.raw for f in trace.call_frames())
    one = b"".join(raw for _, raw in synthesize("inbound_queue", call_no=1, fixtures_dir=FIXTURES))
    two = b"".join(raw for _, raw in synthesize("inbound_queue", call_no=2, fixtures_dir=FIXTURES, caller="79990001122",
                                                did="5557777", agent="555"))

    def identities(data: bytes) -> set[bytes]:
        ids = set(re.findall(rb"(?:Uniqueid|Linkedid): (\S+)", data))
        ids |= set(re.findall(rb"Channel: (\S+)", data))
        ids |= set(re.findall(rb"BridgeUniqueid: (\S+)", data))
        return ids

    a, b, o = identities(one), identities(two), identities(original)
    assert a and b
    assert not a & b and not a & o and not b & o
    assert len(_parse([one])) == len(_parse([original])) == len(trace.call_frames())
    call = trace.primary_call()
    for old, new in ((call["customer_number"], "79990001122"), (call["did"], "5557777")):
        assert old.encode() not in two and new.encode() in two
    assert b"PJSIP/555-" in two and b"Agent 555" not in original
    delays = [d for d, _ in synthesize("inbound_queue", call_no=3, fixtures_dir=FIXTURES)]
    assert min(delays) >= 0 and sum(delays) == pytest.approx(trace.call_frames()[-1].t - trace.call_frames()[0].t)
    with pytest.raises(ValueError, match="did"):
        synthesize("internal_call", call_no=4, fixtures_dir=FIXTURES, did="1")


async def test_run_load_overlaps_distinct_calls(sim: AmiSimulator) -> None:
    conn = make_conn(sim)
    async with conn, Collector(conn) as collector:
        await conn.wait_connected(2)
        started = await sim.run_load(calls=6, rate=0, templates=["inbound_answered", "outbound_answered"], speed=0)
        await collector.wait_for(lambda items: len(events_of(items)) == sim.stats.frames_emitted)
    assert started == 6 == sim.stats.calls_started
    events = collector.events()
    linked = {m.get("Linkedid") for m in events if m.event == "Newchannel"}
    assert len(linked) == 6
    numbers = {n for m in events for v in m.headers.values() for n in re.findall(r"(?<!\d)79\d{9}(?!\d)", v)}
    assert numbers == {f"79{n:09d}" for n in range(1, 7)}  # each copy has its own customer, none kept the original
    assert len(sim.channels) == 0
    assert sim.stats.failed_tasks == []


async def test_replayed_shutdown_ends_sessions_and_next_login_sees_a_fresh_boot(sim: AmiSimulator) -> None:
    conn = make_conn(sim)
    async with conn, Collector(conn) as collector:
        await conn.wait_connected(2)
        await sim.play_trace("asterisk_restart", speed=0)
        await collector.wait_for(lambda items: markers(items) == ["Reconnected", "Disconnected", "Reconnected"])
    last_event = collector.events()[-1]
    assert last_event.event == "Shutdown"
    reconnected = [i for i in collector.items if isinstance(i, Reconnected)][-1]
    assert reconnected.fully_booted is not None and reconnected.fully_booted.get("Uptime") == "0"
    assert any(isinstance(i, Disconnected) for i in collector.items)
    assert len(sim.channels) == 0  # the restart forgot the call that was up


async def test_events_reach_every_logged_in_session(sim: AmiSimulator) -> None:
    first, second, quiet = await RawAmi.open(sim.port), await RawAmi.open(sim.port), await RawAmi.open(sim.port)
    for raw in (first, second):
        await raw.login()
        assert (await raw.read_message()).event == "FullyBooted"
    await quiet.login(events="off")
    assert sim.sessions == 3
    await sim.emit([("Event", "UserEvent"), ("Privilege", "user,all"), ("UserEvent", "hello")])
    for raw in (first, second):
        assert (await raw.read_message()).get("UserEvent") == "hello"
    with pytest.raises(TimeoutError):
        await quiet.read_message(timeout=0.05)
    for raw in (first, second, quiet):
        await raw.close()


async def test_received_items_carry_arrival_time(sim: AmiSimulator) -> None:
    conn = make_conn(sim)
    async with conn, Collector(conn) as collector:
        await conn.wait_connected(2)
        await sim.emit([("Event", "UserEvent"), ("Privilege", "user,all"), ("UserEvent", "t")])
        await collector.wait_for(lambda items: any(isinstance(i, Received) for i in items))
    item = next(i for i in collector.items if isinstance(i, Received))
    reconnected = collector.items[0]
    assert isinstance(reconnected, Reconnected)
    assert item.at >= reconnected.at


def test_default_fixtures_dir_and_unknown_trace() -> None:
    assert default_fixtures_dir() == FIXTURES
    with pytest.raises(FileNotFoundError):
        load_trace("no_such_trace", FIXTURES)


async def test_serve_forever_runs_load_until_triggered() -> None:
    stop = asyncio.Event()
    server = asyncio.create_task(serve_forever(port=0, load_rate=50.0, templates=["inbound_busy"], speed=0,
                                               fixtures_dir=FIXTURES, shutdown_trigger=stop.wait()))
    await asyncio.sleep(0.05)
    assert not server.done()
    stop.set()
    await asyncio.wait_for(server, 2)
