"""Optional WAV -> MP3 transcoding with ffmpeg (Debian package `ffmpeg`), to make uploads about 8x smaller.

Without ffmpeg on the PATH, WAV is sent as it is (Bitrix24 accepts both).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class TranscodeFailed(RuntimeError):
    pass


def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


async def transcode_to_mp3(source: Path, bitrate: str, *, timeout: float = 120.0) -> Path:
    """Write an MP3 next to nothing the PBX owns (a private temp dir); the caller removes it after the upload."""
    ffmpeg = ffmpeg_path()
    if ffmpeg is None:
        raise TranscodeFailed("ffmpeg is not installed")
    out_dir = Path(tempfile.mkdtemp(prefix="b24-rec-"))
    target = out_dir / (source.stem + ".mp3")
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
        "-codec:a", "libmp3lame", "-b:a", bitrate, str(target),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        shutil.rmtree(out_dir, ignore_errors=True)
        raise TranscodeFailed(f"ffmpeg took longer than {timeout} s") from None
    if proc.returncode != 0 or not target.exists():
        shutil.rmtree(out_dir, ignore_errors=True)
        raise TranscodeFailed(f"ffmpeg failed ({proc.returncode}): {stderr.decode(errors='replace')[-300:]}")
    return target


def discard(path: Path) -> None:
    """Remove a transcoded temp file and its private directory."""
    shutil.rmtree(path.parent, ignore_errors=True)
