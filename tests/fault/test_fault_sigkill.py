"""kill -9 at random moments of a burst of calls, restart, repeat: nothing lost, nothing sent twice.

The daemon runs as a real child process (`python -m bridge.cli run --config FILE`) against simulators hosted in this
process, so a SIGKILL stops it anywhere: between an AMI read and the outbox commit, between a portal request and
the commit of its answer. After each restart the portal's record must show: every call the bridge could know
finished exactly once, no EXTERNAL_CALL_ID with two CALL_IDs, nothing the PBX never had. Calls that both started
and ended while the daemon was dead cannot be known to it (AMI has no history) and are not demanded; calls in
progress at a kill are, whether they ended while it was dead (orphan closing) or still run (resync).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.sim.bitrix24_portal import SimCall
from tests.fault.conftest import (
    Daemon,
    PlayedCall,
    Stack,
    Verdict,
    check_portal,
    daemon_config,
    free_port,
    simulators,
    soak,
    toml_text,
    until,
)

MARGIN = 0.5  # a call starting this close to a kill or a restart may or may not have been seen


@dataclass
class Round:
    seed: int
    verdict: Verdict
    kills: list[tuple[float, float]]
    overlapping_in_portal: int
    exit_code: int
    output: str

    def summary(self) -> str:
        return (f"seed {self.seed}: {len(self.kills)} kills, {self.verdict.calls} calls in the portal, "
                f"{self.overlapping_in_portal} of them in progress at a kill, re-sent registers "
                f"{self.verdict.resent_registers}, re-sent finishes {self.verdict.resent_finishes}, re-sent "
                f"uploads {self.verdict.resent_uploads}, exit {self.exit_code}")


async def _logged_in(stack: Stack, served_before: int, timeout: float = 20.0) -> float:
    """The daemon's event session is logged in (it asks for events; the action session does not)."""
    await until(lambda: stack.ami.stats.sessions_served >= served_before + 2 and stack.ami.sessions >= 2, timeout,
                message="the daemon did not log in to the AMI")
    return time.time()


async def _quiet(stack: Stack, seconds: float, timeout: float) -> None:
    """Wait until the portal has seen no request for `seconds` (the daemon has nothing left to send)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = stack.portal.requests[-1].t if stack.portal.requests else 0.0
        if time.time() - last >= seconds:
            return
        await asyncio.sleep(0.1)


async def kill_rounds(tmp: Path, seed: int, *, calls: int, rate: float, speed: float, kills: int,
                      settle_timeout: float) -> Round:
    rng = random.Random(seed)
    # Portal answers take 50 ms, so kills land between a request and the commit of its answer now and then.
    async with simulators(tmp, speed=speed, latency=0.05) as stack:
        config = tmp / "config.toml"
        config.write_text(toml_text(daemon_config(stack.ami, stack.portal, tmp, http_port=free_port())))
        daemon = Daemon(config, tmp / "logs")
        await daemon.start()
        await _logged_in(stack, 0)
        burst_seconds = calls / rate
        load = asyncio.create_task(stack.driver.burst(calls, rate))
        windows: list[tuple[float, float]] = []
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.1, burst_seconds / kills))
            killed_at = time.time()
            await daemon.kill()
            await until(lambda: stack.ami.sessions == 0, 10, message="the killed daemon's AMI sessions stayed up")
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            served = stack.ami.stats.sessions_served
            await daemon.start()
            windows.append((killed_at, await _logged_in(stack, served)))
        await load

        def required(call: PlayedCall) -> bool:
            """Seen starting by a running daemon: it must reach the portal, finished."""
            return all(not (killed - MARGIN <= call.started <= back + MARGIN) for killed, back in windows)

        def complete(call: PlayedCall) -> bool:
            """Seen from start to end: its cards and recording are demanded too. A call cut by a kill is closed
            with what was known (e.g. answered while the daemon was dead: finished unanswered, no recording)."""
            return required(call) and all(call.ended is not None and not (call.started - MARGIN < killed
                                                                          < call.ended + MARGIN)
                                          for killed, _ in windows)

        deadline = time.monotonic() + settle_timeout
        verdict = check_portal(stack.portal, stack.driver.calls, required=required, complete=complete,
                               strict_register=False)
        while time.monotonic() < deadline and verdict.problems:
            await asyncio.sleep(0.25)
            verdict = check_portal(stack.portal, stack.driver.calls, required=required, complete=complete,
                               strict_register=False)
        await _quiet(stack, 1.0, 15.0)
        exit_code = await daemon.stop()
        verdict = check_portal(stack.portal, stack.driver.calls, required=required, complete=complete,
                               strict_register=False)
        overlapping = {c.number for c in stack.driver.calls
                       if any(c.started < killed < (c.ended or 0) for killed, _ in windows)}
        in_portal = sum(1 for c in stack.portal.calls.values() if c.phone_number[-10:] in overlapping)
        return Round(seed, verdict, windows, in_portal, exit_code, daemon.output())


def _check(rounds: list[Round]) -> None:
    report = "\n".join(r.summary() for r in rounds)
    print(report)
    for r in rounds:
        tail = "\n".join(r.output.splitlines()[-30:])
        assert not r.verdict.problems, f"seed {r.seed}:\n" + "\n".join(r.verdict.problems) + f"\n--- daemon:\n{tail}"
        assert r.exit_code == 0, f"seed {r.seed}: the daemon exited with {r.exit_code} after SIGTERM\n{tail}"
    # The kills must have hit calls in flight, or the orphan/resync paths were never exercised.
    assert sum(r.overlapping_in_portal for r in rounds) > 0, report


async def test_sigkill_during_bursts(tmp_path: Path) -> None:
    """Five seeds side by side, three kills each, 14 calls at 4/s."""
    rounds = await asyncio.gather(*(
        kill_rounds(tmp_path / f"seed{seed}", seed, calls=14, rate=4.0, speed=4.0, kills=3, settle_timeout=40.0)
        for seed in (1, 2, 3, 4, 5)))
    _check(list(rounds))


@soak
@pytest.mark.parametrize("seed", range(100, 120))
async def test_sigkill_soak(tmp_path: Path, seed: int) -> None:
    """Twenty seeds, five kills each, calls at 5/s in real time."""
    _check([await kill_rounds(tmp_path, seed, calls=100, rate=5.0, speed=1.0, kills=5, settle_timeout=180.0)])


async def test_kill_between_upload_and_commit_attaches_once(tmp_path: Path) -> None:
    """The portal stores the recording, and the daemon dies before it hears back: after the restart the upload is
    sent again (the outbox cannot know it arrived), and the call still ends with exactly one recording, because
    attaching again replaces the call's record (docs/bitrix24-api.md, attachRecord)."""
    async with simulators(tmp_path, speed=8.0) as stack:
        config = tmp_path / "config.toml"
        config.write_text(toml_text(daemon_config(stack.ami, stack.portal, tmp_path, http_port=free_port())))
        daemon = Daemon(config, tmp_path / "logs")
        await daemon.start()
        await _logged_in(stack, 0)
        store = stack.portal.portal.store_record
        killed: list[int] = []

        def store_then_kill(call: SimCall, filename: str, data: bytes) -> dict[str, object]:
            result = store(call, filename, data)
            if not killed and daemon.proc is not None:  # the upload is in; the daemon never gets the answer
                killed.append(daemon.proc.pid)
                os.kill(daemon.proc.pid, signal.SIGKILL)
            return result

        stack.portal.portal.store_record = store_then_kill  # type: ignore[method-assign]
        await stack.driver.play("recorded")
        await until(lambda: bool(killed), 20, message="no recording was ever uploaded")
        await daemon.kill()
        served = stack.ami.stats.sessions_served
        await daemon.start()
        await _logged_in(stack, served)
        await _quiet(stack, 2.0, 30.0)
        exit_code = await daemon.stop()
        verdict = check_portal(stack.portal, stack.driver.calls, strict_register=False)
    assert exit_code == 0
    assert not verdict.problems, "\n".join(verdict.problems)  # finished once, exactly one recording
    assert verdict.resent_uploads == 1, "the kill did not land between the upload and its commit"
