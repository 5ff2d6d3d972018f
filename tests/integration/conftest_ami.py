"""Shared helpers for the AMI integration tests (imported explicitly; not a conftest plugin)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.pbx.asterisk.connection import AmiConnection
from bridge.pbx.asterisk.items import AmiItem, Disconnected, Received, Reconnected
from bridge.pbx.asterisk.protocol import TERMINATOR, AmiMessage, AmiParser, encode_action
from bridge.sim.ami import AmiSimulator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"
USER = "bridge"
SECRET = "s3cret-for-tests"

# Small timings so reconnect and keepalive tests finish quickly.
FAST: dict[str, Any] = {
    "connect_timeout": 1.0, "action_timeout": 1.0, "ping_interval": 30.0, "ping_timeout": 0.3,
    "reconnect_min": 0.02, "reconnect_max": 0.1, "fully_booted_timeout": 0.5, "events": "on",
}


@pytest.fixture
async def sim() -> AsyncIterator[AmiSimulator]:
    async with AmiSimulator(USER, SECRET, fixtures_dir=FIXTURES) as simulator:
        yield simulator


def make_conn(sim: AmiSimulator, **overrides: Any) -> AmiConnection:
    options = {**FAST, **overrides}
    secret = options.pop("secret", SECRET)
    return AmiConnection("127.0.0.1", sim.port, USER, secret, **options)


class Collector:
    """Drains `conn.messages()` in the background so tests can wait for what they expect."""

    def __init__(self, conn: AmiConnection) -> None:
        self.conn = conn
        self.items: list[AmiItem] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async for item in self.conn.messages():
            self.items.append(item)
            self._changed.set()

    async def wait_for(self, predicate: Callable[[list[AmiItem]], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.items):
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, test: Callable[[AmiMessage], bool], timeout: float = 5.0) -> AmiMessage:
        await self.wait_for(lambda items: any(test(m) for m in events(items)), timeout)
        return next(m for m in events(self.items) if test(m))

    def events(self) -> list[AmiMessage]:
        return events(self.items)


def events(items: list[AmiItem]) -> list[AmiMessage]:
    return [item.message for item in items if isinstance(item, Received)]


def markers(items: list[AmiItem]) -> list[str]:
    return [type(item).__name__ for item in items if isinstance(item, (Reconnected, Disconnected))]


async def eventually(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class RawAmi:
    """A bare TCP AMI client for talking to the simulator without our connection logic."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = AmiParser()
        self.banner = ""

    @classmethod
    async def open(cls, port: int) -> RawAmi:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        raw.banner = (await reader.readuntil(b"\r\n")).decode().strip()
        return raw

    async def request(self, action: str, headers: list[tuple[str, str]]) -> AmiMessage:
        self.writer.write(encode_action(action, headers))
        await self.writer.drain()
        return await self.read_message()

    async def read_message(self, timeout: float = 2.0) -> AmiMessage:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.reader.readuntil(TERMINATOR)
                messages = self.parser.feed(frame)
                if messages:
                    return messages[0]

    async def login(self, events: str = "on") -> AmiMessage:
        reply = await self.request("Login", [("ActionID", "raw-1"), ("Username", USER), ("Secret", SECRET),
                                             ("Events", events)])
        assert reply.response == "Success", reply.headers
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
