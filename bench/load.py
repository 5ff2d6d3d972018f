"""Steady call load with time scaling, and the backlog it leaves in the bridge (used by throughput and recovery).

Time scaling: with factor k the portal's leaky bucket drains k times faster (2k req/s, same burst), the bridge's own
limiter is set to the same, the round trip is divided by k, calls arrive k times faster and every recorded call
plays k times faster. Everything the portal limit and the call mix decide then happens k times faster, and times and
rates are reported in simulated units (real seconds x k, real calls/h / k). What does not scale is the CPU cost per
call (so the bridge's CPU share is reported: far below one core means the scaling did not distort the result) and
the bridge's fixed timers (retry backoff, idle polls), which matter only after failures.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from bench.portal import finished_phones, phone_key
from bench.rig import Rig
from bench.stats import percentile
from bench.traffic import CallFactory, caller_number

__all__ = ["LOAD_TEMPLATES", "LoadRun", "Sample", "Traffic", "run_load"]

# The simulator's realistic single-call mix, minus internal calls (not sent to Bitrix24 by default), so every call
# offered is one the portal must receive.
LOAD_TEMPLATES = ("inbound_answered", "inbound_missed", "inbound_busy", "inbound_queue", "recorded",
                  "outbound_answered", "outbound_noanswer", "fpbx_queue_local")


class Traffic:
    """Poisson arrivals of re-identified recorded calls (round robin over the templates), built lazily."""

    def __init__(self, templates: Sequence[str] = LOAD_TEMPLATES, *, seed: int = 24, first_call: int = 300_000) -> None:
        self.factories = [CallFactory(name) for name in templates]
        self._rng = random.Random(seed)
        self._numbers = itertools.count(first_call)

    def script(self, rate_per_hour: float, sim_seconds: float, offered: list[str],
               ends: dict[str, float] | None = None) -> Iterator[tuple[float, bytes]]:
        """`(delay, raw)` in simulated seconds for calls starting during `sim_seconds`; each call's customer number
        is appended to `offered` when its first frame is produced, and `ends` gets the (simulated) time of its last
        frame, counted from the start of the script."""
        mean_gap = 3600.0 / rate_per_hour
        heap: list[tuple[float, int, int, list[tuple[float, bytes]]]] = []
        order = itertools.count()
        next_start = self._rng.expovariate(1.0 / mean_gap)
        now = 0.0
        index = 0
        while heap or next_start < sim_seconds:
            if next_start < sim_seconds and (not heap or next_start <= heap[0][0]):
                call_no = next(self._numbers)
                factory = self.factories[index % len(self.factories)]
                index += 1
                frames = factory.make(call_no)
                offered.append(phone_key(caller_number(call_no)))
                if ends is not None:
                    ends[offered[-1]] = next_start + frames[-1][0]
                heapq.heappush(heap, (next_start + frames[0][0], next(order), 0, frames))
                next_start += self._rng.expovariate(1.0 / mean_gap)
                continue
            at, _, position, frames = heapq.heappop(heap)
            yield max(0.0, at - now), frames[position][1]
            now = max(now, at)
            if position + 1 < len(frames):
                nxt = position + 1
                heapq.heappush(heap, (at + frames[nxt][0] - frames[position][0], next(order), nxt, frames))


@dataclass(slots=True)
class Sample:
    sim_t: float  # simulated seconds since the load started
    backlog: int
    dead: int


@dataclass(slots=True)
class LoadRun:
    """What one load run observed; times in simulated seconds."""

    rate_per_hour: float
    scale: float
    sim_seconds: float
    offered: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    finished: int = 0
    drain_seconds: float | None = None
    load_real_seconds: float = 0.0
    bridge_cpu_share: float = 0.0
    portal_requests: int = 0
    portal_refused: int = 0
    portal_methods: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    generator_max_lag_ms: float = 0.0  # the load generator's event loop, late by at most this much
    ami_sessions_dropped: int = 0  # the simulator cut the bridge off for reading too slowly

    def backlog_between(self, start: float, end: float) -> list[int]:
        return [s.backlog for s in self.samples if start <= s.sim_t < end]

    def summary(self) -> dict[str, Any]:
        q = self.sim_seconds / 4
        second = self.backlog_between(q, 2 * q) or [0]
        last = self.backlog_between(3 * q, 4 * q) or [0]
        return {
            "rate_per_hour": round(self.rate_per_hour),
            "calls_offered": len(self.offered),
            "calls_finished_in_portal": self.finished,
            "backlog_max": max((s.backlog for s in self.samples), default=0),
            "backlog_p90_2nd_quarter": round(percentile(second, 90)),
            "backlog_p90_last_quarter": round(percentile(last, 90)),
            "drain_seconds_after_load": None if self.drain_seconds is None else round(self.drain_seconds, 1),
            "portal_requests": self.portal_requests,
            "portal_refused_503": self.portal_refused,
            "methods_executed": self.portal_methods,
            "methods_per_call": round(self.portal_methods / max(1, len(self.offered)), 2),
            "bridge_cpu_share": round(self.bridge_cpu_share, 3),
            "dead_letters": self.dead_letters,
            "generator_max_lag_ms": round(self.generator_max_lag_ms, 1),
            "ami_sessions_dropped": self.ami_sessions_dropped,
        }


async def run_load(rig: Rig, traffic: Traffic, *, rate_per_hour: float, scale: float, sim_seconds: float,
                   drain_limit: float = 120.0, poll: float = 0.25) -> LoadRun:
    """Offer calls at `rate_per_hour` (simulated) for `sim_seconds` (simulated), then wait up to `drain_limit`
    simulated seconds for the backlog to empty. Samples the bridge's backlog every `poll` real seconds."""
    run = LoadRun(rate_per_hour, scale, sim_seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    cpu_start = rig.bridge.cpu_seconds()
    script = traffic.script(rate_per_hour, sim_seconds, run.offered)
    # `play` only iterates its script; a generator keeps thousands of calls out of memory.
    player = asyncio.create_task(rig.ami.play(cast(Sequence[tuple[float, bytes]], script), speed=scale))
    sampler = asyncio.create_task(_sample(rig, run, start, scale, poll))
    lag = asyncio.create_task(_watch_lag(run))
    sessions_before = rig.ami.stats.sessions_served
    try:
        await player
        run.load_real_seconds = loop.time() - start
        run.bridge_cpu_share = (rig.bridge.cpu_seconds() - cpu_start) / max(1e-9, run.load_real_seconds)
        drained_at = await _wait_drained(rig, run, drain_limit / scale)
        if drained_at is not None:
            run.drain_seconds = max(0.0, (drained_at - start) * scale - run.load_real_seconds * scale)
    finally:
        for task in (sampler, lag):
            task.cancel()
        await asyncio.gather(sampler, lag, return_exceptions=True)
    # The bridge logs in twice (events and actions); any further login followed a dropped session.
    run.ami_sessions_dropped = rig.ami.stats.sessions_served - sessions_before
    run.finished = len(finished_phones(rig.portal) & set(run.offered))
    run.portal_requests = len(rig.portal.requests)
    run.portal_refused = sum(1 for r in rig.portal.requests if r.http_status == 503)
    run.portal_methods = sum(1 for _ in _methods(rig))
    run.dead_letters = rig.bridge.dead_letters()
    return run


def _methods(rig: Rig) -> Iterator[str]:
    for request in rig.portal.requests:
        if request.http_status == 200 and request.method not in ("batch", "user.get"):
            yield request.method
    for command in rig.portal.commands:
        if command.error is None:
            yield command.method


async def _sample(rig: Rig, run: LoadRun, start: float, scale: float, poll: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            status = await rig.bridge.status()
            dispatcher = status.get("dispatcher") or {}
            run.samples.append(Sample((loop.time() - start) * scale, int(dispatcher.get("backlog", 0)),
                                      int(status.get("dead_letters", 0))))
        except Exception:  # a slow answer under load is not a reason to stop sampling
            pass
        await asyncio.sleep(poll)


async def _watch_lag(run: LoadRun, interval: float = 0.02) -> None:
    """How late this process's event loop wakes up: a late load generator bursts frames instead of pacing them."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        run.generator_max_lag_ms = max(run.generator_max_lag_ms, (loop.time() - before - interval) * 1000)


async def _wait_drained(rig: Rig, run: LoadRun, limit: float) -> float | None:
    """Real time at which every offered call was finished in the portal and nothing was pending, or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    wanted = set(run.offered)
    while loop.time() < deadline:
        if wanted <= finished_phones(rig.portal):
            backlog = await rig.bridge.backlog()
            if backlog == 0:
                return loop.time()
        await asyncio.sleep(0.05)
    return None
