"""An Avaya AES DMCC (XML) simulator: an asyncio TCP server speaking the same framing and documents as the adapter.

It keeps application sessions (timer, cleanup delay after a link loss, re-attach by sessionID), device ids, one
monitor per device, and calls made of parties; call primitives (`ring`, `answer`, `clear`, `originate`, `fail`,
`divert`, `hold`, `transfer`) emit the event sequence a monitored station would see to every session monitoring a
party of the call. MakeCall places a scripted outbound call. Every request is recorded in `requests`.

Faults: `drop_links()` (sessions survive for their cleanup delay), `expire_sessions()`, `send_raw()` to push
garbage, `allow_reattach` to refuse re-attaching, `unknown_numbers` that AES rejects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from bridge.pbx.avaya.framing import EVENT_INVOKE_ID, FrameDecoder, encode_frame
from bridge.pbx.avaya.requests import DEFAULT_PROTOCOL
from bridge.pbx.avaya.xmlsafe import XmlRefused, parse_xml
from bridge.sim import avaya_xml as X
from bridge.sim.avaya_calls import CallPrimitives, SimCall

log = structlog.get_logger(__name__)

MakeCallOutcome = Literal["answer", "ring", "busy", "agent_no_answer"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    name: str
    invoke_id: int
    session_id: str | None
    fields: dict[str, str]
    payload: bytes


@dataclass(eq=False)
class SimSession:
    session_id: str
    duration: int
    cleanup_delay: int
    link: _Link | None = None
    monitors: dict[str, str] = field(default_factory=dict)  # monitorCrossRefID -> device number
    timer: asyncio.TimerHandle | None = None


class _Link:
    def __init__(self, sim: AvayaSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.session: SimSession | None = None

    def send(self, invoke_id: int, payload: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_frame(invoke_id, payload))

    def close(self) -> None:
        self.writer.close()


class AvayaSimulator(CallPrimitives):
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, username: str = "bridge",
                 password: str = "secret",  # noqa: S107 - a test double
                 switch_name: str = "CM", switch_ip: str = "10.0.0.1",
                 stations: Iterable[str] = ("201", "202", "203"), vdns: Iterable[str] = (),
                 protocol: str = DEFAULT_PROTOCOL, max_session_duration: int = 600, allow_reattach: bool = True,
                 unknown_numbers: Iterable[str] = ("000",), ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self._port = host, port
        self._ssl = ssl_context
        self.username, self.password = username, password
        self.switch_name, self.switch_ip = switch_name, switch_ip
        self.stations = set(stations)
        self.vdns = set(vdns)
        self.protocol = protocol
        self.max_session_duration = max_session_duration
        self.allow_reattach = allow_reattach
        self.unknown_numbers = set(unknown_numbers)
        self.make_call_outcome: MakeCallOutcome = "answer"
        self.make_call_events_first = False
        self.requests: list[RecordedRequest] = []
        self.sessions: dict[str, SimSession] = {}
        self.calls: dict[str, SimCall] = {}
        self._links: set[_Link] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(41)
        self._request_seen = asyncio.Condition()
        # The requests the simulator answers; anything else gets CSTAErrorCode.
        self._handlers: dict[str, Callable[[_Link, int, ET.Element, dict[str, str]], Awaitable[None]]] = {
            "StartApplicationSession": self._start_session,
            "ResetApplicationSessionTimer": self._reset_timer,
            "StopApplicationSession": self._stop_session,
            "GetDeviceId": self._get_device_id,
            "GetThirdPartyDeviceId": self._get_third_party_device_id,
            "MonitorStart": self._monitor_start,
            "MonitorStop": self._monitor_stop,
            "SnapshotDevice": self._snapshot_device,
            "MakeCall": self._make_call,
        }

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port, ssl=self._ssl)

    async def stop(self) -> None:
        for link in list(self._links):
            link.close()
        if self._serving:
            await asyncio.wait(self._serving, timeout=2)
        for session in self.sessions.values():
            if session.timer:
                session.timer.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> AvayaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def device_id(self, number: str) -> str:
        return f"{number}:{self.switch_name}:{self.switch_ip}:0"

    # ---- assertions helpers ------------------------------------------------------------------------------------------

    def requests_named(self, name: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.name == name]

    async def wait_requests(self, name: str, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        async with asyncio.timeout(timeout), self._request_seen:
            await self._request_seen.wait_for(lambda: len(self.requests_named(name)) >= count)
        return self.requests_named(name)

    # ---- faults --------------------------------------------------------------------------------------------------

    async def drop_links(self) -> None:
        """Cut every client connection; sessions stay for their cleanup delay and can be re-attached."""
        for link in list(self._links):
            link.writer.transport.abort()
        await asyncio.sleep(0)

    def expire_sessions(self) -> None:
        """Forget every session at once (as if the cleanup delay had passed or AES restarted)."""
        for session in list(self.sessions.values()):
            self._end_session(session)

    def terminate_sessions(self, reason: str = "applicationTimeout") -> None:
        """AES ends every session itself: StopApplicationSession to the client, then the link closes."""
        for session in list(self.sessions.values()):
            self._timeout(session, reason)

    def send_raw(self, data: bytes) -> None:
        for link in self._links:
            if not link.writer.is_closing():
                link.writer.write(data)

    def _broadcast(self, call: SimCall, build: Callable[[str], bytes], *, notify: set[str] | None = None) -> None:
        """Send one event to every monitor (of every live session) on a device in `notify` (default: watchers)."""
        targets = call.watchers if notify is None else notify
        for session in self.sessions.values():
            if session.link is None:
                continue  # link down: events are lost, as on a real AES
            for monitor_id, number in session.monitors.items():
                if number in targets:
                    session.link.send(EVENT_INVOKE_ID, build(monitor_id))

    # ---- server --------------------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self, reader, writer)
        self._links.add(link)
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        try:
            while data := await reader.read(65536):
                for frame in link.decoder.feed(data):
                    await self._handle(link, frame.invoke_id, frame.payload)
                if link.decoder.garbage_exceeded:
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            self._detach(link)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _detach(self, link: _Link) -> None:
        session = link.session
        link.session = None
        if session is None or session.link is not link:
            return
        session.link = None
        if session.session_id in self.sessions:
            self._arm(session, session.cleanup_delay)

    def _arm(self, session: SimSession, seconds: float) -> None:
        if session.timer:
            session.timer.cancel()
        session.timer = asyncio.get_running_loop().call_later(seconds, self._timeout, session)

    def _timeout(self, session: SimSession, reason: str = "applicationTimeout") -> None:
        if session.link is not None:
            session.link.send(EVENT_INVOKE_ID, X.stop_session(session.session_id, reason))
            session.link.close()
        self._end_session(session)

    def _end_session(self, session: SimSession) -> None:
        if session.timer:
            session.timer.cancel()
        self.sessions.pop(session.session_id, None)
        if session.link is not None:
            session.link.session = None
            session.link = None

    async def _handle(self, link: _Link, invoke_id: int, payload: bytes) -> None:
        try:
            root = parse_xml(payload)
        except XmlRefused:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "generic"))
            return
        fields = _flatten(root)
        session_id = link.session.session_id if link.session else None
        async with self._request_seen:
            self.requests.append(RecordedRequest(root.tag, invoke_id, session_id, fields, payload))
            self._request_seen.notify_all()
        handler = self._handlers.get(root.tag)
        if root.tag != "StartApplicationSession" and link.session is None:
            link.send(invoke_id, X.csta_error(self.protocol, "security", "requestIncompatibleWithSubjectDevice"))
            return
        if handler is None:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "generic"))
            return
        await handler(link, invoke_id, root, fields)

    async def _start_session(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        if fields.get("userName") != self.username or fields.get("password") != self.password:
            link.send(invoke_id, X.session_negative("StartApplicationSession", "invalidApplicationInfo"))
            return
        wanted = fields.get("sessionID")
        session = self.sessions.get(wanted) if wanted and self.allow_reattach else None
        duration = min(int(fields.get("requestedSessionDuration", "180") or 180), self.max_session_duration)
        if session is None:
            session = SimSession(session_id=f"S{next(self._ids):08X}", duration=duration,
                                 cleanup_delay=int(fields.get("sessionCleanupDelay", "60") or 60))
            self.sessions[session.session_id] = session
        elif session.link is not None and session.link is not link:
            old = session.link
            old.session = None
            old.close()
        session.link = link
        link.session = session
        self._arm(session, session.duration)
        link.send(invoke_id, X.session_started(session.session_id, self.protocol, session.duration))

    async def _reset_timer(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        session = self.sessions.get(fields.get("sessionID", ""))
        if session is None or session.link is not link:
            link.send(invoke_id, X.session_negative("ResetApplicationSessionTimer", "invalidSessionID"))
            return
        self._arm(session, session.duration)
        link.send(invoke_id, X.reset_timer_ok(session.duration))

    async def _stop_session(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        session = self.sessions.get(fields.get("sessionID", ""))
        if session is None:
            link.send(invoke_id, X.session_negative("StopApplicationSession", "invalidSessionID"))
            return
        link.send(invoke_id, X.stop_session_ok())
        self._end_session(session)

    async def _get_device_id(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        ext = fields.get("extension", "")
        if ext not in self.stations and ext not in self.vdns:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidDeviceID"))
            return
        link.send(invoke_id, X.device_id_response(root.tag, self.device_id(ext)))

    async def _get_third_party_device_id(self, link: _Link, invoke_id: int, root: ET.Element,
                                         fields: dict[str, str]) -> None:
        ext = fields.get("extension", "")
        if not ext.isdigit() or ext in self.unknown_numbers:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidDeviceID"))
            return
        link.send(invoke_id, X.device_id_response(root.tag, self.device_id(ext)))

    async def _monitor_start(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        assert link.session is not None
        number = _number(fields.get("deviceObject"))
        if number not in self.stations and number not in self.vdns:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidMonitorObject"))
            return
        monitor_id = str(next(self._ids))
        link.session.monitors[monitor_id] = number
        link.send(invoke_id, X.monitor_started(self.protocol, monitor_id))

    async def _monitor_stop(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        assert link.session is not None
        if link.session.monitors.pop(fields.get("monitorCrossRefID", ""), None) is None:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidCrossRefID"))
            return
        link.send(invoke_id, X.monitor_stopped(self.protocol))

    async def _snapshot_device(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        number = _number(fields.get("snapshotObject") or fields.get("deviceObject"))
        if number not in self.stations and number not in self.vdns:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidDeviceID"))
            return
        items = [(c.call_id, self.device_id(number), c.parties[number]) for c in self.calls.values()
                 if number in c.parties]
        link.send(invoke_id, X.snapshot(self.protocol, items))

    async def _make_call(self, link: _Link, invoke_id: int, root: ET.Element, fields: dict[str, str]) -> None:
        agent = _number(fields.get("callingDevice"))
        number = _number(fields.get("calledDirectoryNumber"))
        if agent not in self.stations:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidCallingDevice"))
            return
        if not number or number in self.unknown_numbers:
            link.send(invoke_id, X.csta_error(self.protocol, "operation", "invalidCalledDevice"))
            return
        call = self.new_call()
        response = X.make_call_ok(self.protocol, call.call_id, self.device_id(agent), call.ucid)
        if not self.make_call_events_first:
            link.send(invoke_id, response)
        await self._script_make_call(call, agent, number)
        if self.make_call_events_first:
            link.send(invoke_id, response)

    async def _script_make_call(self, call: SimCall, agent: str, number: str) -> None:
        outcome = self.make_call_outcome
        if outcome == "agent_no_answer":
            call.parties[number] = "initiated"
            call.parties[agent] = "alerting"
            self._watch(call, agent)
            await self.clear(call, agent, cause="callNotAnswered")
            return
        await self.originate(agent, number, call)
        if outcome == "answer":
            await self.answer(call, number, calling=agent, called=number)
        elif outcome == "busy":
            await self.fail(call, number, cause="busy")


def _number(device_id: str | None) -> str:
    return (device_id or "").split(":", 1)[0].strip()


def _flatten(root: ET.Element) -> dict[str, str]:
    """Leaf texts by local tag name (first occurrence wins): enough to read every request we handle."""
    out: dict[str, str] = {}
    for el in root.iter():
        if len(el) == 0 and el.text and el.text.strip():
            out.setdefault(el.tag.split(":")[-1], el.text.strip())
    return out
