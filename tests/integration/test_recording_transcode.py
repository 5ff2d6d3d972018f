"""WAV recordings are transcoded to MP3 with the real ffmpeg before upload (when configured and installed)."""

from __future__ import annotations

import math
import os
import struct
import tempfile
import time
import wave
from pathlib import Path

import pytest

from bridge.config import RecordingsSettings
from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.recordings.transcode import ffmpeg_path
from bridge.recordings.uploader import RecordingUploader
from bridge.sim.bitrix24 import Bitrix24Simulator

pytestmark = pytest.mark.skipif(ffmpeg_path() is None, reason="ffmpeg is not installed (make test installs it)")


def write_tone(path: Path, seconds: float = 2.0, rate: int = 8000) -> None:
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
                      for n in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames)


async def finished_call(client: Bitrix24Client) -> str:
    registered = await client.register_call(phone_number="+79161110011", call_type=2, user_id=5,
                                            external_call_id="1795.1")
    await client.finish_call(registered.call_id, user_id=5, duration=2, status_code="200")
    return registered.call_id


@pytest.mark.parametrize("mode", ["upload", "base64"])
async def test_wav_is_sent_as_mp3(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "monitor"
    root.mkdir()
    wav = root / "in-5551001-79161110011-20261128-101502-1795.1.wav"
    write_tone(wav)
    old = time.time() - 60
    os.utime(wav, (old, old))
    temp_before = set(Path(tempfile.gettempdir()).glob("b24-rec-*"))
    settings = RecordingsSettings(root=root, mode=mode, settle_seconds=1.0, transcode_mp3=True, mp3_bitrate="32k")
    async with Bitrix24Simulator() as sim:
        async with Bitrix24Client(base_url=sim.webhook_url, auth=None, bucket=LeakyBucket(rate=50, burst=20)) as client:
            call_id = await finished_call(client)
            uploader = RecordingUploader(client, settings)
            assert await uploader.attach(str(wav), call_id, ended_at=old) == "attached"
        call = sim.portal.calls[call_id]
    assert call.record_filename == wav.stem + ".mp3"
    data = call.record_bytes
    assert data is not None
    assert data[:3] == b"ID3" or data[0] == 0xFF  # an MP3 stream, not the WAV
    assert 0 < len(data) < wav.stat().st_size / 2  # 32 kbit/s MP3 against 128 kbit/s PCM
    assert wav.exists()  # the PBX's file is never touched
    assert set(Path(tempfile.gettempdir()).glob("b24-rec-*")) <= temp_before  # the MP3 was cleaned up
