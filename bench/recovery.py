"""Recovery: the portal is unreachable for 60 s (every connection reset) while calls keep arriving at 5/s; how long
after it comes back until the backlog is drained?

Runs in real time (no scaling): the bridge's retry backoff is a fixed timer (exponential, capped at 60 s), so
scaling the outage would change how many doublings happen and distort exactly the thing measured. Calls keep
arriving after the outage too. Drained means: every call that had ended on the PBX before the portal came back is
finished in the portal (the simulator stamps each executed `finish`); the time is that of the last such finish.
Also reported: the first successful portal request after the outage (what the retry backoff costs), the backlog
peak, and the rate at which the bridge emptied it: full 50-command batches, and as the portal's bucket drained
during the outage, up to 50 requests back to back, so paced by the round trip rather than by 2 req/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import cast

from bench.load import Traffic
from bench.portal import executed, finish_times
from bench.result import BenchResult, Check
from bench.rig import BridgeOptions, Rig, poll_until

NAME = "recovery"
TITLE = "Recovery after a portal outage"
CALLS_PER_SECOND = 5.0


async def run(smoke: bool) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    warmup, outage, limit = (2.0, 2.0, 30.0) if smoke else (10.0, 60.0, 120.0)
    traffic = Traffic(first_call=500_000)
    offered: list[str] = []
    ends: dict[str, float] = {}
    samples: list[tuple[float, int]] = []
    async with Rig(BridgeOptions(), portal_rate=2.0, portal_burst=50, latency=0.08) as rig:
        loop = asyncio.get_running_loop()
        start = loop.time()
        wall_offset = time.time() - start  # the portal stamps wall-clock times
        script = traffic.script(CALLS_PER_SECOND * 3600, warmup + outage + limit, offered, ends)
        player = asyncio.create_task(rig.ami.play(cast(Sequence[tuple[float, bytes]], script), speed=1.0))
        up_at = start + warmup + outage
        backlog_log = asyncio.create_task(_sample(rig, samples, start))
        try:
            await asyncio.sleep(warmup)
            rig.portal.go_down(outage)
            up_at = loop.time() + outage
            await asyncio.sleep(outage)
            # Calls that ended before the portal came back: their whole history waited in the outbox.
            waiting = {phone for phone, end in ends.items() if start + end <= up_at}
            await poll_until(lambda: waiting <= finish_times(rig.portal).keys(), up_at + limit - loop.time(), 0.1)
        finally:
            for task in (player, backlog_log):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        dead = rig.bridge.dead_letters()
        finished = finish_times(rig.portal)
        ok_times = sorted(at for at, _method, _params, ok in executed(rig.portal) if ok)

    up_wall = up_at + wall_offset
    missing = waiting - finished.keys()
    drained = max((finished[p] for p in waiting if p in finished), default=up_wall) - up_wall if not missing else None
    first_ok = next((t - up_wall for t in ok_times if t >= up_wall), None)
    peak = max((b for _, b in samples), default=0)
    drain_rate = None
    if drained is not None and first_ok is not None and drained > first_ok:
        sent = sum(1 for t in ok_times if up_wall + first_ok <= t <= up_wall + drained)
        drain_rate = sent / (drained - first_ok)
    result.data = {
        "outage_s": outage, "calls_per_second": CALLS_PER_SECOND, "calls_offered": len(offered),
        "calls_ended_before_portal_back": len(waiting), "of_those_unfinished": len(missing),
        "backlog_peak_ops": peak,
        "first_success_after_up_s": None if first_ok is None else round(first_ok, 2),
        "drained_after_up_s": None if drained is None else round(drained, 2),
        "drain_rate_methods_per_s": None if drain_rate is None else round(drain_rate, 1),
        "dead_letters": dead,
        "backlog_series": [(round(t, 1), b) for t, b in samples[:: max(1, len(samples) // 40)]],
    }
    if drained is None:
        measured = f"{len(missing)} of {len(waiting)} calls still unfinished {limit:.0f} s after the portal came back"
    else:
        measured = f"drained {drained:.1f} s after the portal came back"
    if first_ok is not None:
        measured += f" (first success after {first_ok:.1f} s, backlog peak {peak} ops"
        measured += f", emptied at {drain_rate:.0f} methods/s)" if drain_rate else ")"
    result.checks.append(Check(f"{outage:.0f} s portal outage, calls at {CALLS_PER_SECOND:g}/s",
                               "report (no target)", measured, None))
    if dead:
        result.notes.append(f"dead letters after the outage: {dead}")
    return result


async def _sample(rig: Rig, samples: list[tuple[float, int]], start: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(Exception):  # a slow answer is not a reason to stop sampling
            samples.append((loop.time() - start, await rig.bridge.backlog()))
        await asyncio.sleep(0.25)
