"""An AMI server that behaves like Asterisk 22 toward our client: for tests, benchmarks and the demo.

It speaks the real wire format over TCP (banner, plain and MD5 login, Ping, Events, Logoff, CoreShowChannels,
Status, async Originate; anything else gets `Invalid/unknown command`) and serves any number of sessions. Traffic
comes from recorded traces: `play_trace` replays one byte-for-byte at a chosen speed, `play_synthetic`/`run_load`
replay re-identified copies (see `ami_traces`), and an Originate plays a scripted outcome (see `ami_originate`).
Everything emitted is also fed to a channel table, so CoreShowChannels answers with what is really alive.

Fault injection: `drop_connections()`, `mute_pings`, `send_raw()`, `restart()`, `refuse_logins`.
Every action received is kept in `actions` for assertions; `wait_for_action()` waits for the next one by name.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from bridge.pbx.asterisk.handshake import md5_key
from bridge.pbx.asterisk.protocol import TERMINATOR, AmiParser
from bridge.sim.ami_channels import ChannelTable
from bridge.sim.ami_frames import encode_frame, parse_frame
from bridge.sim.ami_originate import OriginateOutcome, OriginateSpec, originate_script
from bridge.sim.ami_session import RecordedAction, Replier, SimSession, event_classes
from bridge.sim.ami_traces import IdAllocator, load_trace, synthesize, with_delays

__all__ = ["DEFAULT_LOAD_TEMPLATES", "AmiSimulator", "RecordedAction", "serve", "serve_forever"]

log = structlog.get_logger(__name__)

BANNER = "Asterisk Call Manager/11.0.0"
# Single-call recordings that make a realistic mix for load generation.
DEFAULT_LOAD_TEMPLATES = ("inbound_answered", "inbound_missed", "inbound_busy", "inbound_queue", "recorded",
                          "outbound_answered", "outbound_noanswer", "fpbx_queue_local", "internal_call")
_Pairs = Sequence[tuple[str, str]]


@dataclass(slots=True)
class _Stats:
    frames_emitted: int = 0
    calls_started: int = 0
    sessions_served: int = 0
    failed_tasks: list[str] = field(default_factory=list)


class AmiSimulator:
    """Async context manager; `.port` is the bound port after entering. See the module docstring."""

    def __init__(
        self,
        username: str = "bridge",
        secret: str = "bridge-secret",  # noqa: S107 - the simulator's well-known test credential
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fixtures_dir: Path | None = None,
        banner: str = BANNER,
        originate_speed: float = 50.0,
        auth_failure_delay: float = 0.0,
        max_write_buffer: int = 32 * 1024 * 1024,
    ) -> None:
        self.username, self.secret, self.host, self.port, self.banner = username, secret, host, port, banner
        self.fixtures_dir = fixtures_dir
        self.originate_speed = originate_speed
        self.auth_failure_delay = auth_failure_delay
        self.max_write_buffer = max_write_buffer
        # Test knobs.
        self.mute_pings = False
        # Add `Timestamp:` headers carrying the recorded timeline (see play); off by default, like Asterisk.
        self.timestamps = False
        self.refuse_logins = False
        self.originate_outcome: OriginateOutcome = "answered"
        self.next_originate_outcome: OriginateOutcome | None = None
        self.list_item_delay = 0.0
        # Observations.
        self.actions: list[RecordedAction] = []
        self.channels = ChannelTable()
        self.stats = _Stats()
        self._sessions: dict[int, SimSession] = {}
        self._session_ids = itertools.count(1)
        self._call_no = itertools.count(1)
        self._cursors: dict[str, int] = {}
        self._new_action = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._entered = False
        self._booted = time.monotonic()
        self._tracker = AmiParser()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AmiSimulator:
        if self._entered:
            raise RuntimeError("AmiSimulator can be entered only once")
        self._entered = True
        self._server = await asyncio.start_server(self._serve_session, self.host, self.port, limit=1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ami_sim_listening", host=self.host, port=self.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def sessions(self) -> int:
        """Sessions currently logged in."""
        return sum(1 for session in self._sessions.values() if session.logged_in)

    @property
    def uptime(self) -> int:
        return int(time.monotonic() - self._booted)

    # ----------------------------------------------------------------- traffic

    async def play_trace(self, name_or_path: str | Path, speed: float = 100.0, *,
                         include_responses: bool = False) -> int:
        """Replay a recorded trace byte for byte; gaps are divided by `speed` (0 or inf: no waiting).

        The trace's own leading FullyBooted/SuccessfulAuth are skipped, and so are replies to the recording
        driver's actions unless `include_responses`. A Shutdown in the trace ends every session, as Asterisk does.
        Returns the number of frames sent.
        """
        frames = load_trace(name_or_path, self.fixtures_dir).call_frames(include_responses=include_responses)
        return await self.play(with_delays(frames, [frame.raw for frame in frames]), speed)

    async def play_synthetic(self, template: str | Path, *, speed: float = 100.0, caller: str | None = None,
                             did: str | None = None, agent: str | None = None) -> int:
        """Play a re-identified copy of a recorded call; returns the call number used for its ids."""
        call_no = next(self._call_no)
        script = synthesize(template, call_no=call_no, caller=caller, did=did, agent=agent,
                            fixtures_dir=self.fixtures_dir)
        self.stats.calls_started += 1
        await self.play(script, speed)
        return call_no

    async def run_load(self, calls: int | None = 100, rate: float = 10.0, templates: Sequence[str] | None = None,
                       *, speed: float = 1.0, vary_callers: bool = True) -> int:
        """Start `calls` synthetic calls (None: until cancelled) at `rate` per second and wait for them all.

        Each call is a re-identified template (round robin) with, when `vary_callers`, its own customer number.
        Returns how many calls were started.
        """
        names = list(templates or DEFAULT_LOAD_TEMPLATES)
        interval = 0.0 if rate <= 0 or math.isinf(rate) else 1.0 / rate
        running: set[asyncio.Task[None]] = set()
        started = 0
        try:
            for index in itertools.count() if calls is None else range(calls):
                name = names[index % len(names)]
                call_no = next(self._call_no)
                caller = f"79{call_no % 10**9:09d}" if vary_callers and _has_customer(name, self.fixtures_dir) else None
                script = synthesize(name, call_no=call_no, caller=caller, fixtures_dir=self.fixtures_dir)
                task = self._spawn(self.play(script, speed), f"ami-sim.call[{call_no}]")
                running.add(task)
                task.add_done_callback(running.discard)
                started += 1
                self.stats.calls_started += 1
                if interval:
                    await asyncio.sleep(interval)
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            for task in running:
                task.cancel()
        return started

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes (garbage, broken frames) to every logged-in session."""
        for session in list(self._sessions.values()):
            if session.logged_in:
                self._write(session, data)
        await asyncio.sleep(0)

    async def emit(self, pairs: _Pairs) -> None:
        """Send one event built from `pairs` (must start with `Event`)."""
        await self._emit(encode_frame(pairs))

    # ----------------------------------------------------------------- faults

    async def drop_connections(self) -> None:
        """Close every session abruptly (RST-like), as a crash or a network cut would."""
        for session in list(self._sessions.values()):
            session.closing = True
            transport = session.writer.transport
            transport.abort()
        self._sessions.clear()
        await asyncio.sleep(0)

    async def restart(self, uptime: int = 0) -> None:
        """Announce Shutdown, close all sessions, forget every channel; the next login sees `Uptime: <uptime>`."""
        await self._emit(encode_frame([("Event", "Shutdown"), ("Privilege", "system,all"), ("Shutdown", "Cleanly"),
                                       ("Restart", "True")]))
        await self._after_shutdown(uptime)

    async def _after_shutdown(self, uptime: int) -> None:
        for session in list(self._sessions.values()):
            session.closing = True
            session.writer.close()
        self._sessions.clear()
        self.channels.clear()
        self._booted = time.monotonic() - uptime
        await asyncio.sleep(0)

    # ----------------------------------------------------------------- assertions

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every background playback (originate outcomes, load calls) has finished."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_for_action(self, name: str, timeout: float = 5.0) -> RecordedAction:
        """The next action called `name` not yet returned by an earlier call (waits up to `timeout`)."""
        wanted = name.lower()
        async with asyncio.timeout(timeout), self._new_action:
            while True:
                start = self._cursors.get(wanted, 0)
                for index in range(start, len(self.actions)):
                    if self.actions[index].name.lower() == wanted:
                        self._cursors[wanted] = index + 1
                        return self.actions[index]
                self._cursors[wanted] = len(self.actions)
                await self._new_action.wait()

    # ----------------------------------------------------------------- emitting

    async def play(self, script: Sequence[tuple[float, bytes]], speed: float = 100.0) -> int:
        """Emit `(delay, frame)` pairs (delays divided by `speed`; 0 or inf: no waiting); returns frames sent."""
        loop = asyncio.get_running_loop()
        realtime = speed > 0 and not math.isinf(speed)
        start = loop.time()
        virtual_start = time.time()
        offset = 0.0
        sent = 0
        for delay, recorded in script:
            offset += delay
            raw = recorded
            if self.timestamps and raw.startswith(b"Event: ") and raw.endswith(TERMINATOR):
                # As with manager.conf `timestampevents = yes`: event times keep the recorded pace even when
                # delivery is compressed, so durations stay true in fast replays.
                raw = raw[:-2] + f"Timestamp: {virtual_start + offset:.6f}\r\n\r\n".encode()
            if realtime:
                wait = start + offset / speed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif sent % 64 == 0:
                await asyncio.sleep(0)
            await self._emit(raw)
            sent += 1
        return sent

    async def _emit(self, raw: bytes) -> None:
        privilege: frozenset[str] | None = None
        shutdown = False
        if raw.endswith(TERMINATOR):
            for message in self._tracker.feed(raw):
                self.channels.observe(message)
                classes = message.get("Privilege")
                if classes:
                    privilege = frozenset(part.strip().lower() for part in classes.split(",")) - {"all"}
                shutdown = shutdown or message.event == "Shutdown"
            self._tracker.drain_problems()
        for session in list(self._sessions.values()):
            if session.wants(privilege):
                self._write(session, raw)
        self.stats.frames_emitted += 1
        if shutdown:
            await self._after_shutdown(0)

    def _write(self, session: SimSession, data: bytes) -> None:
        transport = session.writer.transport
        if session.closing or transport.is_closing():
            return
        session.writer.write(data)
        if transport.get_write_buffer_size() > self.max_write_buffer:
            # Asterisk's writetimeout: a reader that does not keep up loses its session.
            log.warning("ami_sim_slow_reader_dropped", session=session.id)
            session.closing = True
            transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failed_tasks.append(f"{name}: {exc!r}")
                log.exception("ami_sim_task_failed", task=name)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- sessions

    async def _serve_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = SimSession(next(self._session_ids), writer)
        self._sessions[session.id] = session
        self.stats.sessions_served += 1
        try:
            writer.write(f"{self.banner}\r\n".encode())
            while not session.closing:
                try:
                    frame = await reader.readuntil(TERMINATOR)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                pairs = parse_frame(frame)
                if pairs:
                    await self._on_action(session, pairs)
        finally:
            self._sessions.pop(session.id, None)
            session.closing = True
            writer.close()

    async def _on_action(self, session: SimSession, pairs: _Pairs) -> None:
        action = RecordedAction(tuple(pairs), session.id, time.time())
        async with self._new_action:
            self.actions.append(action)
            self._new_action.notify_all()
        name = action.name.lower()
        reply = Replier(self._write, session, action.get("ActionID"))
        if not name:
            reply.error("Missing action in request")
        elif not session.logged_in and name not in ("login", "challenge", "logoff"):
            reply.error("Permission denied")
        elif name == "login":
            await self._login(session, action, reply)
        elif name == "challenge":
            if (action.get("AuthType") or "").lower() != "md5":
                reply.error("Must specify AuthType")
            else:
                session.challenge = str(secrets.randbelow(900_000_000) + 100_000_000)
                reply.send("Success", ("Challenge", session.challenge))
        elif name == "logoff":
            reply.send("Goodbye", ("Message", "Thanks for all the fish."))
            session.closing = True
        elif name == "ping":
            if not self.mute_pings:
                reply.send("Success", ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}"))
        elif name == "events":
            session.classes = event_classes(action.get("EventMask"))
            reply.send("Success", ("Events", "Off" if session.classes == frozenset() else "On"))
        elif name == "coreshowchannels":
            reply.send("Success", ("EventList", "start"), ("Message", "Channels will follow"))
            await self._send_list(session, self.channels.core_show_channels(action.get("ActionID")))
        elif name == "status":
            variables = [v.strip() for v in (action.get("Variables") or "").split(",") if v.strip()]
            reply.send("Success", ("EventList", "start"), ("Message", "Channel status will follow"))
            await self._send_list(session, self.channels.status(action.get("ActionID"), action.get("Channel"),
                                                                variables))
        elif name == "originate":
            self._originate(action, reply)
        else:
            reply.error("Invalid/unknown command")

    async def _login(self, session: SimSession, action: RecordedAction, reply: Replier) -> None:
        if (action.get("AuthType") or "").lower() == "md5":
            good = session.challenge is not None and action.get("Key") == md5_key(session.challenge, self.secret)
        else:
            good = action.get("Secret") == self.secret
        if self.refuse_logins or action.get("Username") != self.username or not good:
            if self.auth_failure_delay:
                await asyncio.sleep(self.auth_failure_delay)
            reply.error("Authentication failed")
            session.closing = True
            return
        session.logged_in = True
        session.classes = event_classes(action.get("Events"))
        reply.send("Success", ("Message", "Authentication accepted"))
        if session.wants(frozenset({"system"})):
            self._write(session, encode_frame([("Event", "FullyBooted"), ("Privilege", "system,all"),
                                               ("Uptime", str(self.uptime)), ("LastReload", str(self.uptime)),
                                               ("Status", "Fully Booted")]))

    async def _send_list(self, session: SimSession, frames: list[bytes]) -> None:
        for frame in frames:
            if self.list_item_delay:
                await asyncio.sleep(self.list_item_delay)
            self._write(session, frame)

    def _originate(self, action: RecordedAction, reply: Replier) -> None:
        spec = OriginateSpec.from_pairs(action.headers)
        if spec.target() is None:
            reply.error("Invalid channel")
            return
        if not spec.is_async:
            reply.error("Originate failed: the simulator only runs Async originates")
            return
        if spec.exten and not spec.context:
            reply.error("Context must be specified with Exten")
            return
        reply.send("Success", ("Message", "Originate successfully queued"))
        outcome = self.next_originate_outcome or self.originate_outcome
        self.next_originate_outcome = None
        call_no = next(self._call_no)
        script = originate_script(spec, outcome, IdAllocator(call_no), fixtures_dir=self.fixtures_dir)
        self.stats.calls_started += 1
        _ = self._spawn(self.play(script, self.originate_speed), f"ami-sim.originate[{call_no}]")


def _has_customer(template: str, fixtures_dir: Path | None) -> bool:
    return bool(load_trace(template, fixtures_dir).primary_call().get("customer_number"))


async def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 5038,
    username: str = "bridge",
    secret: str = "bridge-secret",  # noqa: S107 - the simulator's well-known test credential
    fixtures_dir: Path | None = None,
    load_rate: float = 0.0,
    templates: Sequence[str] | None = None,
    speed: float = 1.0,
    shutdown_trigger: Awaitable[object] | None = None,
) -> None:
    """Run a simulator until `shutdown_trigger` completes (default: forever), with optional background load."""
    async with AmiSimulator(username, secret, host=host, port=port, fixtures_dir=fixtures_dir) as sim:
        # The simulator's credentials are not secrets; print them so a demo can be wired by hand.
        print(f"AMI simulator on {host}:{sim.port} (username {username!r}, secret {secret!r})", flush=True)
        load: asyncio.Task[int] | None = None
        if load_rate > 0:
            load = asyncio.create_task(sim.run_load(None, load_rate, templates, speed=speed), name="ami-sim.load")
        try:
            await (shutdown_trigger if shutdown_trigger is not None else asyncio.Event().wait())
        finally:
            if load is not None:
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)


async def serve(host: str = "127.0.0.1", port: int = 5038, **opts: Any) -> int:
    """`b24-bridge sim ami`: serve until interrupted; `opts` are `serve_forever` keywords. Returns an exit code."""
    await serve_forever(host=host, port=port, **opts)
    return 0
