"""The MQTT bus: CallEvents out to the broker, click-to-call commands between sites (topics: `bridge.bus.topics`).

Events are a live feed, not the system of record: `publish_event` never blocks; while the broker is unreachable (or
the bounded queue is full) events are dropped and counted. One queue and one publisher keep every call's events in
order (QoS 1, waiting for each PUBACK).

Commands must not be lost silently. `publish_originate` waits until the other site's bridge confirms receipt; the
command waits in a bounded queue while the broker is down, is sent again after every reconnect and every
`command_retry` seconds, and the receiver drops repeats by command id. A full queue, a rejection or a missed deadline
raises `RemoteOriginateError` (an `OriginateError`), which the caller turns into a failed CRM call.

Each connection is a fresh `aiomqtt.Client` (no state carried over from a broken one); reconnects wait a jittered,
capped, exponentially growing delay. Anyone who can publish on the broker can send commands: restrict the
`{prefix}/+/commands/#` topics with broker ACLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import random
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import aiomqtt
import structlog

from bridge.bus.commands import decode_ack, encode_command, new_command
from bridge.bus.counters import BusCounters
from bridge.bus.errors import CommandFormatError, RemoteOriginateError
from bridge.bus.pending import PendingCommand, PendingCommands
from bridge.bus.receiver import CommandReceiver, OnOriginate
from bridge.bus.sites import SITE_ID
from bridge.bus.topics import ack_topic, command_topic, event_topic, status_topic
from bridge.errors import ConfigError
from bridge.model import CallEvent, OriginateRequest, event_to_json
from bridge.pbx.base import Health

if TYPE_CHECKING:
    from bridge.config import MqttSettings

__all__ = ["BusCounters", "MqttBus", "OnOriginate", "backoff_delay"]

log = structlog.get_logger(__name__)

_ONLINE = b'{"online": true}'
_OFFLINE = b'{"online": false}'
_IO_TIMEOUT = 10.0
_MAX_INCOMING = 1000


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def backoff_delay(failures: int, low: float, high: float, rand: Callable[[], float] = random.random) -> float:
    """Between half and all of min(high, low * 2**(failures-1)): spread out, so many bridges do not retry at once."""
    ceiling = min(high, low * 2.0 ** min(max(failures - 1, 0), 32))
    return ceiling * (0.5 + 0.5 * rand())


class MqttBus:
    """Publishes CallEvents and exchanges originate commands; an async context manager owning its loops."""

    def __init__(self, *, host: str, port: int = 1883, pbx_id: str, prefix: str = "b24bridge",
                 username: str | None = None, password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 client_id: str | None = None, keepalive: int = 30, reconnect_min: float = 0.5,
                 reconnect_max: float = 30.0, event_queue_size: int = 10_000, command_queue_size: int = 100,
                 command_deadline: float = 30.0, command_retry: float = 3.0,
                 dedup_seconds: float = 600.0, on_originate: OnOriginate | None = None) -> None:
        if not SITE_ID.fullmatch(pbx_id):
            raise ValueError(f"pbx_id {pbx_id!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if min(command_deadline, command_retry, dedup_seconds) <= 0 or min(
                event_queue_size, command_queue_size) < 1:
            raise ValueError("queue sizes and command timings must be positive")
        self._host, self._port, self._pbx_id, self._prefix = host, port, pbx_id, prefix
        self._username, self._password, self._ssl_context = username, password, ssl_context
        self._client_id = client_id or f"{prefix.replace('/', '-')}-{pbx_id}"
        self._keepalive = keepalive
        self._reconnect_min, self._reconnect_max = reconnect_min, reconnect_max
        self._command_retry, self._command_deadline = command_retry, command_deadline
        self._events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=event_queue_size)
        self._pending = PendingCommands(max_size=command_queue_size, deadline=command_deadline,
                                        on_failed=self._command_failed)
        self._counters = BusCounters()
        self._receiver = None if on_originate is None else CommandReceiver(
            prefix=prefix, pbx_id=pbx_id, on_originate=on_originate, counters=self._counters,
            dedup_seconds=dedup_seconds)
        self._state = _State.UNOPENED
        self._runner: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._ever_connected = False
        self._last_error = "not connected yet"
        self._dropped_in_outage = 0

    @classmethod
    def from_settings(cls, s: MqttSettings, *, pbx_id: str, on_originate: OnOriginate | None = None) -> MqttBus:
        if not s.host:
            raise ConfigError("mqtt.host: not set, so MQTT is off; set it to the broker's address", key="mqtt.host")
        return cls(host=s.host, port=s.port, pbx_id=pbx_id, prefix=s.prefix, username=s.username,
                   password=s.password.get_secret_value() if s.password is not None else None,
                   ssl_context=_ssl_context(s), client_id=s.client_id, keepalive=s.keepalive_seconds,
                   reconnect_min=s.reconnect_min, reconnect_max=s.reconnect_max, event_queue_size=s.event_queue_size,
                   command_queue_size=s.command_queue_size, command_deadline=s.command_deadline_seconds,
                   command_retry=s.command_retry_seconds,
                   dedup_seconds=s.dedup_seconds, on_originate=on_originate)

    @property
    def pbx_id(self) -> str:
        return self._pbx_id

    @property
    def counters(self) -> BusCounters:
        """A snapshot copy of the totals."""
        return dataclasses.replace(self._counters)

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"MqttBus is {self._state.value}: it can be entered once (make a new one)")
        self._state = _State.OPENED
        self._runner = asyncio.create_task(self._connection_loop(), name=f"mqtt[{self._pbx_id}].connection")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._state = _State.CLOSED
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._receiver is not None:
            await self._receiver.aclose()
        self._pending.fail_all("the MQTT bus was closed")

    async def connected(self) -> None:
        """Return once the bus is connected and subscribed (at once if it is now)."""
        await self._up.wait()

    async def disconnected(self) -> None:
        """Return once the bus has no connection (at once if it has none now)."""
        await self._down.wait()

    def health(self) -> Health:
        where = f"{self._host}:{self._port}"
        detail = f"connected to {where}" if self._up.is_set() else f"disconnected from {where}: {self._last_error}"
        extra = {**dataclasses.asdict(self._counters), "event_queue": self._events.qsize(),
                 "pending_commands": len(self._pending)}
        return Health(ok=self._up.is_set(), detail=detail, extra=extra)

    # --- events -------------------------------------------------------------------------------------------------

    def publish_event(self, event: CallEvent) -> None:
        """Queue `event` for the broker; never blocks. Dropped and counted when the broker is down or the queue full."""
        if self._state is not _State.OPENED or not self._up.is_set():
            self._drop_events(1, "not connected")
            return
        try:
            payload = json.dumps(event_to_json(event)).encode("utf-8")
            topic = event_topic(self._prefix, self._pbx_id, event.call_id, event.kind)
        except (TypeError, ValueError) as exc:
            log.error("mqtt_event_unencodable", call_id=event.call_id, kind=event.kind, error=str(exc))
            self._drop_events(1, "unencodable")
            return
        try:
            self._events.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._drop_events(1, "queue full")

    def _drop_events(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        self._counters.dropped_events += count
        if self._dropped_in_outage == 0:
            log.warning("mqtt_events_dropping", reason=reason)
        self._dropped_in_outage += count

    async def _event_loop(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._events.get()
            try:
                await client.publish(topic, payload, qos=1, retain=False)
            except ValueError as exc:  # paho refuses the topic or payload (e.g. too long)
                log.error("mqtt_event_refused", topic=topic[:200], error=str(exc))
                self._drop_events(1, "refused")
                continue
            except BaseException:
                self._drop_events(1, "connection lost")
                raise
            self._counters.published += 1

    # --- commands out ----------------------------------------------------------------------------------------------

    async def publish_originate(self, site: str, request: OriginateRequest) -> None:
        """Send a click-to-call to the bridge of `site`; return once that bridge confirmed receipt.

        Raises `RemoteOriginateError` when the queue is full, the site rejects it, or no receipt came within the
        deadline (then the command is never sent again).
        """
        if self._state is not _State.OPENED:
            raise RuntimeError(f"MqttBus is {self._state.value}: enter it before sending commands")
        if not SITE_ID.fullmatch(site) or site == self._pbx_id:
            raise ValueError(f"site {site!r} is not another site's id")
        # It expires when we stop waiting for its receipt: the other site must never dial a click we already failed.
        command = new_command(request, origin=self._pbx_id, now=time.time(), ttl=self._command_deadline)
        fields = {"command_id": command.id, "site": site, "request_id": request.request_id,
                  "extension": request.extension}
        try:
            future = self._pending.add(command, site=site, topic=command_topic(self._prefix, site),
                                       payload=encode_command(command))
        except RemoteOriginateError:
            self._counters.commands_failed += 1
            log.error("mqtt_command_failed", reason="command queue full", **fields)
            raise
        log.info("mqtt_command_queued", connected=self._up.is_set(), **fields)
        try:
            await future
        except asyncio.CancelledError:
            self._pending.forget(command.id)
            raise
        log.info("mqtt_command_delivered", **fields)

    def _command_failed(self, pending: PendingCommand, reason: str) -> None:
        self._counters.commands_failed += 1
        log.error("mqtt_command_failed", command_id=pending.command.id, site=pending.site, reason=reason,
                  request_id=pending.command.request.request_id, sends=pending.sends)

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._pending.changed.clear()
            for pending in self._pending.due(loop.time(), self._command_retry):
                if pending.future.done():
                    continue
                await client.publish(pending.topic, pending.payload, qos=1, retain=False)
                pending.last_sent = loop.time()
                pending.sends += 1
                self._counters.commands_sent += 1
            wait = self._pending.next_due_in(loop.time(), self._command_retry)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._pending.changed.wait()

    # --- messages in -----------------------------------------------------------------------------------------------

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        """Also the connection watchdog: the iterator raises MqttError once the connection is gone."""
        acks, commands = ack_topic(self._prefix, self._pbx_id), command_topic(self._prefix, self._pbx_id)

        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1, retain=False)

        async for message in client.messages:
            payload = message.payload
            try:
                if message.topic.value == acks:
                    self._handle_ack(payload)
                elif message.topic.value == commands and self._receiver is not None:
                    await self._receiver.handle(payload, retained=message.retain, publish=publish)
            except aiomqtt.MqttError:
                raise
            except Exception:
                log.exception("mqtt_message_failed", topic=message.topic.value[:200])

    def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except CommandFormatError as exc:
            log.warning("mqtt_ack_malformed", reason=str(exc))
            return
        pending = self._pending.settle(ack)
        if pending is not None and ack.status == "accepted":
            self._counters.commands_delivered += 1

    # --- connection -------------------------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        failures = 0
        while True:
            if await self._session():
                failures = 0
            failures += 1
            delay = backoff_delay(failures, self._reconnect_min, self._reconnect_max)
            log.info("mqtt_reconnect_wait", seconds=round(delay, 3), failures=failures, error=self._last_error)
            await asyncio.sleep(delay)

    async def _session(self) -> bool:
        """One connection from connect to loss; returns whether it got connected."""
        got_connected = False
        client = aiomqtt.Client(
            self._host, self._port, username=self._username, password=self._password, identifier=self._client_id,
            keepalive=self._keepalive, timeout=_IO_TIMEOUT, tls_context=self._ssl_context,
            max_queued_incoming_messages=_MAX_INCOMING,
            will=aiomqtt.Will(status_topic(self._prefix, self._pbx_id), _OFFLINE, qos=1, retain=True))
        try:
            async with client:
                await client.subscribe(ack_topic(self._prefix, self._pbx_id), qos=1)
                if self._receiver is not None:
                    await client.subscribe(command_topic(self._prefix, self._pbx_id), qos=1)
                await client.publish(status_topic(self._prefix, self._pbx_id), _ONLINE, qos=1, retain=True)
                got_connected = True
                self._mark_up()
                try:
                    async with asyncio.TaskGroup() as group:
                        name = f"mqtt[{self._pbx_id}]"
                        group.create_task(self._receive_loop(client), name=f"{name}.receive")
                        group.create_task(self._event_loop(client), name=f"{name}.events")
                        group.create_task(self._command_loop(client), name=f"{name}.commands")
                except asyncio.CancelledError:
                    self._last_error = "bus closed"
                    with contextlib.suppress(Exception):
                        await client.publish(status_topic(self._prefix, self._pbx_id), _OFFLINE, qos=1, retain=True,
                                             timeout=1.0)
                    raise
        except* aiomqtt.MqttError as group:
            self._last_error = "; ".join(str(e) for e in group.exceptions)[:300] or "connection lost"
            log.warning("mqtt_connection_lost" if got_connected else "mqtt_connect_failed", host=self._host,
                        port=self._port, error=self._last_error)
        except* Exception as group:
            self._last_error = f"internal error: {group.exceptions[0]!r}"[:300]
            log.error("mqtt_session_crashed", error=self._last_error, exc_info=group)
        finally:
            self._mark_down()
        return got_connected

    def _mark_up(self) -> None:
        if self._ever_connected:
            self._counters.reconnects += 1
        self._ever_connected = True
        if self._dropped_in_outage:
            log.warning("mqtt_events_dropped", count=self._dropped_in_outage)
            self._dropped_in_outage = 0
        self._down.clear()
        self._up.set()
        log.info("mqtt_connected", host=self._host, port=self._port, client_id=self._client_id)

    def _mark_down(self) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._down.set()
        self._pending.connection_lost()
        stale = 0
        while not self._events.empty():
            self._events.get_nowait()
            stale += 1
        self._drop_events(stale, "connection lost")
        if was_up:
            log.warning("mqtt_disconnected", host=self._host, port=self._port, error=self._last_error)


def _ssl_context(s: MqttSettings) -> ssl.SSLContext | None:
    """TLS that verifies the broker: against `ca_file` when given, else the system's trusted CAs."""
    if not s.tls:
        return None
    try:
        return ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.ca_file: cannot load {s.ca_file} ({exc}); point it at the broker's CA bundle (PEM)",
                          key="mqtt.ca_file") from exc
