"""Memory: resident set size (VmRSS from /proc) of the bridge process idle and with 1,000 and 5,000 calls in progress.

Calls in progress are real recorded inbound calls cut short: half stop right after the agent's phone starts ringing,
half right after the agent answers; none ever hangs up. The portal simulator is given a generous limit here
(1,000 req/s) so the cards of thousands of calls are delivered in seconds; each reading is taken once every call has
its card in the portal and the bridge's backlog is empty, i.e. the steady state of N open calls, not the transient
outbox of a burst. The peak (VmHWM) over the whole run is reported too.
"""

from __future__ import annotations

import asyncio
import time

from bench.portal import card_times
from bench.result import BenchResult, Check
from bench.rig import BridgeOptions, Rig
from bench.traffic import CallFactory, Frames, answered_index, merge, ring_index

NAME = "memory"
TITLE = "Resident memory with calls in progress"
TARGET_MB = 150.0
TEMPLATE = "inbound_answered"
FIRST_CALL = 400_000
CALLS_PER_SECOND = 400.0


def _open_calls(factory: CallFactory, first: int, count: int) -> list[tuple[float, Frames]]:
    """`count` calls that never end, starting CALLS_PER_SECOND apart."""
    sample = factory.make(first)
    ring = ring_index(sample)
    answer = answered_index(sample)
    if ring is None or answer is None:
        raise RuntimeError(f"{TEMPLATE} must ring and be answered")
    out = []
    for n in range(count):
        frames = factory.make(first + n)
        cut = (answer if n % 2 else ring) + 1
        out.append((n / CALLS_PER_SECOND, frames[:cut]))
    return out


async def _settle(rig: Rig, cards_wanted: int, tracked_wanted: int, timeout: float,
                  quiet: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    tracked = cards = 0
    while time.monotonic() < deadline:
        tracked = await rig.bridge.calls_tracked()
        cards = len(card_times(rig.portal))
        if tracked >= tracked_wanted and cards >= cards_wanted and await rig.bridge.backlog() == 0:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(quiet)  # let the last responses and their buffers go
    return tracked, cards


async def run(smoke: bool) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    steps = (50, 200) if smoke else (1000, 5000)
    factory = CallFactory(TEMPLATE)
    options = BridgeOptions(requests_per_second=1000.0, burst=1000)
    readings: list[dict[str, float]] = []
    async with Rig(options, portal_rate=1000.0, portal_burst=1000, latency=0.005) as rig:
        quiet = 0.3 if smoke else 1.0
        await asyncio.sleep(quiet)
        readings.append({"calls": 0, "tracked": 0, "rss_mb": round(rig.bridge.rss_mb(), 1)})
        placed = 0
        for target in steps:
            calls = _open_calls(factory, FIRST_CALL + placed, target - placed)
            await rig.ami.play(merge(calls), speed=1.0)
            placed = target
            tracked, cards = await _settle(rig, placed, placed, timeout=30 if smoke else 60, quiet=quiet)
            readings.append({"calls": target, "tracked": tracked, "cards": cards,
                             "rss_mb": round(rig.bridge.rss_mb(), 1)})
        peak = rig.bridge.peak_rss_mb()
    result.data = {"readings": readings, "peak_rss_mb": round(peak, 1)}
    last = readings[-1]
    per_call_kb = (last["rss_mb"] - readings[0]["rss_mb"]) * 1000 / max(1, last["calls"])
    result.data["kb_per_open_call"] = round(per_call_kb, 1)
    measured = ", ".join(f"{r['calls']:,} calls: {r['rss_mb']} MB" for r in readings)
    result.checks.append(Check(
        f"RSS with {steps[-1]:,} calls in progress", f"<= {TARGET_MB:.0f} MB",
        f"{measured} (peak {peak:.1f} MB, ~{per_call_kb:.1f} kB per open call)",
        None if smoke else (last["tracked"] >= last["calls"] and last["rss_mb"] <= TARGET_MB)))
    if last["tracked"] < last["calls"]:
        result.notes.append(f"the bridge tracked only {last['tracked']} of {last['calls']} calls")
    return result
