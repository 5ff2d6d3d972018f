"""Card latency under a burst: N inbound calls start ringing within one second; how long until each agent's card is
in the portal?

Path measured: AMI simulator (the frame that makes the call ring, stamped as it is written to the socket) -> TCP ->
bridge process (parser, tracker, policy, outbox, dispatcher, HTTP client with the 2 req/s burst 50 limiter) -> HTTP
-> Bitrix24 simulator with the standard leaky bucket and a round trip of `rtt` (it waits the whole round trip before
it executes a request, then stamps each executed method, batch commands included). The card counts as received at
the first `show` for the call, or a `register` with SHOW on, whichever came first. Real time, no scaling.
"""

from __future__ import annotations

import asyncio
import contextlib

from bench.portal import card_times, phone_key
from bench.result import BenchResult, Check
from bench.rig import AGENT_EXTENSIONS, BridgeOptions, Rig, poll_until
from bench.stats import summary
from bench.traffic import EPOCH, caller_number, merge, ring_index
from bridge.sim.ami_traces import synthesize

NAME = "card_latency"
TITLE = "Card latency under a burst"
TEMPLATE = "inbound_answered"  # DID -> one agent rings ~2 s, answers
FIRST_CALL = 200_000


async def run(smoke: bool, *, calls: int | None = None, rtt: float = 0.08) -> BenchResult:
    calls = calls or (10 if smoke else 50)
    result = BenchResult(NAME, TITLE)
    scripts = []
    ring_frames: dict[str, bytes] = {}
    for n in range(calls):
        call_no = FIRST_CALL + n
        agent = AGENT_EXTENSIONS[n % len(AGENT_EXTENSIONS)]
        frames: list[tuple[float, bytes]] = []
        offset = 0.0
        for delay, raw in synthesize(TEMPLATE, call_no=call_no, caller=caller_number(call_no), agent=agent,
                                     epoch=EPOCH):
            offset += delay
            frames.append((offset, raw))
        ring = ring_index(frames)
        if ring is None:
            raise RuntimeError(f"{TEMPLATE} never rings an agent")
        ring_frames[phone_key(caller_number(call_no))] = frames[ring][1]
        # Spread the ring frames evenly over one second.
        scripts.append((n / calls - frames[ring][0], frames))
    lead = -min(start for start, _ in scripts)
    script = merge((start + lead, frames) for start, frames in scripts)

    async with Rig(BridgeOptions(), portal_rate=2.0, portal_burst=50, latency=rtt) as rig:
        for key, raw in ring_frames.items():
            rig.ami.watch(raw, key)
        cpu_before = rig.bridge.cpu_seconds()
        # The calls play on (answers, hang-ups) while the cards are awaited; once all are in, the rest is moot.
        player = asyncio.create_task(rig.ami.play(script, speed=1.0))
        await poll_until(lambda: len(card_times(rig.portal)) >= calls, 20 if smoke else 30)
        cards = card_times(rig.portal)
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await player
        requests = len(rig.portal.requests)
        batches = rig.portal.counts.get("batch", 0)
        cpu = rig.bridge.cpu_seconds() - cpu_before

    sent = rig.ami.sent_at
    latencies = [cards[key] - sent[key] for key in ring_frames if key in cards and key in sent]
    stats = summary(latencies, scale=1000)
    bound_ms = (2 * rtt + 0.050) * 1000
    result.data = {"calls": calls, "cards_seen": len(latencies), "rtt_ms": rtt * 1000, "latency_ms": stats,
                   "portal_requests": requests, "portal_batches": batches, "bridge_cpu_seconds": round(cpu, 2)}
    complete = len(latencies) == calls
    result.checks.append(Check(
        f"card latency p99, {calls} calls ringing within 1 s", f"p99 <= 2 x RTT + 50 ms = {bound_ms:.0f} ms",
        f"p50 {stats['p50']} ms, p99 {stats['p99']} ms, max {stats['max']} ms ({len(latencies)}/{calls} cards)",
        None if smoke else (complete and stats["p99"] <= bound_ms)))
    if not complete:
        result.notes.append(f"only {len(latencies)} of {calls} calls got a card within the wait")
    return result
