"""Bitrix24 misbehaves while calls keep coming: afterwards every call is in the portal exactly once, in order.

Each scenario runs a real bridge (in this process) between the AMI simulator playing recorded calls and the Bitrix24
simulator, switches one portal fault on mid-traffic, and then judges the portal's own record (`check_portal`):
every call registered once, carded, finished once, recorded when somebody talked; register < show < finish < attach;
no call the PBX never had. Each scenario also proves from the record that its fault really hit the bridge.

The default run keeps faults short (about 5 s) and runs the scenarios side by side; the soak versions keep calls
coming at 5/s through 60-second faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.crm.bitrix24.auth import TokenStore, tokens_from_payload
from bridge.sim.bitrix24 import Bitrix24Simulator
from tests.fault.conftest import (
    FINISH,
    REGISTER,
    Verdict,
    bridge_settings,
    describe,
    portal_log,
    running_bridge,
    settle,
    simulators,
    soak,
)


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    hits: int = 0  # how often the fault struck, where the record cannot tell (slow answers)


Inject = Callable[[Bitrix24Simulator, float], Awaitable[Window]]
Proof = Callable[[Bitrix24Simulator, Window], list[str]]


@dataclass(frozen=True)
class Fault:
    """`inject(portal, seconds)` runs the fault for about `seconds`; `proof` shows from the record that it hit."""

    inject: Inject
    proof: Proof
    oauth: bool = False


async def _outage(portal: Bitrix24Simulator, seconds: float) -> Window:
    start = time.time()
    portal.go_down(seconds)
    await asyncio.sleep(seconds)
    return Window(start, time.time())


async def _storm(portal: Bitrix24Simulator, seconds: float) -> Window:
    """QUERY_LIMIT_EXCEEDED from the portal's own leaky bucket, squeezed to a trickle for `seconds`."""
    start = time.time()
    rate, burst = portal.bucket.rate, portal.bucket.burst
    portal.bucket.rate, portal.bucket.burst = 0.2, 1
    portal.fail_next(3, 503)  # and a few bare 503s on top, so the storm starts at once
    try:
        await asyncio.sleep(seconds)
    finally:
        portal.bucket.rate, portal.bucket.burst = rate, burst
    return Window(start, time.time())


async def _pause_finish(portal: Bitrix24Simulator, seconds: float) -> Window:
    start = time.time()
    portal.pause_method(FINISH, seconds)
    await asyncio.sleep(seconds)
    return Window(start, time.time())


async def _slow(portal: Bitrix24Simulator, seconds: float) -> Window:
    """Every answer takes 5 s for `seconds` (at least two answers)."""
    start = time.time()
    take_delay = portal.faults.take_delay
    slowed: list[float] = []

    def counted() -> float:
        delay = take_delay()
        if delay >= 5.0:
            slowed.append(delay)
        return delay

    portal.faults.take_delay = counted  # type: ignore[method-assign]
    portal.slow(5.0)
    try:
        await asyncio.sleep(max(seconds, 6.0))
    finally:
        portal.slow(0)
        portal.faults.take_delay = take_delay  # type: ignore[method-assign]
    return Window(start, time.time(), hits=len(slowed))


async def _html(portal: Bitrix24Simulator, seconds: float) -> Window:
    """The portal's proxy answers every request with an nginx-style HTML 502 page while the window lasts.

    `fail_next` queues failures for whatever requests come next, so one is queued at a time, the next once it was
    served: queueing more than get served would outlast the window (a backing-off client sends rarely).
    """
    start = time.time()
    injected = 0
    while time.time() - start < seconds:
        if sum(1 for r in portal.requests if r.error == "html") >= injected:
            portal.fail_next(1, 502, html=True)
            injected += 1
        await asyncio.sleep(0.05)
    portal.faults.clear()  # the one still queued would strike after the window
    return Window(start, time.time())


async def _resets(portal: Bitrix24Simulator, seconds: float) -> Window:
    """Short blips of connection resets (RST) between normal answers."""
    start = time.time()
    while time.time() - start < seconds:
        portal.go_down(0.4)
        await asyncio.sleep(1.2)
    return Window(start, time.time())


async def _expire(portal: Bitrix24Simulator, seconds: float) -> Window:
    """Every access token the app holds expires (twice in the short run, every 10 s in the long one)."""
    start = time.time()
    while True:
        portal.expire_tokens()
        if time.time() - start + 2.5 > seconds:
            break
        await asyncio.sleep(min(10.0, seconds / 2))
    return Window(start, time.time())


def _errors(portal: Bitrix24Simulator, window: Window, *words: str) -> int:
    return sum(1 for r in portal.requests
               if window.start - 1 <= r.t and r.error is not None and any(w in r.error for w in words))


def _proof_outage(portal: Bitrix24Simulator, window: Window) -> list[str]:
    return [] if _errors(portal, window, "connection_reset") else ["the outage never refused a request"]


def _proof_storm(portal: Bitrix24Simulator, window: Window) -> list[str]:
    hits = _errors(portal, window, "QUERY_LIMIT_EXCEEDED")
    return [] if hits >= 4 else [f"only {hits} QUERY_LIMIT_EXCEEDED answers: no storm"]


def _proof_pause(portal: Bitrix24Simulator, window: Window) -> list[str]:
    log = portal_log(portal)
    inside = [e for e in log if window.start + 0.2 < e.t < window.end - 0.2]
    problems = []
    if not any(e.method == FINISH and e.error == "OPERATION_TIME_LIMIT" for e in log):
        problems.append("finish was never refused with OPERATION_TIME_LIMIT")
    if any(e.method == FINISH and e.error is None for e in inside):
        problems.append("a finish went through while the method was paused")
    if not any(e.method == REGISTER and e.error is None for e in inside):
        problems.append("no register went through while finish was paused: other methods did not keep flowing")
    return problems


def _proof_slow(portal: Bitrix24Simulator, window: Window) -> list[str]:
    return [] if window.hits >= 2 else [f"only {window.hits} requests were answered slowly"]


def _proof_html(portal: Bitrix24Simulator, window: Window) -> list[str]:
    hits = sum(1 for r in portal.requests if r.error == "html")
    return [] if hits >= 3 else [f"only {hits} HTML error pages were served"]


def _proof_expire(portal: Bitrix24Simulator, window: Window) -> list[str]:
    problems = []
    if portal.refreshes < 1:
        problems.append("the tokens were never refreshed")
    if not _errors(portal, window, "expired_token"):
        problems.append("no request was refused with expired_token")
    return problems


FAULTS: dict[str, Fault] = {
    "outage": Fault(_outage, _proof_outage),
    "503_storm": Fault(_storm, _proof_storm),
    "429_finish_paused": Fault(_pause_finish, _proof_pause),
    "5s_answers": Fault(_slow, _proof_slow),
    "html_502": Fault(_html, _proof_html),
    "connection_resets": Fault(_resets, _proof_outage),
    "expired_tokens": Fault(_expire, _proof_expire, oauth=True),
}


@dataclass
class Outcome:
    name: str
    verdict: Verdict
    proof: list[str]
    detail: str
    seconds: float


async def run_scenario(name: str, tmp: Path, *, fault_seconds: float, load_seconds: float, rate: float,
                       speed: float, settle_timeout: float) -> Outcome:
    fault = FAULTS[name]
    began = time.monotonic()
    async with simulators(tmp, speed=speed) as stack:
        settings = bridge_settings(stack.ami, stack.portal, tmp, oauth=fault.oauth)
        if fault.oauth:  # the app was installed before: its tokens are on disk
            TokenStore(settings.storage.path.parent / "tokens.json").save(
                tokens_from_payload(stack.portal.issue_tokens()))
        async with running_bridge(settings) as bridge:
            load = asyncio.create_task(stack.driver.for_seconds(load_seconds, rate))
            await asyncio.sleep(min(1.0, load_seconds / 4))
            window = await fault.inject(stack.portal, fault_seconds)
            await load
            verdict = await settle(bridge, stack.portal, stack.driver, timeout=settle_timeout)
            detail = describe(verdict, bridge)
        proof = fault.proof(stack.portal, window)
    return Outcome(name, verdict, proof, detail, time.monotonic() - began)


def _report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        state = "ok" if not o.verdict.problems and not o.proof else "FAILED"
        lines.append(f"{o.name}: {state} ({o.verdict.calls} calls, {o.seconds:.1f} s)")
        lines += [f"    {p}" for p in [*o.proof, *o.detail.splitlines()] if p]
    return "\n".join(lines)


async def test_portal_faults_short(tmp_path: Path, quiet_logs: object) -> None:
    """Every fault for ~5 s, side by side (each scenario has its own simulators and bridge)."""
    outcomes = await asyncio.gather(*(
        run_scenario(name, tmp_path / name, fault_seconds=5.0, load_seconds=4.0, rate=2.5, speed=8.0,
                     settle_timeout=60.0)
        for name in FAULTS))
    report = _report(list(outcomes))
    print(report)
    assert all(not o.verdict.problems and not o.proof and o.verdict.calls >= 8 for o in outcomes), report


@soak
@pytest.mark.parametrize("name", list(FAULTS))
async def test_portal_fault_soak(name: str, tmp_path: Path, quiet_logs: object) -> None:
    """60 s of the fault with calls at 5/s in real time (each call lasts as long as it did on the real PBX)."""
    outcome = await run_scenario(name, tmp_path, fault_seconds=60.0, load_seconds=75.0, rate=5.0, speed=1.0,
                                 settle_timeout=240.0)
    report = _report([outcome])
    print(report)
    assert not outcome.verdict.problems and not outcome.proof, report
    assert outcome.verdict.calls >= 300, report
