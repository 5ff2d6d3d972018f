"""A small AMI client on asyncio streams: one session kept alive for as long as the object is entered.

`AmiConnection` connects, logs in (MD5 or plain), pings with a reply deadline and reconnects forever with jittered,
capped exponential backoff. One reader task feeds one ordered, bounded queue that `messages()` drains: `Reconnected`
(after every login, before that session's first event), `Received` events and `Disconnected`. The reader never waits
for the consumer: a full queue drops its oldest events (counted in `dropped_events`), because Asterisk closes a
session whose writes block for 100 ms. Replies are matched to actions by ActionID, never by order, and an action is
never re-sent after a link loss: its caller gets `AmiConnectionError` and decides.

Action session: Asterisk flushes no events to a session while it runs an action, so the adapter may open a second
connection with `events="off"` (`AmiConnection.from_settings(s, events="off", name="pbx1-actions")`) and send
Originate, Status and the like there. Its `messages()` only carries markers and need not be consumed;
`OriginateResponse` still arrives on the event session, as an ordinary event.
"""

from __future__ import annotations

import asyncio
import enum
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING

import structlog

from bridge.errors import AmiActionError, AmiConnectionError, AmiError, AmiLoginError, AmiTimeoutError
from bridge.pbx.asterisk.actions import PendingActions, Reply
from bridge.pbx.asterisk.handshake import AuthMode, login, open_stream, read_banner
from bridge.pbx.asterisk.items import (
    AmiItem,
    Disconnected,
    DropOldestQueue,
    QueueClosedError,
    Received,
    Reconnected,
)
from bridge.pbx.asterisk.protocol import BANNER_PREFIX, AmiMessage, AmiParser, encode_action
from bridge.pbx.base import Health

if TYPE_CHECKING:
    from bridge.config import AmiSettings

__all__ = ["AmiConnection", "AmiItem", "ConnectionState", "Disconnected", "Received", "Reconnected"]

log = structlog.get_logger(__name__)

_READ_SIZE = 256 * 1024


class ConnectionState(enum.Enum):
    IDLE = "idle"              # built, not entered yet
    CONNECTING = "connecting"  # opening the socket and logging in
    CONNECTED = "connected"    # logged in; events flow, actions accepted
    WAITING = "waiting"        # link lost or refused; backing off before the next attempt
    CLOSED = "closed"          # left the context; cannot be entered again


class AmiConnection:
    """One AMI login, kept up in the background; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        auth: AuthMode = "md5",
        events: str = "call,agent,dialplan,system",
        tls: bool | ssl.SSLContext = False,
        connect_timeout: float = 5.0,
        action_timeout: float = 10.0,
        ping_interval: float = 15.0,
        ping_timeout: float = 5.0,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        encoding_fallback: str = "cp1251",
        queue_size: int = 100_000,
        fully_booted_timeout: float = 2.0,
        name: str = "ami",
        frame_filter: Callable[[bytes], bool] | None = None,
    ) -> None:
        if auth not in ("md5", "plain"):
            raise ValueError(f"auth must be 'md5' or 'plain', not {auth!r}")
        timeouts = (connect_timeout, action_timeout, ping_interval, ping_timeout, reconnect_min, fully_booted_timeout)
        if min(timeouts) <= 0:
            raise ValueError("timeouts, intervals and reconnect_min must be positive")
        if reconnect_min > reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        self.host, self.port, self.name = host, port, name
        self._username, self._secret, self._auth, self._events, self._tls = username, secret, auth, events, tls
        self._connect_timeout, self._action_timeout = connect_timeout, action_timeout
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        self._reconnect_min, self._reconnect_max = reconnect_min, reconnect_max
        self._fallback, self._fully_booted_timeout = encoding_fallback, fully_booted_timeout
        self._frame_filter = frame_filter
        self._queue = DropOldestQueue(queue_size)
        self._state = ConnectionState.IDLE
        self._connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._id_prefix = f"{name}-{secrets.token_hex(3)}"
        self._pending = PendingActions(self._id_prefix)
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._consuming = False
        self._overflowing = False
        self._logins = 0
        self._session_started: float | None = None
        self._log = log.bind(ami=name)
        self.banner: str | None = None
        self.reconnects = 0
        self.events_received = 0
        self.dropped_events = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, s: AmiSettings, *, events: str | None = None, name: str = "ami",
                      frame_filter: Callable[[bytes], bool] | None = None) -> AmiConnection:
        return cls(
            s.host, s.port, s.username, s.secret.get_secret_value(), auth=s.auth,
            events=s.events if events is None else events, tls=s.tls, connect_timeout=s.connect_timeout,
            action_timeout=s.action_timeout, ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
            reconnect_min=s.reconnect_min, reconnect_max=s.reconnect_max, encoding_fallback=s.encoding_fallback,
            queue_size=s.queue_size, name=name, frame_filter=frame_filter,
        )

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AmiConnection:
        if self._state is ConnectionState.CLOSED:
            raise RuntimeError(f"AmiConnection {self.name!r} was closed and cannot be reopened; create a new one")
        if self._state is not ConnectionState.IDLE:
            raise RuntimeError(f"AmiConnection {self.name!r} is already open")
        self._state = ConnectionState.CONNECTING
        self._runner = asyncio.create_task(self._run(), name=f"ami[{self.name}].session")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Log off (briefly), stop the background tasks and end `messages()`. Safe to call twice."""
        if self._state in (ConnectionState.CLOSED, ConnectionState.IDLE):
            self._state = ConnectionState.CLOSED
            self._queue.close()
            return
        self._closing = True
        if self._state is ConnectionState.CONNECTED:
            with suppress(AmiError):
                await self.send_action("Logoff", {}, timeout=min(1.0, self._action_timeout))
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                runner.cancel()
                try:
                    await runner
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
        finally:
            self._state = ConnectionState.CLOSED
            self._connected.clear()
            self._pending.fail_all("connection closed")
            self._queue.close()
            self._log.info("ami_closed", reconnects=self.reconnects, events_received=self.events_received,
                           dropped_events=self.dropped_events)

    @property
    def state(self) -> ConnectionState:
        return self._state

    def connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until logged in; `TimeoutError` after `timeout`, `AmiConnectionError` if the connection is closed."""
        if self._state in (ConnectionState.IDLE, ConnectionState.CLOSED):
            raise AmiConnectionError(f"AmiConnection {self.name!r} is not open")
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    def health(self) -> Health:
        ok = self._state is ConnectionState.CONNECTED
        if ok:
            detail = f"logged in to {self.host}:{self.port} ({self.banner})"
        else:
            detail = f"{self._state.value}: {self.last_error or 'not connected yet'}"
        return Health(ok=ok, detail=detail, extra={
            "state": self._state.value, "reconnects": self.reconnects, "events_received": self.events_received,
            "dropped_events": self.dropped_events, "queued": len(self._queue), "last_error": self.last_error,
            "ami_version": self.banner.removeprefix(BANNER_PREFIX) if self.banner else None,
        })

    # ----------------------------------------------------------------- consuming

    async def messages(self) -> AsyncIterator[AmiItem]:
        """Markers and events in arrival order, across reconnects; ends when the connection is closed."""
        if self._consuming:
            raise RuntimeError(f"AmiConnection {self.name!r} already has a consumer; messages() is single-consumer")
        self._consuming = True
        try:
            while True:
                try:
                    item = await self._queue.get()
                except QueueClosedError:
                    return
                if self._overflowing and len(self._queue) <= self._queue.maxsize // 2:
                    self._overflowing = False
                    self._log.info("ami_queue_recovered", dropped_events=self.dropped_events)
                yield item
        finally:
            self._consuming = False

    # ----------------------------------------------------------------- actions

    async def send_action(
        self, action: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *, timeout: float | None = None
    ) -> AmiMessage:
        """Send one action and return its reply. `Response: Error` raises `AmiActionError`.

        An `ActionID` header may be given (it must be unique among pending actions); otherwise one is added.
        Originate always goes out with `Async: true`.
        """
        response, _ = await self._submit(action, headers, collect=False, timeout=timeout)
        return response

    async def send_list_action(
        self, action: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *, timeout: float | None = None
    ) -> list[AmiMessage]:
        """Send a list action (CoreShowChannels, Status...) and return its item events, without the `*Complete`."""
        _, items = await self._submit(action, headers, collect=True, timeout=timeout)
        return items

    async def _submit(
        self, action: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], *, collect: bool,
        timeout: float | None,
    ) -> Reply:
        action_id, pairs = self._pending.prepare(action, headers)
        data = encode_action(action, pairs)
        writer = self._writer
        if writer is None or self._state is not ConnectionState.CONNECTED:
            raise AmiConnectionError(f"AMI {self.name!r} is not connected ({self._state.value}); {action} not sent")
        deadline = self._action_timeout if timeout is None else timeout
        future = self._pending.register(action_id, action, collect=collect)
        try:
            async with asyncio.timeout(deadline):
                writer.write(data)
                try:
                    await writer.drain()
                except (OSError, RuntimeError) as exc:
                    raise AmiConnectionError(f"{action} could not be sent: {exc}") from exc
                return await future
        except TimeoutError as exc:
            raise AmiTimeoutError(f"{action} (ActionID {action_id}) got no reply within {deadline} s") from exc
        finally:
            self._pending.discard(action_id)

    # ----------------------------------------------------------------- background

    async def _run(self) -> None:
        failures = 0
        while True:
            self._state = ConnectionState.CONNECTING
            self._log.debug("ami_connecting", host=self.host, port=self.port)
            reason = await self._session()
            if self._closing:
                return
            started, self._session_started = self._session_started, None
            self.last_error = reason
            self._state = ConnectionState.WAITING
            if started is not None:
                self._connected.clear()
                self._queue.put(Disconnected(reason, time.time()))
                self._log.warning("ami_disconnected", reason=reason, host=self.host, port=self.port)
                if time.monotonic() - started >= max(self._ping_interval, self._reconnect_max):
                    failures = 0
            delay = self._backoff(failures)
            failures += 1
            self._log.info("ami_reconnect_scheduled", delay=round(delay, 3), attempt=failures)
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._reconnect_max, self._reconnect_min * 2.0 ** min(failures, 32))
        return random.uniform(self._reconnect_min, ceiling)

    async def _session(self) -> str:
        """Run one connection from socket open to loss; return why it ended (never raises but CancelledError)."""
        writer: asyncio.StreamWriter | None = None
        stage = "connect"
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await open_stream(self.host, self.port, tls=self._tls)
                banner = await read_banner(reader)
            stage = "login"
            self._log.info("ami_banner", banner=banner, ami_version=banner.removeprefix(BANNER_PREFIX))
            parser = AmiParser(fallback_encoding=self._fallback, skip=self._frame_filter)
            async with asyncio.timeout(self._action_timeout):
                await login(reader, writer, parser, username=self._username, secret=self._secret, auth=self._auth,
                            events=self._events, id_prefix=self._id_prefix)
            fully_booted, early = await self._await_fully_booted(reader, parser)
            self._go_live(writer, banner, fully_booted, early)
            return await self._serve(reader, parser)
        except AmiLoginError as exc:
            self._log.error("ami_login_failed", reason=str(exc), username=self._username, auth_type=self._auth)
            return f"login failed: {exc}"
        except TimeoutError:
            self._log.warning("ami_connect_failed", reason=f"{stage} timeout", host=self.host, port=self.port)
            return f"{stage} timeout"
        except (AmiConnectionError, OSError, ssl.SSLError) as exc:
            self._log.warning("ami_connect_failed", reason=str(exc), host=self.host, port=self.port)
            return str(exc)
        except Exception as exc:  # a bug must not end the reconnect loop
            self._log.exception("ami_session_error")
            return f"internal error: {exc!r}"
        finally:
            self._writer = None
            if self._state is ConnectionState.CONNECTED:
                self._state = ConnectionState.WAITING
                self._connected.clear()
            self._pending.fail_all("connection lost")
            if writer is not None:
                writer.close()
                with suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()

    async def _await_fully_booted(
        self, reader: asyncio.StreamReader, parser: AmiParser
    ) -> tuple[AmiMessage | None, list[tuple[AmiMessage, float]]]:
        """Right after login Asterisk sends `FullyBooted` when `system` events are on; wait briefly for it."""
        early: list[tuple[AmiMessage, float]] = []
        mask = {part.strip().lower() for part in self._events.split(",")}
        if not mask & {"on", "all", "system", ""}:
            return None, early
        try:
            async with asyncio.timeout(self._fully_booted_timeout):
                while True:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        raise AmiConnectionError("connection closed right after login")
                    at = time.time()
                    booted: AmiMessage | None = None
                    for message in parser.feed(data):
                        if booted is None and message.event == "FullyBooted":
                            booted = message
                        elif message.event is not None:
                            early.append((message, at))
                    self._log_problems(parser)
                    if booted is not None:
                        return booted, early
        except TimeoutError:
            self._log.info("ami_fully_booted_missing", waited=self._fully_booted_timeout)
            return None, early

    def _go_live(self, writer: asyncio.StreamWriter, banner: str, fully_booted: AmiMessage | None,
                 early: list[tuple[AmiMessage, float]]) -> None:
        self._writer = writer
        self.banner = banner
        self._session_started = time.monotonic()
        if self._logins:
            self.reconnects += 1
        self._logins += 1
        self._state = ConnectionState.CONNECTED
        self._queue.put(Reconnected(banner, fully_booted, time.time()))
        for message, at in early:
            self._enqueue(message, at)
        self._connected.set()
        uptime = fully_booted.get("Uptime") if fully_booted else None
        self._log.info("ami_connected", host=self.host, port=self.port, ami_version=banner.removeprefix(BANNER_PREFIX),
                       uptime=uptime, reconnects=self.reconnects)

    async def _serve(self, reader: asyncio.StreamReader, parser: AmiParser) -> str:
        read_task = asyncio.create_task(self._read_loop(reader, parser), name=f"ami[{self.name}].reader")
        ping_task = asyncio.create_task(self._ping_loop(), name=f"ami[{self.name}].pinger")
        try:
            done, _ = await asyncio.wait((read_task, ping_task), return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            read_task.cancel()
            ping_task.cancel()
            await asyncio.gather(read_task, ping_task, return_exceptions=True)

    async def _read_loop(self, reader: asyncio.StreamReader, parser: AmiParser) -> str:
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except (OSError, ssl.SSLError) as exc:
                return f"read error: {exc}"
            if not data:
                return "connection closed by Asterisk"
            at = time.time()
            filtered = parser.stats.filtered_frames
            try:
                messages = parser.feed(data)
            except Exception:
                self._log.exception("ami_parser_error")
                parser.reset()
                continue
            # Events the frame filter dropped unparsed were still received (counted, never queued).
            self.events_received += parser.stats.filtered_frames - filtered
            self._log_problems(parser)
            for message in messages:
                try:
                    self._dispatch(message, at)
                except Exception:
                    self._log.exception("ami_dispatch_error", ami_event=message.event, action_id=message.action_id)

    async def _ping_loop(self) -> str:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await self.send_action("Ping", {}, timeout=self._ping_timeout)
            except AmiTimeoutError:
                self._log.warning("ami_ping_timeout", timeout=self._ping_timeout)
                return f"no Ping reply within {self._ping_timeout} s"
            except AmiConnectionError as exc:
                return f"ping failed: {exc}"
            except AmiActionError as exc:  # an error reply still proves the link is alive
                self._log.debug("ami_ping_error_reply", reason=str(exc))

    def _log_problems(self, parser: AmiParser) -> None:
        for problem in parser.drain_problems():
            self._log.warning("ami_frame_skipped", problem=problem)

    # ----------------------------------------------------------------- routing

    def _dispatch(self, message: AmiMessage, at: float) -> None:
        if self._pending.route(message):
            return
        if message.event is not None:
            self._enqueue(message, at)
        else:
            self._log.debug("ami_unmatched_reply", response=message.response, action_id=message.action_id)

    def _enqueue(self, message: AmiMessage, at: float) -> None:
        self.events_received += 1
        if self._queue.put(Received(message, at)):
            self.dropped_events += 1
            if not self._overflowing:
                self._overflowing = True
                self._log.warning("ami_queue_overflow", queue_size=self._queue.maxsize,
                                  hint="the event consumer is not keeping up; the oldest events are being dropped")
