"""DMCC wire framing: an 8-byte header in front of every XML document. Bytes in, frames out; no I/O here.

Header (ECMA-323 Annex J as AES uses it): bytes 0-1 version (0), bytes 2-3 total length including the header
(big-endian), bytes 4-7 the invoke id as four ASCII digits. Requests and their responses share an invoke id
(0001-9998); unsolicited events carry 9999.

Bad input never raises from `FrameDecoder.feed`: a header that cannot be right (wrong version, impossible length,
non-digit invoke id, a body that does not start like XML) is reported in `problems` and the decoder scans forward to
the next plausible header. `garbage_exceeded` tells the connection that too much has been thrown away since the last
good frame, so it should reset the link rather than keep guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_LEN = 8
MAX_FRAME_LEN = 0xFFFF  # the length field is 16 bits and includes the header
EVENT_INVOKE_ID = 9999
_HEADER = struct.Struct(">HH4s")
# What a DMCC body may start with: "<" (declaration or root), a UTF-8 byte-order mark, or whitespace before "<".
_BODY_STARTS = frozenset(b"<\xef \t\r\n")


class FrameError(ValueError):
    """A frame that cannot be encoded (invoke id out of range, body too long)."""


@dataclass(frozen=True, slots=True)
class Frame:
    invoke_id: int
    payload: bytes


@dataclass(slots=True)
class DecoderStats:
    frames: int = 0
    resyncs: int = 0
    discarded_bytes: int = 0


def encode_frame(invoke_id: int, payload: bytes) -> bytes:
    """One frame on the wire; refuses what the 16-bit length or 4-digit invoke id cannot carry."""
    if not 0 <= invoke_id <= EVENT_INVOKE_ID:
        raise FrameError(f"invoke id {invoke_id} outside 0..9999")
    total = HEADER_LEN + len(payload)
    if total > MAX_FRAME_LEN:
        raise FrameError(f"frame of {total} bytes exceeds the {MAX_FRAME_LEN}-byte DMCC limit")
    return _HEADER.pack(0, total, b"%04d" % invoke_id) + payload


class FrameDecoder:
    """Incremental decoder for one connection: partial reads, several frames per read, garbage in between."""

    def __init__(self, *, max_frame_len: int = MAX_FRAME_LEN, max_garbage_bytes: int = 2 * MAX_FRAME_LEN) -> None:
        if not HEADER_LEN < max_frame_len <= MAX_FRAME_LEN:
            raise ValueError(f"max_frame_len must be in {HEADER_LEN + 1}..{MAX_FRAME_LEN}")
        self._max_frame = max_frame_len
        self._max_garbage = max_garbage_bytes
        self._buf = bytearray()
        self._garbage_run = 0
        self.stats = DecoderStats()
        self.problems: list[str] = []

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def garbage_exceeded(self) -> bool:
        """True once more than `max_garbage_bytes` were discarded without a good frame in between."""
        return self._garbage_run > self._max_garbage

    def drain_problems(self) -> list[str]:
        out, self.problems = self.problems, []
        return out

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER_LEN:
            verdict = self._check_header(buf, pos)
            if verdict is not None:
                nxt = self._next_candidate(buf, pos + 1)
                self._discard(nxt - pos, verdict)
                pos = nxt
                continue
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            if len(buf) - pos < length:
                break
            invoke_id = int(buf[pos + 4:pos + 8])
            frames.append(Frame(invoke_id, bytes(buf[pos + HEADER_LEN:pos + length])))
            self.stats.frames += 1
            self._garbage_run = 0
            pos += length
        if pos:
            del buf[:pos]
        return frames

    def _check_header(self, buf: bytearray, pos: int) -> str | None:
        """None when the header at `pos` is plausible; otherwise why not."""
        version, length, invoke = _HEADER.unpack_from(buf, pos)
        if version != 0:
            return f"bad version {version}"
        if not invoke.isdigit():
            return f"bad invoke id {invoke!r}"
        if length <= HEADER_LEN:
            return f"length {length} leaves no body"
        if length > self._max_frame:
            return f"length {length} exceeds limit {self._max_frame}"
        if len(buf) > pos + HEADER_LEN and buf[pos + HEADER_LEN] not in _BODY_STARTS:
            return "body does not start like XML"
        return None

    def _next_candidate(self, buf: bytearray, start: int) -> int:
        """Offset of the next plausible header at or after `start`, or where the scan must wait for more bytes."""
        i = start
        while True:
            i = buf.find(b"\x00\x00", i)
            if i < 0:
                # A lone trailing NUL may be the first byte of the next header.
                return len(buf) - 1 if buf.endswith(b"\x00") else len(buf)
            if len(buf) - i < HEADER_LEN or self._check_header(buf, i) is None:
                return i
            i += 1

    def _discard(self, count: int, why: str) -> None:
        if count <= 0:
            return
        self.stats.resyncs += 1
        self.stats.discarded_bytes += count
        self._garbage_run += count
        if len(self.problems) < 100:
            self.problems.append(f"{why}; skipped {count} bytes")
