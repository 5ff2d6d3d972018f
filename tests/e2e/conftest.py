"""Shared end-to-end plumbing: both simulators on port 0, settings pointing at them, a real in-process `Bridge`.

    async with simulators() as sims:                        # AMI simulator + Bitrix24 portal simulator
        async with running_bridge(sims.settings(tmp_path)) as bridge:
            await sims.ami.play_trace("inbound_answered", speed=200)
            await settle(bridge)

The bridge runs exactly as `b24-bridge run` would (`Bridge.run` with an injected shutdown), talking real TCP to the
AMI simulator and real HTTP to the portal simulator; only its storage lives in the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from bridge.app import Bridge
from bridge.config import (
    AmiSettings,
    Bitrix24Settings,
    HttpSettings,
    LogSettings,
    RecordingsSettings,
    Settings,
    StorageSettings,
)
from bridge.metrics import Metrics
from bridge.model import CallEvent
from bridge.sim.ami import AmiSimulator
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from bridge.sync.dispatcher import DispatcherState

DEFAULT_USER_ID = 1
# Extension 100 is the default user; agents 101..110 get user ids unlike their extensions, so tests tell them apart.
USERS: list[dict[str, Any]] = [
    {"ID": DEFAULT_USER_ID, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    *({"ID": 500 + n, "NAME": f"Agent{n}", "LAST_NAME": "E2E", "UF_PHONE_INNER": str(n), "ACTIVE": True}
      for n in range(101, 111)),
]
EVENT_TOKEN = "e2e-application-token-0123456789"


def user_for(extension: str | None) -> int:
    """The Bitrix24 user the portal simulator holds for `extension` (the default user when none has it)."""
    for user in USERS:
        if extension is not None and user["UF_PHONE_INNER"] == extension:
            return int(user["ID"])
    return DEFAULT_USER_ID


@dataclass
class Simulators:
    ami: AmiSimulator
    portal: Bitrix24Simulator

    def settings(self, tmp_path: Path, **sections: BaseModel) -> Settings:
        """Settings for a bridge between these simulators; `sections` replace whole sections (recordings=...)."""
        base = Settings(
            ami=AmiSettings(port=self.ami.port, username=self.ami.username, secret=self.ami.secret,
                            ping_interval=5.0, reconnect_min=0.05, reconnect_max=0.5),
            bitrix24=Bitrix24Settings(webhook_url=self.portal.webhook_url, default_user_id=DEFAULT_USER_ID,
                                      requests_per_second=self.portal.bucket.rate,
                                      burst=int(self.portal.bucket.burst)),
            http=HttpSettings(port=0, application_token=EVENT_TOKEN),
            storage=StorageSettings(path=tmp_path / "state" / "bridge.sqlite3"),
            recordings=RecordingsSettings(enabled=False),
            log=LogSettings(level="warning", format="console"),
        )
        return base.model_copy(update=sections)


@contextlib.asynccontextmanager
async def simulators(*, rate: float = 1000.0, burst: int = 1000, latency: float = 0.0,
                     users: list[dict[str, Any]] | None = None) -> AsyncIterator[Simulators]:
    """The AMI simulator (recorded timeline in `Timestamp:` headers) and a portal with the given limits."""
    async with AmiSimulator(secret=secrets.token_hex(8)) as ami, \
            Bitrix24Simulator(users=users if users is not None else USERS, rate=rate, burst=burst,
                              latency=latency) as portal:
        ami.timestamps = True  # talk durations stay true although traces replay many times faster
        yield Simulators(ami, portal)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings, *, observers: Sequence[Callable[[CallEvent], None]] = (),
                         drain_seconds: float = 2.0, ready_timeout: float = 15.0,
                         wait_dispatcher: bool = True) -> AsyncIterator[Bridge]:
    """A `Bridge` running in this loop until the block ends (then shut down as on SIGTERM, and awaited);
    `observers` see every CallEvent the bridge handles. `wait_dispatcher=False` for a bridge whose portal cannot
    load the user directory (the dispatcher then waits for it in the background)."""
    bridge = Bridge(settings, metrics=Metrics(process_metrics=False), event_observers=list(observers),
                    drain_seconds=drain_seconds)
    stop = asyncio.Event()
    ready = asyncio.Event()
    runner = asyncio.create_task(bridge.run(stop.wait(), ready=lambda _bridge: ready.set()), name="e2e.bridge")
    try:
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, runner}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if runner.done():
            runner.result()  # the bridge failed to start: raise its error here
        assert ready.is_set(), f"the bridge was not ready within {ready_timeout} s"
        if wait_dispatcher:
            await until(lambda: bridge.dispatcher is not None
                        and bridge.dispatcher.state is DispatcherState.RUNNING)
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


@contextlib.asynccontextmanager
async def ami_simulator() -> AsyncIterator[AmiSimulator]:
    """One more AMI simulator set up as `simulators()` sets up its own (for a second site's PBX)."""
    async with AmiSimulator(secret=secrets.token_hex(8)) as ami:
        ami.timestamps = True
        yield ami


async def scrape(bridge: Bridge) -> str:
    """The bridge's GET /metrics body."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{bridge.web_port}/metrics") as response:
        assert response.status == 200
        return await response.text()


def metric(exposition: str, name: str, **labels: str) -> float | None:
    """The value of sample `name` whose labels include `labels` (summed over the rest); None when there is none."""
    found: list[float] = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append(float(sample.value))
    return sum(found) if found else None


async def until(predicate: Callable[[], bool], timeout: float = 10.0, *, interval: float = 0.02) -> None:
    """Poll `predicate` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def settle(bridge: Bridge, timeout: float = 20.0, *, quiet: float = 0.3) -> None:
    """Wait until the bridge is idle (no live call, nothing to send) and stays so for `quiet` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            await until(bridge.idle, timeout)
            await asyncio.sleep(quiet)
            if bridge.idle():
                return


def dead_letters(bridge: Bridge) -> list[tuple[str, str | None]]:
    """(kind, reason) of every dead letter the bridge holds."""
    assert bridge.outbox is not None
    return [(row.kind, row.reason) for row in bridge.outbox.list_rows("dead", limit=1000)]


def finished_calls(portal: Bitrix24Simulator) -> list[SimCall]:
    return [call for call in portal.calls.values() if call.finish is not None]


def executed(portal: Bitrix24Simulator, method: str) -> list[tuple[float, dict[str, Any]]]:
    """(time, params) of every successful `method` call the portal ran, single requests and batch commands alike."""
    wanted = method.lower()
    singles = [(r.t, r.params) for r in portal.requests
               if r.method == wanted and r.http_status == 200 and r.error is None]
    commands = [(c.t, c.params) for c in portal.commands if c.method == wanted and c.error is None]
    return sorted(singles + commands, key=lambda item: item[0])
