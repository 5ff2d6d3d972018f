"""sd_notify against a fake systemd: a bound AF_UNIX datagram socket (path and abstract) that records datagrams."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sdnotify import Notifier, WatchdogLoop


class FakeSystemd:
    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(5)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    with tempfile.TemporaryDirectory() as tmp:  # short path: AF_UNIX paths are limited to ~100 bytes
        path = str(Path(tmp) / "notify")
        fake = FakeSystemd(path, path)
        yield fake
        fake.sock.close()


def test_ready_status_watchdog_stopping_reach_the_socket(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert notifier.enabled
    assert notifier.ready()
    assert systemd.receive() == "READY=1"
    assert notifier.status("AMI connected, 3 calls")
    assert systemd.receive() == "STATUS=AMI connected, 3 calls"
    assert notifier.watchdog()
    assert systemd.receive() == "WATCHDOG=1"
    assert notifier.stopping()
    assert systemd.receive() == "STOPPING=1"


def test_status_text_cannot_smuggle_other_fields(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address)
    notifier.status("ok\nREADY=1\r\nMAINPID=1")
    assert systemd.receive() == "STATUS=ok READY=1 MAINPID=1"


def test_abstract_socket_address() -> None:
    name = f"b24bridge-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("@" + name, "\0" + name)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": fake.address}).ready()
        assert fake.receive() == "READY=1"
    finally:
        fake.sock.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"},
                                 {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_without_a_usable_socket_everything_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier.from_env(env)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid() -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    mine = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval() == 1.0
    other = {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval() is None
    for bad in ("", "abc", "0", "-5"):
        assert Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": bad}).watchdog_interval() is None


def test_watchdog_pings_only_while_healthy(systemd: FakeSystemd) -> None:
    healthy: list[bool | None] = [True]

    def check() -> bool:
        if healthy[0] is None:
            raise RuntimeError("health check blew up")
        return bool(healthy[0])

    loop = WatchdogLoop(Notifier(systemd.address), check, interval=1.0)
    assert loop.check_once()
    assert systemd.receive() == "WATCHDOG=1"
    healthy[0] = False
    assert not loop.check_once()
    healthy[0] = None
    assert not loop.check_once()
    assert systemd.nothing_waiting()
    healthy[0] = True
    assert loop.check_once()
    assert systemd.receive() == "WATCHDOG=1"


async def test_watchdog_loop_task_pings_and_stops_with_the_context(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address, watchdog_usec=20_000)  # every 10 ms
    watchdog = WatchdogLoop(notifier, lambda: True)
    async with watchdog:
        assert watchdog.running
        first = await asyncio.to_thread(systemd.receive)
        second = await asyncio.to_thread(systemd.receive)
        assert first == second == "WATCHDOG=1"
    assert not is_running(watchdog)
    with pytest.raises(RuntimeError):
        await watchdog.__aenter__()


def is_running(watchdog: WatchdogLoop) -> bool:
    return watchdog.running


async def test_watchdog_loop_without_watchdog_configured_starts_nothing() -> None:
    async with WatchdogLoop(Notifier(None), lambda: True) as watchdog:
        assert not watchdog.running
