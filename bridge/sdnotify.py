"""The systemd notify protocol (sd_notify) in a few lines, and a watchdog loop that pets systemd only while healthy.

systemd passes `NOTIFY_SOCKET` (a filesystem path, or `@name` for an abstract socket) to `Type=notify` services; a
service reports by sending datagrams of `KEY=value` lines there. With `WatchdogSec=` set, systemd also passes
`WATCHDOG_USEC` and restarts the service when `WATCHDOG=1` stops arriving. Without `NOTIFY_SOCKET` every call is a
no-op, so the daemon runs the same under a terminal, in tests and under systemd. Sending never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

import structlog

__all__ = ["Notifier", "WatchdogLoop"]

log = structlog.get_logger(__name__)

_MAX_STATUS = 400


class Notifier:
    """Sends state changes to systemd; every method is a no-op when there is no notify socket."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (the watchdog is ours only if the pid matches)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = None
        pid = env.get("WATCHDOG_PID")
        if pid is not None and pid.strip() != str(os.getpid()):
            usec = None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the systemd timeout), or None when no watchdog is configured."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # One line only: a line break would let the text smuggle in another field (e.g. READY=1).
        clean = " ".join(text.split())[:_MAX_STATUS]
        return self.notify(f"STATUS={clean}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; True if sent (False when disabled or the send failed).

        A fresh non-blocking socket per message, as sd_notify does: nothing stays open, and a full systemd queue
        drops the message instead of stalling the event loop.
        """
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sdnotify_send_failed", error=str(exc), fields=[f.split("=", 1)[0] for f in fields])
            return False
        return True


def _socket_address(address: str | None) -> str | None:
    """A filesystem path or an abstract name; anything else (vsock:, relative paths) is ignored."""
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("sdnotify_unsupported_socket", address=address)
    return None


class WatchdogLoop:
    """Sends WATCHDOG=1 every `interval` seconds while `is_healthy()` holds; an async context manager.

    The pings come from the event loop itself, so a blocked loop stops them and systemd restarts the service; so does
    a health check that keeps failing (a stuck part), since the pings are then withheld on purpose.
    """

    def __init__(self, notifier: Notifier, is_healthy: Callable[[], bool], *, interval: float | None = None) -> None:
        self._notifier = notifier
        self._is_healthy = is_healthy
        self._interval = interval if interval is not None else notifier.watchdog_interval()
        if self._interval is not None and self._interval <= 0:
            raise ValueError("watchdog interval must be positive")
        self._task: asyncio.Task[None] | None = None
        self._entered = False
        self._withheld = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("WatchdogLoop can be entered once")
        self._entered = True
        if self._interval is not None and self._notifier.enabled:
            self._task = asyncio.create_task(self._loop(self._interval), name="sdnotify.watchdog")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check_once(self) -> bool:
        """One round: ping if healthy; returns whether a ping was sent."""
        try:
            healthy = bool(self._is_healthy())
        except Exception:
            log.exception("watchdog_health_check_failed")
            healthy = False
        if not healthy:
            if not self._withheld:
                log.warning("watchdog_withheld", reason="health check failing")
            self._withheld = True
            return False
        if self._withheld:
            log.info("watchdog_resumed")
        self._withheld = False
        return self._notifier.watchdog()

    async def _loop(self, interval: float) -> None:
        while True:
            self.check_once()
            await asyncio.sleep(interval)
