"""Record an AMI session to disk in the fixture format, so users can attach real traces to bug reports.

`FILE.ami` gets the exact bytes Asterisk sent after the Login reply (tapped before any parsing, CRLF untouched);
`FILE.timing.jsonl` gets one line per message: `t` (arrival, Unix seconds), `off`/`len` (byte range in FILE.ami,
terminator included), `kind` (event/response/unknown) and `name` - the format of `tests/fixtures/ami/`.
The capture never sends an action after login (no pings), so it records only what Asterisk volunteers.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import structlog

from bridge.errors import AmiError
from bridge.pbx.asterisk.handshake import AuthMode, login, open_stream, read_banner
from bridge.pbx.asterisk.protocol import TERMINATOR, AmiParser

if TYPE_CHECKING:
    from bridge.config import AmiSettings

__all__ = ["CaptureResult", "FrameIndexer", "capture", "capture_from_settings"]

log = structlog.get_logger(__name__)
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class CaptureResult:
    banner: str
    bytes_written: int
    messages: int
    reason: str


class FrameIndexer:
    """Splits a byte stream into frames with absolute offsets (no decoding beyond naming each frame)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._parser = AmiParser()

    def feed(self, data: bytes) -> list[tuple[int, int, str, str]]:
        """Return `(offset, length, kind, name)` for every frame completed by `data`."""
        self._buf.extend(data)
        frames: list[tuple[int, int, str, str]] = []
        start = 0
        while (end := self._buf.find(TERMINATOR, start)) >= 0:
            stop = end + len(TERMINATOR)
            frames.append((self._base + start, stop - start, *self._describe(bytes(self._buf[start:stop]))))
            start = stop
        del self._buf[:start]
        self._base += start
        return frames

    def _describe(self, frame: bytes) -> tuple[str, str]:
        messages = self._parser.feed(frame)
        self._parser.drain_problems()
        if not messages:
            return "unknown", ""
        message = messages[0]
        if message.event is not None:
            return "event", message.event
        return "response", message.response or ""


async def capture(
    host: str,
    port: int,
    username: str,
    secret: str,
    *,
    out_path: Path,
    timing_path: Path | None = None,
    auth: AuthMode = "md5",
    events: str = "on",
    tls: bool = False,
    connect_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
    duration: float | None = None,
) -> CaptureResult:
    """Log in and record until `stop` is set, `duration` seconds pass, or Asterisk closes the session."""
    timing_path = timing_path or out_path.with_suffix(".timing.jsonl")
    async with asyncio.timeout(connect_timeout):
        reader, writer = await open_stream(host, port, tls=tls)
        banner = await read_banner(reader)
        await login(reader, writer, AmiParser(), username=username, secret=secret, auth=auth, events=events,
                    id_prefix="capture")
    log.info("ami_capture_started", host=host, port=port, banner=banner, out=str(out_path))
    try:
        with out_path.open("wb") as raw, timing_path.open("w", encoding="utf-8") as timing:
            written, count, reason = await _record(reader, raw, timing, stop, duration)
    finally:
        writer.close()
        with suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
    log.info("ami_capture_finished", bytes=written, messages=count, reason=reason)
    return CaptureResult(banner, written, count, reason)


async def capture_from_settings(
    s: AmiSettings, out_path: Path, *, duration: float | None = None, stop: asyncio.Event | None = None
) -> int:
    """`b24-bridge capture`: record with the configured AMI user; returns a process exit code (0 ok, 1 failed)."""
    try:
        result = await capture(s.host, s.port, s.username, s.secret.get_secret_value(), out_path=out_path,
                               auth=s.auth, tls=s.tls, connect_timeout=s.connect_timeout, stop=stop,
                               duration=duration)
    except (AmiError, TimeoutError) as exc:
        log.error("ami_capture_failed", reason=str(exc) or "timeout", host=s.host, port=s.port)
        return 1
    print(f"captured {result.messages} messages ({result.bytes_written} bytes) to {out_path}: {result.reason}",
          flush=True)
    return 0


async def _record(
    reader: asyncio.StreamReader, raw: BinaryIO, timing: TextIO, stop: asyncio.Event | None, duration: float | None
) -> tuple[int, int, str]:
    indexer = FrameIndexer()
    written = count = 0
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    stop_wait = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            read = asyncio.ensure_future(reader.read(_READ_SIZE))
            waiters: set[asyncio.Future[Any]] = {read}
            if stop_wait is not None:
                waiters.add(stop_wait)
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                return written, count, "stopped" if stop_wait in done else "duration elapsed"
            try:
                data = read.result()
            except OSError as exc:
                return written, count, f"read error: {exc}"
            if not data:
                return written, count, "connection closed by Asterisk"
            at = time.time()
            raw.write(data)
            written += len(data)
            for off, length, kind, name in indexer.feed(data):
                timing.write(json.dumps({"t": at, "off": off, "len": length, "kind": kind, "name": name}) + "\n")
                count += 1
    finally:
        if stop_wait is not None:
            stop_wait.cancel()

