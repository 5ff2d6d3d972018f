"""`AvayaAdapter`: the `PbxAdapter` over Avaya AES DMCC XML (see docs/avaya.md).

One background task owns the link: connect (TCP 4721 or TLS 4722), start the application session (re-attaching to
the previous one after a link loss when AES still holds it), get device ids and start one monitor per station and
VDN, resync live calls with SnapshotDevice, then read events while a keep-alive resets the session timer. On any
link failure it reconnects with jittered, capped exponential backoff. Events go through the pure `DmccTracker` and
come out of `events()` in order, across reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING

import structlog

from bridge.errors import OriginateError
from bridge.log import register_secrets
from bridge.model import CallEvent, OriginateRequest
from bridge.pbx.avaya.connection import DmccConnection
from bridge.pbx.avaya.errors import DmccError, DmccRequestError, DmccSessionError, DmccTimeoutError
from bridge.pbx.avaya.messages import EVENT_TYPES, DmccMessage, MakeCallResponse, SessionStopped
from bridge.pbx.avaya.numbers import NumberPlan
from bridge.pbx.avaya.session import DmccSession, SessionConfig
from bridge.pbx.avaya.tracker import DmccTracker
from bridge.pbx.base import Health

if TYPE_CHECKING:
    from bridge.config import AvayaSettings

log = structlog.get_logger(__name__)

_NUMBER = re.compile(r"\+?[0-9]{2,20}")


class _State(Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def _now() -> datetime:
    return datetime.now(UTC)


class AvayaAdapter:
    kind = "avaya"

    def __init__(self, *, host: str, port: int, session: SessionConfig, stations: Iterable[str],
                 vdns: Iterable[str] = (), ssl_context: ssl.SSLContext | None = None, internal_max_digits: int = 6,
                 dial_prefix: str = "", strip_plus: bool = True, keepalive_interval: float = 60.0,
                 connect_timeout: float = 5.0, request_timeout: float = 10.0, reconnect_min: float = 1.0,
                 reconnect_max: float = 30.0, orphan_grace: float = 5.0, tick_interval: float = 1.0,
                 clock: Callable[[], datetime] = _now) -> None:
        if reconnect_min > reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        self._host, self._port, self._ssl = host, port, ssl_context
        self._session_cfg = session
        self._stations = tuple(stations)
        self._vdns = tuple(vdns)
        self._dial_prefix, self._strip_plus = dial_prefix, strip_plus
        self._keepalive = keepalive_interval
        self._connect_timeout, self._request_timeout = connect_timeout, request_timeout
        self._reconnect_min, self._reconnect_max = reconnect_min, reconnect_max
        self._tick = tick_interval
        self._clock = clock
        plan = NumberPlan.of(self._stations, self._vdns, internal_max_digits=internal_max_digits,
                             dial_prefix=dial_prefix)
        self._tracker = DmccTracker(plan, pbx=self.kind, orphan_grace=orphan_grace)
        # None marks the end of the stream (the adapter was closed).
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._state = _State.UNOPENED
        self._runner: asyncio.Task[None] | None = None
        self._conn: DmccConnection | None = None
        self._session: DmccSession | None = None
        self._session_id: str | None = None
        self._device_ids: dict[str, str] = {}
        self._monitor_ext: dict[str, str] = {}
        self._failed_devices: dict[str, str] = {}
        self._recent_requests: OrderedDict[str, None] = OrderedDict()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._last_error = "not connected yet"
        self.links = 0
        self.events_received = 0
        self.reattaches = 0

    @classmethod
    def from_settings(cls, settings: AvayaSettings) -> AvayaAdapter:
        password = settings.password.get_secret_value()
        register_secrets([password])
        ssl_context: ssl.SSLContext | None = None
        if settings.tls:
            ssl_context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
            if not settings.tls_verify:
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
        session = SessionConfig(
            application_id=settings.application_id, username=settings.username, password=password,
            protocol_version=settings.protocol_version, session_duration=settings.session_duration,
            cleanup_delay=settings.session_cleanup_delay, switch_name=settings.switch_name,
            switch_ip=settings.switch_ip, third_party_device_ids=settings.device_id_service == "GetThirdPartyDeviceId",
            auto_originate=settings.auto_originate if settings.auto_originate != "prompt" else None)
        return cls(host=settings.host, port=settings.port, session=session, stations=settings.stations,
                   vdns=settings.vdns, ssl_context=ssl_context, internal_max_digits=settings.internal_max_digits,
                   dial_prefix=settings.dial_prefix, strip_plus=settings.strip_plus,
                   keepalive_interval=settings.keepalive_interval, connect_timeout=settings.connect_timeout,
                   request_timeout=settings.request_timeout, reconnect_min=settings.reconnect_min,
                   reconnect_max=settings.reconnect_max, orphan_grace=settings.orphan_grace_seconds)

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> AvayaAdapter:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"AvayaAdapter cannot be entered when {self._state.value}")
        self._state = _State.OPENED
        self._runner = asyncio.create_task(self._run(), name=f"avaya[{self._host}].link")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        session = self._session
        if session is not None and self._up.is_set():
            with contextlib.suppress(DmccError, TimeoutError):
                async with asyncio.timeout(2):
                    await session.stop()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def connected(self) -> None:
        """Wait until the session is up, monitors are started and the resync is done."""
        await self._up.wait()

    async def disconnected(self) -> None:
        await self._down.wait()

    def health(self) -> Health:
        # events_received / dropped_events / reconnects: the PBX counters every adapter reports (see /metrics).
        extra = {"links": self.links, "reattaches": self.reattaches, "monitors": len(self._monitor_ext),
                 "events_received": self.events_received, "dropped_events": 0,
                 "reconnects": max(0, self.links - 1),
                 "active_calls": self._tracker.active_calls, "failed_devices": dict(self._failed_devices)}
        if self._state is not _State.OPENED:
            return Health(False, f"adapter {self._state.value}", extra)
        if not self._up.is_set():
            return Health(False, f"AES link down: {self._last_error}", extra)
        if self._failed_devices:
            failed = ", ".join(sorted(self._failed_devices))
            return Health(bool(self._monitor_ext), f"AES session up; not monitored: {failed}", extra)
        return Health(True, f"AES session up, {len(self._monitor_ext)} monitors", extra)

    # ---- originate -----------------------------------------------------------------------------------------------

    async def originate(self, request: OriginateRequest) -> None:
        ext = request.extension
        if self._state is not _State.OPENED:
            raise OriginateError("the Avaya adapter is not running", reason="not_running")
        if ext not in self._stations:
            raise OriginateError(f"extension {ext!r} is not a configured Avaya station", reason="unknown_extension")
        if not _NUMBER.fullmatch(request.number):
            raise OriginateError("the number must be digits with an optional leading +", reason="invalid_number")
        if request.request_id in self._recent_requests:
            log.info("avaya_originate_duplicate", request_id=request.request_id)
            return
        session, device = self._session, self._device_ids.get(ext)
        if session is None or device is None or not self._up.is_set():
            raise OriginateError("the link to AES is down", reason="link_down")
        dial = request.number.removeprefix("+") if self._strip_plus else request.number
        dial = self._dial_prefix + dial
        self._tracker.expect_make_call(ext, request.number, request.crm_call_id, self._clock())

        def note(message: DmccMessage) -> None:
            # Runs in the reader as the response arrives, so events after it already find the call.
            if not isinstance(message, MakeCallResponse):
                return
            try:
                events = self._tracker.note_make_call(
                    call_key=message.call_id, ucid=message.ucid, extension=ext, number=request.number,
                    crm_call_id=request.crm_call_id, at=self._clock())
            except Exception:  # never let a tracker bug take the reader down
                log.exception("avaya_tracker_error", event="MakeCallResponse")
                return
            self._emit(events)

        try:
            called = await session.device_id(dial, third_party=True)
            answer = await session.make_call(device, called, on_answer=note)
        except DmccRequestError as exc:
            self._tracker.cancel_make_call(ext)
            raise OriginateError(f"AES refused the call: {exc.error}", reason=exc.error) from exc
        except DmccTimeoutError as exc:
            # The call may still happen: keep the expectation so its events carry crm_call_id.
            raise OriginateError("AES did not answer MakeCall in time", reason="timeout") from exc
        except DmccError as exc:
            self._tracker.cancel_make_call(ext)
            raise OriginateError(f"MakeCall failed: {exc}", reason="link_error") from exc
        self._recent_requests[request.request_id] = None
        while len(self._recent_requests) > 1024:
            self._recent_requests.popitem(last=False)
        log.info("avaya_originate", request_id=request.request_id, extension=ext, call_key=answer.call_id,
                 crm_call_id=request.crm_call_id)

    # ---- the link ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._reconnect_min
        while True:
            linked_before = self.links
            try:
                await self._link_once()
            except DmccSessionError as exc:
                self._last_error = str(exc)
                log.error("avaya_session_refused", error=str(exc))
            except DmccError as exc:
                self._last_error = str(exc)
                log.warning("avaya_link_down", error=str(exc))
            finally:
                await self._teardown()
            if self.links > linked_before:
                delay = self._reconnect_min
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect_max)

    async def _link_once(self) -> None:
        stale = self._tracker.live_keys()
        conn = await DmccConnection.open(self._host, self._port, ssl_context=self._ssl,
                                         connect_timeout=self._connect_timeout, on_unsolicited=self._on_message,
                                         request_timeout=self._request_timeout)
        self._conn = conn
        reader = asyncio.create_task(conn.read_forever(), name=f"avaya[{self._host}].reader")
        tasks: set[asyncio.Task[None]] = {reader}
        try:
            session = DmccSession(conn, self._session_cfg)
            reattached = await session.start(self._session_id)
            self._session, self._session_id = session, session.session_id
            if reattached:
                self.reattaches += 1
            else:
                self._device_ids.clear()
                self._monitor_ext.clear()
            log.info("avaya_session_started", reattached=reattached, protocol=session.protocol,
                     duration=session.duration)
            await self._start_monitors(session)
            tasks.add(asyncio.create_task(session.keep_alive(min(self._keepalive, session.duration / 3)),
                                          name=f"avaya[{self._host}].keepalive"))
            tasks.add(asyncio.create_task(self._tick_loop(), name=f"avaya[{self._host}].ticker"))
            await self._resync(session, stale)
            self.links += 1
            self._up.set()
            self._down.clear()
            log.info("avaya_link_up", monitors=len(self._monitor_ext), failed=len(self._failed_devices))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise why the link ended
            raise DmccError("link task ended unexpectedly")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, DmccError):
                    await task

    async def _teardown(self) -> None:
        self._up.clear()
        self._down.set()
        self._session = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _start_monitors(self, session: DmccSession) -> None:
        for ext in (*self._stations, *self._vdns):
            if ext in self._monitor_ext.values():
                continue  # re-attached: AES kept this monitor
            try:
                device = await session.device_id(ext)
                monitor_id = await session.monitor_start(device)
            except DmccRequestError as exc:
                self._failed_devices[ext] = exc.error
                log.error("avaya_monitor_failed", extension=ext, error=exc.error)
                continue
            self._failed_devices.pop(ext, None)
            self._device_ids[ext] = device
            self._monitor_ext[monitor_id] = ext
            log.debug("avaya_monitor_started", extension=ext, monitor_id=monitor_id)

    async def _resync(self, session: DmccSession, stale: set[str]) -> None:
        """Calls followed before the link dropped: a station or VDN that no longer shows one has left it."""
        if not stale:
            return
        for ext in (*self._stations, *self._vdns):
            device = self._device_ids.get(ext)
            if device is None:
                continue
            try:
                snapshot = await session.snapshot(device)
            except DmccRequestError as exc:
                log.warning("avaya_snapshot_failed", extension=ext, error=exc.error)
                continue
            live = {item.call_id for item in snapshot.items}
            self._emit(self._tracker.reconcile(ext, live, self._clock(), only=stale))
        log.info("avaya_resync_done", followed=len(stale), active_calls=self._tracker.active_calls)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self._emit(self._tracker.expire(self._clock()))

    def _on_message(self, message: DmccMessage) -> None:
        """Called by the reader, in arrival order, for everything that is not an answer to a request."""
        if isinstance(message, EVENT_TYPES):
            self.events_received += 1
            ext = self._monitor_ext.get(message.monitor_id)
            try:
                events = self._tracker.on_event(message, at=self._clock(), monitored=ext)
            except Exception:  # a tracker bug must not take the link down; the event is logged and skipped
                log.exception("avaya_tracker_error", event=type(message).__name__)
                return
            self._emit(events)
        elif isinstance(message, SessionStopped):
            log.warning("avaya_session_stopped_by_aes", reason=message.reason)
            self._session_id = None
            if self._conn is not None:
                self._conn.abort()
        else:
            log.debug("avaya_unexpected_message", message=type(message).__name__)

    def _emit(self, events: list[CallEvent]) -> None:
        for event in events:
            self._queue.put_nowait(event)
