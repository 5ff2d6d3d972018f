"""The AMI side fails: the link drops mid-call, Asterisk restarts, the consumer of events stalls.

After a drop the bridge logs in again and resynchronises (CoreShowChannels), after a restart (FullyBooted with
`Uptime: 0`) it closes every call Asterisk forgot. Judged by the portal's record: every registered call is finished
(no card left open), nothing is registered that the PBX never had, calls after the fault are all there. Calls that
started and ended entirely while the link was down cannot be known to anybody (AMI has no history); they are the
only ones allowed to be missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from bridge.model import CallEnded, CallEvent
from bridge.pbx.asterisk.adapter import AsteriskAdapter
from bridge.pbx.asterisk.connection import AmiConnection
from bridge.pbx.asterisk.items import AmiItem, Received
from bridge.pbx.asterisk.protocol import encode_action
from bridge.sim.ami import AmiSimulator
from tests.fault.conftest import (
    AMI_SECRET,
    AMI_USER,
    FIXTURES,
    MIX,
    CallDriver,
    Daemon,
    PlayedCall,
    bridge_settings,
    check_portal,
    daemon_config,
    describe,
    free_port,
    outbox_empty,
    running_bridge,
    simulators,
    soak,
    toml_text,
    until,
)

MARGIN = 0.5  # seconds around a fault within which a call's fate depends on exact timing


async def _wait_logged_in(sim: AmiSimulator, since_sessions: int, timeout: float = 15.0) -> float:
    """Wait until the bridge logged in again after a fault; the time it did."""
    await until(lambda: sim.stats.sessions_served > since_sessions and sim.sessions >= 1, timeout,
                message="the bridge did not log in to the AMI again")
    return time.time()


# --------------------------------------------------------------------------------------------------- link dropped


async def _drop_scenario(tmp: Path, *, drops: int, gap: float, load_seconds: float, rate: float,
                         speed: float, settle_timeout: float) -> None:
    async with simulators(tmp, speed=speed) as stack, \
            running_bridge(bridge_settings(stack.ami, stack.portal, tmp)) as bridge:
        load = asyncio.create_task(stack.driver.for_seconds(load_seconds, rate))
        outages: list[tuple[float, float]] = []
        for _ in range(drops):
            await asyncio.sleep(gap)
            served = stack.ami.stats.sessions_served
            dropped_at = time.time()
            await stack.ami.drop_connections()
            outages.append((dropped_at, await _wait_logged_in(stack.ami, served)))
        await load

        def required(call: PlayedCall) -> bool:
            # A call is known for sure when it ran entirely outside every outage (with a margin).
            return all(call.ended is not None and (call.ended < start - MARGIN or call.started > end + MARGIN)
                       for start, end in outages)

        deadline = time.monotonic() + settle_timeout
        verdict = check_portal(stack.portal, stack.driver.calls, required=required)
        while time.monotonic() < deadline and (verdict.problems or not outbox_empty(bridge)):
            await asyncio.sleep(0.2)
            verdict = check_portal(stack.portal, stack.driver.calls, required=required)
        assert not verdict.problems, describe(verdict, bridge)
        assert stack.ami.stats.sessions_served >= 2 * (drops + 1)  # events + actions session after each drop
        # Each login was followed by a resync from the PBX's channel list (a lost link, not a restart).
        assert sum(a.name == "CoreShowChannels" for a in stack.ami.actions) >= drops + 1
        known = sum(1 for call in stack.driver.calls if required(call))
        assert known >= 5, f"only {known} calls ran outside the outages: the scenario demanded too little"
        # Every call the portal has is one the PBX really had, and none of them stays open.
        assert all(not c.live for c in stack.portal.calls.values())


async def test_ami_link_dropped_mid_calls(tmp_path: Path, quiet_logs: object) -> None:
    await _drop_scenario(tmp_path, drops=2, gap=1.5, load_seconds=6.0, rate=3.0, speed=6.0, settle_timeout=30.0)


@soak
async def test_ami_link_dropped_soak(tmp_path: Path, quiet_logs: object) -> None:
    """Calls at 5/s in real time for 60 s, the link cut every 6 s."""
    await _drop_scenario(tmp_path, drops=10, gap=6.0, load_seconds=60.0, rate=5.0, speed=1.0, settle_timeout=180.0)


# --------------------------------------------------------------------------------------------------- Asterisk restarted


async def _restart_scenario(tmp: Path, *, rounds: int, before: float, after: float, rate: float, speed: float,
                            settle_timeout: float) -> None:
    async with simulators(tmp, speed=speed) as stack, \
            running_bridge(bridge_settings(stack.ami, stack.portal, tmp)) as bridge:
        restarts: list[tuple[float, float]] = []
        for _ in range(rounds):
            load = asyncio.create_task(stack.driver.for_seconds(before, rate))
            await asyncio.sleep(before * 0.8)
            # Asterisk dies with calls up: their channels are gone, their hangups never come.
            load.cancel()
            await stack.driver.cancel_all()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            served = stack.ami.stats.sessions_served
            went_down = time.time()
            await stack.ami.restart(uptime=0)
            restarts.append((went_down, await _wait_logged_in(stack.ami, served)))
        await stack.driver.for_seconds(after, rate)

        cut = [c for c in stack.driver.calls if c.cut]
        assert cut, "no call was in progress when Asterisk restarted"

        def required(call: PlayedCall) -> bool:
            if call.cut:
                return False  # may not have rung anybody yet: then there is nothing to register
            return all(call.ended is not None and (call.ended < start - MARGIN or call.started > end + MARGIN)
                       for start, end in restarts)

        deadline = time.monotonic() + settle_timeout
        verdict = check_portal(stack.portal, stack.driver.calls, required=required)
        while time.monotonic() < deadline and (verdict.problems or not outbox_empty(bridge)):
            await asyncio.sleep(0.2)
            verdict = check_portal(stack.portal, stack.driver.calls, required=required)
        assert not verdict.problems, describe(verdict, bridge)
        # The cut calls that reached the portal were closed by the bridge, not left ringing forever.
        numbers = {c.number for c in cut}
        closed = [c for c in stack.portal.calls.values() if c.phone_number[-10:] in numbers]
        assert closed, "none of the calls cut by the restart had reached the portal: the test proves nothing"
        assert all(c.finish is not None for c in closed)
        assert bridge.adapter is not None and bridge.adapter.health().ok
        tracker = getattr(bridge.adapter, "tracker", None)
        assert tracker is not None and len(tracker) == 0, "calls stay open in the tracker after the restart"


async def test_asterisk_restart_closes_open_calls(tmp_path: Path, quiet_logs: object) -> None:
    await _restart_scenario(tmp_path, rounds=1, before=3.0, after=2.0, rate=3.0, speed=3.0, settle_timeout=30.0)


@soak
async def test_asterisk_restart_soak(tmp_path: Path, quiet_logs: object) -> None:
    """Six restarts, each with calls at 5/s in real time up to the moment Asterisk goes away."""
    await _restart_scenario(tmp_path, rounds=6, before=10.0, after=10.0, rate=5.0, speed=1.0, settle_timeout=180.0)


# --------------------------------------------------------------------------------------------------- stalled consumer


def _flood_frame(seq: int) -> bytes:
    return (f"Event: RTCPReceived\r\nPrivilege: reporting,all\r\nChannel: PJSIP/flood-{seq:08x}\r\n"
            f"Seq: {seq}\r\nPad: {'x' * 180}\r\n\r\n").encode()


async def _flood(sim: AmiSimulator, total_bytes: int, *, stop: asyncio.Event | None = None) -> int:
    """Write about `total_bytes` of events to every session; returns the frames sent."""
    seq = 0
    sent = 0
    while sent < total_bytes and not (stop is not None and stop.is_set()):
        chunk = b"".join(_flood_frame(seq + i) for i in range(256))
        seq += 256
        sent += len(chunk)
        await sim.send_raw(chunk)
    return seq


async def test_stalled_consumer_never_stops_the_reader(quiet_logs: object) -> None:
    """A consumer stuck on the first event does not stop the reading: the PBX never sees a slow reader.

    Control first: a client that logs in and stops reading is dropped by the simulator (as Asterisk drops a session
    whose writes block) after some amount of traffic. The same amount then goes to an `AmiConnection` whose only
    consumer is stuck; the simulator must keep that session, and a later event must still arrive.
    """
    async with AmiSimulator(AMI_USER, AMI_SECRET, fixtures_dir=FIXTURES, max_write_buffer=256 * 1024) as sim:
        _, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(encode_action("Login", [("Username", AMI_USER), ("Secret", AMI_SECRET), ("Events", "on")]))
        await writer.drain()
        await until(lambda: sim.sessions == 1, 5)
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(sim, 256 * 1024 * 1024, stop=stop))
        await until(lambda: sim.sessions == 0, 60, message="the simulator never dropped a client that stops reading")
        stop.set()
        control_frames = await flood
        writer.close()
        assert control_frames > 0

        conn = AmiConnection("127.0.0.1", sim.port, AMI_USER, AMI_SECRET, events="on", queue_size=1000,
                             ping_interval=30.0, reconnect_min=0.05, reconnect_max=0.2, fully_booted_timeout=0.5)
        stuck = asyncio.Event()
        release = asyncio.Event()
        seen: list[AmiItem] = []

        async def consume() -> None:
            async for item in conn.messages():
                seen.append(item)
                if not stuck.is_set():
                    stuck.set()
                    await release.wait()  # the tracker is blocked here, for as long as the flood lasts

        async with conn:
            await conn.wait_connected(5)
            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(stuck.wait(), 5)
            served = sim.stats.sessions_served
            sent = await _flood(sim, control_frames * len(_flood_frame(0)))
            await until(lambda: conn.events_received >= sent, 30,
                        message=lambda: f"the reader stopped: {conn.events_received} of {sent} events read")
            assert sim.sessions >= 1 and sim.stats.sessions_served == served, "the simulator dropped the session"
            assert conn.reconnects == 0
            assert conn.dropped_events > 0 and conn.health().extra["dropped_events"] == conn.dropped_events
            release.set()
            await sim.emit([("Event", "UserEvent"), ("Privilege", "user,all"), ("UserEvent", "after-the-stall")])
            await until(lambda: any(isinstance(i, Received) and i.message.get("UserEvent") == "after-the-stall"
                                    for i in seen), 10, message="events after the stall never arrived")
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer


async def test_stalled_pipeline_loses_no_call(tmp_path: Path, quiet_logs: object) -> None:
    """Nobody takes call events from the adapter for a while: the AMI session keeps reading, and once the consumer
    is back every call of the burst comes out, ended, exactly once."""
    async with simulators(tmp_path, speed=20.0) as stack:
        settings = bridge_settings(stack.ami, stack.portal, tmp_path, overrides={"ami": {"events": "on"}})
        adapter = AsteriskAdapter.from_settings(settings)
        async with adapter:
            await adapter.wait_connected(5)
            served = stack.ami.stats.sessions_served
            frames_before, read_before = stack.ami.stats.frames_emitted, adapter.connection.events_received
            driver = CallDriver(stack.ami, speed=20.0)
            await driver.burst(len(MIX), 10.0)
            sent = stack.ami.stats.frames_emitted - frames_before

            def read() -> int:
                return adapter.connection.events_received - read_before

            # Every event the PBX sent was read off the socket although nobody took a single call event yet.
            await until(lambda: read() == sent, 10,
                        message=lambda: f"the AMI reader stopped: {read()} of {sent} events read while the "
                                        "consumer stalled")
            assert stack.ami.stats.sessions_served == served and stack.ami.sessions >= 1
            ended: dict[str, CallEnded] = {}
            started: list[CallEvent] = []

            async def consume() -> None:
                async for event in adapter.events():
                    if isinstance(event, CallEnded):
                        assert event.call_id not in ended, f"{event.call_id} ended twice"
                        ended[event.call_id] = event
                    elif event.kind == "started":
                        started.append(event)

            consumer = asyncio.create_task(consume())
            numbers = {c.number for c in driver.calls if c.template != "internal_call"}
            await until(lambda: {(e.call.external_number or "")[-10:] for e in ended.values()} >= numbers, 10,
                        message=lambda: f"calls lost while the consumer stalled: {len(ended)} of {len(numbers)}")
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        assert len(started) == len(ended)


async def _paced_flood(sim: AmiSimulator, seconds: float, bytes_per_second: float) -> int:
    chunk = b"".join(_flood_frame(i) for i in range(256))
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await sim.send_raw(chunk)
        sent += len(chunk)
        await asyncio.sleep(len(chunk) / bytes_per_second)
    return sent


async def test_locked_store_does_not_stop_the_ami_reader(tmp_path: Path) -> None:
    """The pipeline stalls on a store another process has locked (an operator's `sqlite3` shell, a backup tool):
    the AMI sessions must keep reading. The daemon is a child process, so its frozen loop cannot freeze the PBX.

    Control first: the same 2 MB/s stream without the lock is read without trouble; then the write lock is held
    for 2.5 s while a call starts and the stream goes on.
    """
    async with simulators(tmp_path, speed=5.0) as stack:
        stack.ami.max_write_buffer = 256 * 1024  # Asterisk's writetimeout: a session that stops reading is dropped
        config = tmp_path / "config.toml"
        config.write_text(toml_text(daemon_config(stack.ami, stack.portal, tmp_path, http_port=free_port())))
        daemon = Daemon(config, tmp_path / "logs")
        await daemon.start()
        release = threading.Event()
        locked = threading.Event()

        def hold_write_lock() -> None:
            db = sqlite3.connect(tmp_path / "state" / "bridge.sqlite3", isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                locked.set()
                release.wait(10)
                db.execute("ROLLBACK")
            finally:
                db.close()

        holder = threading.Thread(target=hold_write_lock, name="fault.sqlite-lock")
        try:
            await until(lambda: stack.ami.sessions >= 2, 20, message="the daemon did not log in")
            served = stack.ami.stats.sessions_served
            await _paced_flood(stack.ami, 2.0, 2 * 1024 * 1024)
            assert stack.ami.stats.sessions_served == served, "without any lock the daemon cannot keep up: void test"
            holder.start()
            await until(locked.is_set, 5)
            call = stack.driver.start("inbound_answered")  # its first event must be written to the locked store
            await _paced_flood(stack.ami, 2.5, 2 * 1024 * 1024)
            release.set()
            await call
            await until(lambda: any(c.finish is not None for c in stack.portal.calls.values()), 20,
                        message="the call made during the lock never reached the portal")
        finally:
            release.set()
            if holder.is_alive():
                holder.join(10)
            code = await daemon.stop()
        assert code == 0, daemon.output()[-3000:]
        assert stack.ami.stats.sessions_served == served, (
            f"the PBX dropped the bridge's sessions while the store was locked "
            f"({stack.ami.stats.sessions_served - served} new logins)")
