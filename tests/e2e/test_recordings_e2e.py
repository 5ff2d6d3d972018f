"""Recordings end to end: a recorded call (the `recorded` trace, re-identified, its MixMonitor path pointed at a real
WAV file made here) -> the bridge finishes the call -> attaches the file in each mode -> the portal simulator holds
exactly those bytes. Also: files still growing, missing, outside the root, header-only, and a restart in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import math
import re
import socket
import wave
from pathlib import Path

import pytest

from bridge.config import HttpSettings, RecordingsSettings
from bridge.sim.ami import AmiSimulator
from bridge.sim.ami_traces import synthesize
from bridge.sim.bitrix24 import Bitrix24Simulator
from bridge.sim.bitrix24_portal import SimCall
from tests.e2e.conftest import (
    EVENT_TOKEN,
    dead_letters,
    running_bridge,
    settle,
    simulators,
    until,
)

SPEED = 50.0
SETTLE = 0.3
GIVE_UP = 2.0
_RECORDED_PATH = re.compile(rb"/var/spool/asterisk/monitor/[^\s,]+?\.wav")
_call_numbers = itertools.count(7001)


def wav_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A real mono 16-bit WAV: a 440 Hz tone."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = int(seconds * rate)
        out.writeframes(b"".join(int(8000 * math.sin(2 * math.pi * 440 * n / rate)).to_bytes(2, "little", signed=True)
                                 for n in range(frames)))
    return buffer.getvalue()


async def play_recorded_call(ami: AmiSimulator, recording: str) -> None:
    """A fresh copy of the `recorded` trace (answered inbound call) whose MixMonitor writes to `recording`."""
    script = synthesize("recorded", call_no=next(_call_numbers))
    target = recording.encode()
    await ami.play([(delay, _RECORDED_PATH.sub(lambda _m: target, raw)) for delay, raw in script], SPEED)


def recordings(root: Path, mode: str = "upload", *, give_up: float = GIVE_UP) -> RecordingsSettings:
    return RecordingsSettings(enabled=True, root=root, mode=mode, settle_seconds=SETTLE, give_up_seconds=give_up)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def the_call(portal: Bitrix24Simulator) -> SimCall:
    assert len(portal.calls) == 1
    return next(iter(portal.calls.values()))


def attach_after_finish(portal: Bitrix24Simulator) -> bool:
    """The portal's record: every attachRecord (and upload) came after the finish of the same call."""
    finished_at = min(r.t for r in portal.requests if r.method == "telephony.externalcall.finish")
    attaches = [r.t for r in portal.requests if r.method in ("telephony.externalcall.attachrecord", "upload")]
    return bool(attaches) and all(t > finished_at for t in attaches)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "monitor"
    (path / "2026" / "11" / "28").mkdir(parents=True)
    return path


@pytest.mark.parametrize("mode", ["upload", "url", "base64"])
async def test_the_portal_gets_the_exact_file_in_every_mode(mode: str, root: Path, tmp_path: Path) -> None:
    data = wav_bytes()
    path = root / "2026" / "11" / "28" / f"in-5551001-call-{mode}.wav"
    path.write_bytes(data)
    async with simulators() as sims:
        port = free_port()
        http = HttpSettings(port=port, application_token=EVENT_TOKEN, public_url=f"http://127.0.0.1:{port}")
        settings = sims.settings(tmp_path, recordings=recordings(root, mode), http=http)
        async with running_bridge(settings) as bridge:
            await play_recorded_call(sims.ami, str(path))
            await until(lambda: bool(sims.portal.calls) and bool(the_call(sims.portal).records), timeout=15)
            await settle(bridge)
            letters = dead_letters(bridge)
    call = the_call(sims.portal)
    assert call.records == [(path.name, data)]  # exactly these bytes, once, under a .wav name
    assert call.finish is not None and str(call.finish["_params"]["STATUS_CODE"]) == "200"
    assert attach_after_finish(sims.portal)
    if mode == "url":  # the portal downloaded it from the bridge's signed link, not from anywhere else
        attach = next(r for r in sims.portal.requests if r.method == "telephony.externalcall.attachrecord")
        assert str(attach.params["RECORD_URL"]).startswith(f"http://127.0.0.1:{port}/recordings/")
    assert letters == []


async def test_a_file_still_growing_is_attached_whole_once_it_settles(root: Path, tmp_path: Path) -> None:
    data = wav_bytes(1.0)
    path = root / "growing.wav"
    path.write_bytes(data[:4000])  # MixMonitor still flushing when the hangup arrives
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, recordings=recordings(root))) as bridge:
        await play_recorded_call(sims.ami, str(path))
        await until(lambda: bool(sims.portal.calls) and the_call(sims.portal).finish is not None)
        for offset in range(4000, len(data), 2000):
            with path.open("ab") as out:
                out.write(data[offset:offset + 2000])
            await asyncio.sleep(SETTLE / 3)
            assert the_call(sims.portal).records == []  # never a partial file
        await until(lambda: bool(the_call(sims.portal).records), timeout=15)
        await settle(bridge)
        letters = dead_letters(bridge)
    assert the_call(sims.portal).records == [(path.name, data)]
    assert letters == []


async def test_a_file_that_never_appears_is_retried_then_given_up(root: Path, tmp_path: Path) -> None:
    path = root / "never-written.wav"
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, recordings=recordings(root))) as bridge:
        await play_recorded_call(sims.ami, str(path))
        assert bridge.outbox is not None
        outbox = bridge.outbox
        await until(lambda: outbox.dead_count() == 1, timeout=GIVE_UP + 15)
        rows = outbox.list_rows("dead")
        await settle(bridge)
    assert [(row.kind, row.attempts > 1) for row in rows] == [("attach_record", True)]
    assert "never appeared" in str(rows[0].reason) and path.name in str(rows[0].reason)
    assert the_call(sims.portal).finish is not None and the_call(sims.portal).records == []


@pytest.mark.parametrize("escape", ["dotdot", "symlink", "absolute"])
async def test_a_path_outside_the_root_is_never_read(escape: str, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.wav"
    secret.parent.mkdir()
    secret.write_bytes(wav_bytes())
    if escape == "dotdot":
        recording = f"{root}/../outside/secret.wav"
    elif escape == "symlink":
        (root / "link.wav").symlink_to(secret)
        recording = str(root / "link.wav")
    else:
        recording = str(secret)
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, recordings=recordings(root))) as bridge:
        await play_recorded_call(sims.ami, recording)
        assert bridge.outbox is not None
        outbox = bridge.outbox
        await until(lambda: outbox.dead_count() == 1)
        rows = outbox.list_rows("dead")
        await settle(bridge)
    assert [row.kind for row in rows] == ["attach_record"]
    assert re.search(r"outside the recordings root|contains '\.\.'", str(rows[0].reason))
    assert the_call(sims.portal).records == []
    assert not [r for r in sims.portal.requests if r.method in ("telephony.externalcall.attachrecord", "upload")]


async def test_a_header_only_file_is_not_attached(root: Path, tmp_path: Path) -> None:
    path = root / "empty.wav"
    header = wav_bytes(0.0)
    assert len(header) == 44
    path.write_bytes(header)
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, recordings=recordings(root))) as bridge:
        await play_recorded_call(sims.ami, str(path))
        await until(lambda: bool(sims.portal.calls) and the_call(sims.portal).finish is not None)
        await settle(bridge)
        letters = dead_letters(bridge)
    assert the_call(sims.portal).records == []
    assert not [r for r in sims.portal.requests if r.method in ("telephony.externalcall.attachrecord", "upload")]
    assert letters == []


async def test_a_restart_between_finish_and_attach_attaches_once(root: Path, tmp_path: Path) -> None:
    data = wav_bytes()
    path = root / "late.wav"
    async with simulators() as sims:
        settings = sims.settings(tmp_path, recordings=recordings(root, give_up=60.0))
        async with running_bridge(settings, drain_seconds=0.2):
            await play_recorded_call(sims.ami, str(path))
            await until(lambda: bool(sims.portal.calls) and the_call(sims.portal).finish is not None)
        path.write_bytes(data)  # the file lands while the bridge is down
        async with running_bridge(settings) as bridge:
            await until(lambda: bool(the_call(sims.portal).records), timeout=15)
            await settle(bridge)
            letters = dead_letters(bridge)
    assert the_call(sims.portal).records == [(path.name, data)]
    assert [r.method for r in sims.portal.requests].count("upload") == 1
    assert letters == []


async def test_one_missing_file_does_not_hold_up_other_calls_recordings(root: Path, tmp_path: Path) -> None:
    data = wav_bytes()
    present = root / "present.wav"
    present.write_bytes(data)
    settings_of = recordings(root, give_up=3.0)
    async with simulators() as sims, running_bridge(sims.settings(tmp_path, recordings=settings_of)) as bridge:
        await play_recorded_call(sims.ami, str(root / "missing.wav"))
        await play_recorded_call(sims.ami, str(present))
        assert bridge.outbox is not None
        outbox = bridge.outbox
        with contextlib.suppress(TimeoutError):
            await until(lambda: any(call.records for call in sims.portal.calls.values()), timeout=2.0)
        attached_before_giving_up = outbox.dead_count() == 0 and any(c.records for c in sims.portal.calls.values())
        await until(lambda: outbox.dead_count() == 1, timeout=20)
        await settle(bridge)
    assert [c.records for c in sims.portal.calls.values() if c.records] == [[(present.name, data)]]
    assert attached_before_giving_up, "the missing file held up the other call's recording until it was given up"
