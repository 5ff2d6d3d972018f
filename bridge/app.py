"""The composition root: build every part from settings, enter them in dependency order, run until told to stop.

Order of entry (reverse on exit): outbox -> Bitrix24 client -> directory -> dispatcher -> MQTT -> PBX adapter ->
event pump -> HTTP server. The dispatcher starts sending once the extension directory is loaded (from its cache or
the portal, bounded by DIRECTORY_WAIT_SECONDS), so the first calls after a fresh install are not put on the default
user. On SIGTERM the HTTP server stops taking requests first, then the dispatcher gets a bounded time to finish what
is in flight (the outbox keeps the rest for the next start), then the links are closed.

systemd hears READY=1 once the HTTP server listens and the PBX link is up (waited for at most
PBX_READY_WAIT_SECONDS), and WATCHDOG=1 only while the outbox takes writes and the event pump and dispatcher loops run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bridge.bus.mqtt import MqttBus
from bridge.bus.sites import SiteRouter
from bridge.card_timer import CardTimer
from bridge.config import Settings, check_required
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.directory import Directory
from bridge.crm.bitrix24.installer import AppInstaller
from bridge.errors import ConfigError, OriginateError
from bridge.metrics import Metrics
from bridge.model import CallEvent, OriginateRequest
from bridge.pbx.asterisk.adapter import AsteriskAdapter
from bridge.pbx.avaya.adapter import AvayaAdapter
from bridge.pbx.base import Health, PbxAdapter
from bridge.pbx.cisco.adapter import FinesseAdapter
from bridge.pipeline import Pipeline
from bridge.recordings.serve import recording_routes
from bridge.recordings.uploader import RecordingUploader
from bridge.sdnotify import Notifier, WatchdogLoop
from bridge.sync.dispatcher import Dispatcher, DispatcherState
from bridge.sync.operations import OpenCallState
from bridge.sync.outbox import Outbox
from bridge.sync.policy import CallPolicy, PolicySettings
from bridge.web.dispatch import EventDispatcher
from bridge.web.server import WebServer, create_app
from bridge.wiring import (
    CallbackRegistrar,
    MqttSiteRouting,
    RecordingAttach,
    failed_originate_events,
    wait_for_directory,
)

__all__ = ["Bridge", "build_adapter", "run_daemon"]

log = structlog.get_logger(__name__)

SHUTDOWN_DRAIN_SECONDS = 10.0
PBX_READY_WAIT_SECONDS = 10.0
DIRECTORY_WAIT_SECONDS = 30.0
# A command from another site may arrive while our PBX link is still logging in (right after a start).
REMOTE_PBX_WAIT_SECONDS = 5.0
# Bounds an originate the PBX never answers, as the web layer does for local clicks.
REMOTE_ORIGINATE_TIMEOUT_SECONDS = 20.0


def build_adapter(settings: Settings) -> PbxAdapter:
    kind = settings.pbx.kind
    if kind == "asterisk":
        return AsteriskAdapter.from_settings(settings)
    if kind == "avaya":
        return AvayaAdapter.from_settings(settings.avaya)
    return FinesseAdapter.from_config(settings)


def state_file(settings: Settings, name: str, configured: Path | None) -> Path:
    """Files the bridge keeps (tokens, directory cache) live next to the SQLite store unless configured."""
    return configured if configured is not None else settings.storage.path.parent / name


@dataclass
class Bridge:
    """The running daemon's parts, for tests, the demo and `status`."""

    settings: Settings
    metrics: Metrics = field(default_factory=lambda: Metrics(process_metrics=True))
    event_observers: list[Callable[[CallEvent], None]] = field(default_factory=list)
    drain_seconds: float = SHUTDOWN_DRAIN_SECONDS
    remote_pbx_wait: float = REMOTE_PBX_WAIT_SECONDS
    outbox: Outbox | None = None
    client: Bitrix24Client | None = None
    directory: Directory | None = None
    dispatcher: Dispatcher | None = None
    adapter: PbxAdapter | None = None
    bus: MqttBus | None = None
    pipeline: Pipeline | None = None
    card_timer: CardTimer | None = None
    web_port: int | None = None
    started_at: float = field(default_factory=time.time)
    # Loops the bridge is useless without (sending to the portal, reading the PBX): if one dies, systemd must know.
    _vital: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)

    def health(self) -> dict[str, Health]:
        parts: dict[str, Health] = {}
        if self.adapter is not None:
            parts["pbx"] = self.adapter.health()
        if self.outbox is not None:
            pipeline = self.pipeline
            failures = pipeline.store_failures if pipeline is not None else 0
            waiting = pipeline.waiting_steps if pipeline is not None else 0
            detail = str(self.outbox.path)
            if pipeline is not None and failures:
                detail = f"{detail}: {failures} outbox writes failed, last: {pipeline.last_store_error}"
            elif waiting:
                detail = f"{detail}: locked by another process, {waiting} call events waiting in memory"
            parts["store"] = Health(ok=failures == 0 and not waiting, detail=detail,
                                    extra={"dead_letters": self.outbox.dead_count(), "write_failures": failures,
                                           "waiting_steps": waiting})
        if self.client is not None:
            parts["portal"] = self.client.health()
        if self.bus is not None:
            parts["mqtt"] = self.bus.health()
        return parts

    def idle(self) -> bool:
        """Nothing in progress right now: no call the PBX side tracks, no operation waiting or in flight."""
        tracker = getattr(self.adapter, "tracker", None)
        if tracker is not None and hasattr(tracker, "__len__"):
            live = len(tracker)
        else:  # adapters without a public tracker: the calls the policy holds open
            live = self.pipeline.active_calls if self.pipeline is not None else 0
        outbox = self.outbox
        return live == 0 and outbox is not None and outbox.pending_count() == 0 and outbox.in_flight_count() == 0

    def status(self) -> dict[str, Any]:
        """What `b24-bridge status` prints: health, calls in progress, outbox, recent calls (JSON-ready)."""
        tracker = getattr(self.adapter, "tracker", None)
        active = getattr(tracker, "active_calls", None)
        parts = {**self.health()}
        if self.directory is not None:
            parts["directory"] = self.directory.health()
        payload: dict[str, Any] = _plain({
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "pbx": self.settings.pbx.kind,
            "health": {name: {"ok": h.ok, "detail": h.detail, **h.extra} for name, h in parts.items()},
            "calls_in_progress": active() if callable(active) else [],
            "outbox": self.outbox.depth_by_kind() if self.outbox is not None else {},
            "dead_letters": self.outbox.dead_count() if self.outbox is not None else 0,
            "dispatcher": self.dispatcher.health() if self.dispatcher is not None else {},
            "events_seen": self.pipeline.events_seen if self.pipeline is not None else 0,
            "recent_calls": list(self.pipeline.recent_ended) if self.pipeline is not None else [],
        })
        return payload

    async def run(self, shutdown: Awaitable[object], *, ready: Callable[[Bridge], None] | None = None) -> None:
        """Start everything, call `ready(self)`, run until `shutdown` completes, then stop in reverse order."""
        # A coroutine becomes our own task, so it is cancelled (not left un-awaited) if start-up fails.
        trigger = asyncio.ensure_future(shutdown) if asyncio.iscoroutine(shutdown) else shutdown
        try:
            await self._run(trigger, ready)
        finally:
            if trigger is not shutdown and isinstance(trigger, asyncio.Future):
                trigger.cancel()

    async def _run(self, shutdown: Awaitable[object], ready: Callable[[Bridge], None] | None) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            self.outbox = outbox = await stack.enter_async_context(Outbox.from_config(s.storage))
            token_path = state_file(s, "tokens.json", s.bitrix24.token_path)
            self.client = client = await stack.enter_async_context(
                Bitrix24Client.from_settings(s.bitrix24, token_path=token_path))
            self.directory = directory = Directory(
                client, default_user_id=s.bitrix24.default_user_id,
                cache_path=state_file(s, "directory.json", s.bitrix24.directory_cache))
            _ = _background(stack, directory.run_periodic(s.bitrix24.directory_refresh_seconds), "directory.refresh")

            uploader = RecordingUploader(client, s.recordings, public_base_url=_public_base(s))
            attach = RecordingAttach(uploader) if s.recordings.enabled else None
            self.dispatcher = Dispatcher.from_config(outbox, client, directory, s.bitrix24, attach_handler=attach)
            self.card_timer = CardTimer(self.metrics.ring_to_card)
            self.dispatcher.on_done = self.card_timer.accepted
            self._vital.append(_background(stack, self._dispatch(self.dispatcher, directory), "dispatcher.run"))

            self.adapter = adapter = build_adapter(s)
            if s.mqtt.enabled:
                self.bus = await stack.enter_async_context(
                    MqttBus.from_settings(s.mqtt, pbx_id=s.pbx.id, on_originate=self._originate_from_site))
            policy = CallPolicy(PolicySettings.from_config(s.bitrix24, recordings=s.recordings))
            open_calls = outbox.open_calls()
            for state in open_calls:
                policy.restore(state)
            self.pipeline = Pipeline(policy, outbox, metrics=self.metrics, bus=self.bus, on_event=self._observe,
                                     card_timer=self.card_timer)
            await stack.enter_async_context(adapter)
            self._vital.append(_background(stack, self._pump(adapter, self.pipeline), "pipeline.pump"))
            if open_calls:
                _ = _background(stack, self._close_orphans(policy, open_calls), "pipeline.orphans")

            # Pushed before the server is entered, so on exit the server stops taking events first, then we drain.
            stack.push_async_callback(self._drain)
            try:
                server = await stack.enter_async_context(WebServer.from_config(self._web_app(uploader), s.http))
            except OSError as exc:
                raise ConfigError(f"http.port: cannot listen on {s.http.host}:{s.http.port} ({exc.strerror or exc}); "
                                  "free the port or set another http.host/http.port", key="http.port") from exc
            self.web_port = server.port
            self._wire_metrics()

            notifier = Notifier.from_env()
            await stack.enter_async_context(WatchdogLoop(notifier, self._alive))
            await self._wait_pbx()
            notifier.ready()
            notifier.status(f"listening on {s.http.host}:{self.web_port}")
            log.info("bridge_ready", pbx=s.pbx.kind, http_port=self.web_port, pending_calls=len(open_calls))
            if ready is not None:
                ready(self)
            await shutdown
            log.info("bridge_stopping")
            notifier.stopping()

    def _observe(self, event: CallEvent) -> None:
        for observer in self.event_observers:
            observer(event)

    @staticmethod
    async def _pump(adapter: PbxAdapter, pipeline: Pipeline) -> None:
        async for event in adapter.events():
            pipeline.handle(event)

    @staticmethod
    async def _dispatch(dispatcher: Dispatcher, directory: Directory) -> None:
        """Run the dispatcher once users can be resolved (or the wait is over: the default user then applies)."""
        if not await wait_for_directory(directory, DIRECTORY_WAIT_SECONDS):
            log.warning("dispatcher_started_without_directory", waited_seconds=DIRECTORY_WAIT_SECONDS,
                        error=directory.last_error)
        async with dispatcher:
            await asyncio.Event().wait()

    async def _wait_pbx(self, timeout: float = PBX_READY_WAIT_SECONDS) -> None:
        """Readiness waits for the PBX link, but never forever: a down PBX is reported by /readyz, not by a hang.

        Adapters offer `wait_connected(timeout)` (Asterisk) or `connected()` (Avaya); others are not waited for.
        """
        wait = getattr(self.adapter, "wait_connected", None)
        connected = getattr(self.adapter, "connected", None)
        with contextlib.suppress(TimeoutError):
            if callable(wait):
                await wait(timeout)
            elif callable(connected):
                async with asyncio.timeout(timeout):
                    await connected()

    async def _close_orphans(self, policy: CallPolicy, open_calls: list[OpenCallState]) -> None:
        """Calls registered before a restart whose channels are gone get finished (no card stays open)."""
        assert self.pipeline is not None and self.adapter is not None
        live = getattr(self.adapter, "live_call_ids", None)
        if live is None:
            return
        ids: set[str] | None = await live()
        if ids is None:
            return
        now = datetime.now(UTC)
        for state in open_calls:
            if state.call_id in ids:
                continue
            current = policy.snapshot(state.call_id)
            if current is None:  # it ended (or was closed) while we waited for the PBX
                continue
            written = self.pipeline.close_orphan(current, now)
            log.warning("call_orphan_closed", call_id=current.call_id, call_key=current.call_key, ops=written)

    async def _drain(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.flush(self.drain_seconds)
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.state is DispatcherState.RUNNING:
            done = await dispatcher.drain(self.drain_seconds)
            log.info("dispatcher_drained", complete=done)

    def _alive(self) -> bool:
        """The watchdog's question: can the bridge still keep and send its record (store writable, loops running)?"""
        if self.pipeline is None or self.pipeline.store_failures > 0:
            return False
        return not any(task.done() for task in self._vital)

    async def _originate_from_site(self, request: OriginateRequest) -> None:
        """An originate command from another site's bridge (multi-site click-to-call).

        The other site already has its receipt, so this site owns the outcome: whatever stops the originate, the CRM
        call is finished as failed here (with the reason), never left open.
        """
        adapter, pipeline = self.adapter, self.pipeline
        if adapter is None or pipeline is None:
            raise OriginateError("the bridge is still starting", reason="bridge starting")
        reason: str | None = None
        try:
            await self._wait_pbx(self.remote_pbx_wait)
            async with asyncio.timeout(REMOTE_ORIGINATE_TIMEOUT_SECONDS):
                await adapter.originate(request)
        except OriginateError as exc:
            reason = exc.reason
            raise
        except TimeoutError:
            reason = "the PBX did not accept the originate in time"
            raise
        except Exception as exc:
            reason = f"originate failed at site {self.settings.pbx.id}: {type(exc).__name__}"
            raise
        finally:
            if reason is not None:
                log.warning("remote_originate_failed", crm_call_id=request.crm_call_id, extension=request.extension,
                            request_id=request.request_id, reason=reason)
                for event in failed_originate_events(request, reason, pbx=adapter.kind):
                    pipeline.handle(event)

    def _web_app(self, uploader: RecordingUploader) -> web.Application:
        s = self.settings
        assert self.adapter is not None and self.directory is not None and self.pipeline is not None
        assert self.client is not None and self.outbox is not None
        router = None
        if self.bus is not None and s.mqtt.sites:
            router = MqttSiteRouting(SiteRouter(dict(s.mqtt.sites), s.pbx.id), self.bus)
        installer = AppInstaller(self.client) if self.client.mode == "app" else None
        dispatcher = EventDispatcher.from_config(
            s.http, s.bitrix24, s.originate, pbx=self.adapter, directory=self.directory, sink=self.pipeline,
            pbx_kind=self.adapter.kind, callbacks=CallbackRegistrar(self.client), installer=installer,
            router=router, expected_token=self._expected_token())
        app = create_app(s.http, dispatcher=dispatcher, health=self.health, metrics_renderer=self.metrics.render)
        app.router.add_routes(recording_routes(uploader.signer, s.recordings.root, self.outbox.knows_crm_call))

        async def status(request: web.Request) -> web.Response:
            # Live calls carry customer numbers: only for the operator on this machine, never for the internet.
            if not _is_loopback(request.remote):
                raise web.HTTPForbidden(text="status is served to local clients only")
            return web.json_response(self.status())

        app.router.add_get("/status", status)
        return app

    def _expected_token(self) -> Callable[[], str | None]:
        configured = self.settings.http.application_token
        client = self.client

        def current() -> str | None:
            if configured is not None:
                return configured.get_secret_value()
            auth = client.auth if client is not None else None
            return getattr(auth, "application_token", None) if auth is not None else None

        return current

    def _wire_metrics(self) -> None:
        m = self.metrics

        def portal_request(method: str, result: str, status: int | None, seconds: float) -> None:
            m.portal_request(method, result, seconds)
            if status in (429, 503):
                m.portal_throttled(status)

        if self.client is not None:
            self.client.request_observer = portal_request

        def collect() -> None:
            if self.outbox is not None:
                m.outbox_depths(self.outbox.depth_by_kind())
                m.dead_letters(self.outbox.dead_count())
            if self.adapter is not None:
                health = self.adapter.health()
                m.pbx_link(up=health.ok)
                events, dropped, reconnects = (health.extra.get(k) for k in
                                               ("events_received", "dropped_events", "reconnects"))
                if isinstance(events, int) and isinstance(dropped, int) and isinstance(reconnects, int):
                    m.pbx_totals(events=events, dropped=dropped, reconnects=reconnects)
            if self.bus is not None:
                m.mqtt_link(up=self.bus.health().ok)
                m.mqtt_totals(published=self.bus.counters.published, dropped=self.bus.counters.dropped_events)
            auth = self.client.auth if self.client is not None else None
            if auth is not None:
                tokens = auth.tokens
                m.oauth_token_expiry(tokens.expires if tokens is not None else None)

        m.add_collector(collect)


def _background(stack: AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run `work` as a named task that the stack cancels (and awaits) on exit."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_report_crash)
    stack.push_async_callback(_cancel, task)
    return task


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())


async def _cancel(task: asyncio.Task[None]) -> None:
    """Stop a background task; a crash it died of earlier was logged then and must not fail the shutdown too."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _public_base(settings: Settings) -> str | None:
    url = settings.http.public_url
    if not url:
        return None
    path = settings.http.events_path
    return url[: -len(path)] if url.endswith(path) else url.rstrip("/")


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _plain(value: Any) -> Any:
    """Dataclasses, enums and tuples turned into what JSON can carry (anything else: its str)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.name.startswith("_")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


async def run_daemon(settings: Settings, *, shutdown: Awaitable[object] | None = None) -> int:
    """`b24-bridge run`: exit 0 after a clean shutdown, 2 when the settings cannot work."""
    problems = check_required(settings)
    if problems:
        raise ConfigError("; ".join(problems), key=problems[0].split(":", 1)[0])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Bridge(settings).run(shutdown if shutdown is not None else stop.wait())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
