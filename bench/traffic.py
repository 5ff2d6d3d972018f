"""AMI traffic for the benchmarks: many re-identified copies of recorded calls, cheap enough to make thousands.

`ami_traces.synthesize()` re-identifies a recorded call with regular expressions over all its frames, which costs
milliseconds per call. The throughput and memory benchmarks need thousands of calls, so `CallFactory` synthesizes
each template once (call number 1, a fixed epoch, a placeholder customer number) and cuts its frames into constant
bytes and identity slots (Uniqueids, channel-name suffixes, bridge ids, the customer number). A copy for call `n`
refills the slots the way `IdAllocator(n)` would, so copies are as distinct as `synthesize(call_no=n)` output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.config import AsteriskSettings
from bridge.model import AgentsRinging, CallAnswered
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiParser
from bridge.pbx.asterisk.tracker import CallTracker
from bridge.sim.ami_traces import load_trace, synthesize

__all__ = ["EPOCH", "CallFactory", "Frames", "answered_index", "caller_number", "merge", "ring_index"]

# Seconds since the epoch used in every synthetic Uniqueid; a fixed value keeps runs comparable.
EPOCH = 1_700_000_000
_PLACEHOLDER_CALLER = "79871234567"
_SEQ_BLOCK = 4096  # IdAllocator gives call n the sequence numbers n*4096 ...
_SLOTS = re.compile(
    rb"(?P<uid>(?<![\d.])" + str(EPOCH).encode() + rb"\.\d+(?!\d))"
    rb"|(?<=-)(?P<suffix>00001[0-9a-f]{3})(?![0-9a-f])"
    rb"|(?P<uuid>\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)"
    rb"|(?P<caller>" + re.escape(_PLACEHOLDER_CALLER[-10:].encode()) + rb")")

# (offset from the call's first frame in recorded seconds, raw frame)
Frames = list[tuple[float, bytes]]


def caller_number(call_no: int) -> str:
    """The customer number of synthetic call `call_no` (distinct per call, so the portal never merges two)."""
    return f"79{call_no % 10**9:09d}"


@dataclass(frozen=True, slots=True)
class _Slot:
    kind: str  # uid | suffix | uuid | caller
    value: int  # sequence offset (uid, suffix), uuid ordinal, unused for caller


class CallFactory:
    """Copies of one recorded call; `make(n)` is the call numbered `n` (use each number once per run)."""

    def __init__(self, template: str, fixtures_dir: Path | None = None) -> None:
        trace = load_trace(template, fixtures_dir)
        has_customer = bool(trace.primary_call().get("customer_number"))
        self.template = template
        self.has_customer = has_customer
        script = synthesize(template, call_no=1, caller=_PLACEHOLDER_CALLER if has_customer else None,
                            fixtures_dir=fixtures_dir, epoch=EPOCH)
        self._parts: list[tuple[float, list[bytes | _Slot]]] = []
        uuids: dict[bytes, int] = {}
        offset = 0.0
        for delay, raw in script:
            offset += delay
            self._parts.append((offset, self._split(raw, uuids)))
        self.duration = offset

    @staticmethod
    def _split(raw: bytes, uuids: dict[bytes, int]) -> list[bytes | _Slot]:
        parts: list[bytes | _Slot] = []
        last = 0
        for match in _SLOTS.finditer(raw):
            parts.append(raw[last:match.start()])
            kind = match.lastgroup or "caller"
            text = match.group(0)
            if kind == "uid":
                parts.append(_Slot(kind, int(text.split(b".")[1]) - _SEQ_BLOCK))
            elif kind == "suffix":
                parts.append(_Slot(kind, int(text, 16) - _SEQ_BLOCK))
            elif kind == "uuid":
                parts.append(_Slot(kind, uuids.setdefault(text, len(uuids))))
            else:
                parts.append(_Slot(kind, 0))
            last = match.end()
        parts.append(raw[last:])
        return parts

    def make(self, call_no: int) -> Frames:
        """Frames of call `call_no` with offsets in recorded seconds."""
        base = call_no * _SEQ_BLOCK
        values = {
            "caller": caller_number(call_no)[-10:].encode(),
        }
        out: Frames = []
        for offset, parts in self._parts:
            chunks: list[bytes] = []
            for part in parts:
                if isinstance(part, bytes):
                    chunks.append(part)
                elif part.kind == "uid":
                    chunks.append(f"{EPOCH}.{base + part.value}".encode())
                elif part.kind == "suffix":
                    chunks.append(f"{(base + part.value) & 0xFFFFFFFF:08x}".encode())
                elif part.kind == "uuid":
                    uuid = f"{call_no & 0xFFFFFFFF:08x}-{part.value & 0xFFFF:04x}-4b24-8000-{EPOCH:012x}"
                    chunks.append(uuid.encode())
                else:
                    chunks.append(values["caller"])
            out.append((offset, b"".join(chunks)))
        return out


def merge(calls: Iterable[tuple[float, Frames]]) -> list[tuple[float, bytes]]:
    """Calls `(start time, frames)` on one timeline, as `(delay since the previous frame, raw)` for `sim.play`.

    Frames that fall at the same instant keep each call's own order.
    """
    keyed = ((start + offset, call, index, raw) for call, (start, frames) in enumerate(calls)
             for index, (offset, raw) in enumerate(frames))
    timeline = sorted(keyed, key=lambda item: (item[0], item[1], item[2]))
    out: list[tuple[float, bytes]] = []
    previous = timeline[0][0] if timeline else 0.0
    for at, _call, _index, raw in timeline:
        out.append((max(0.0, at - previous), raw))
        previous = at
    return out


def _first_index(frames: Sequence[tuple[float, bytes]], wanted: type) -> int | None:
    parser = AmiParser()
    tracker = CallTracker(Classifier(AsteriskSettings()))
    for index, (offset, raw) in enumerate(frames):
        for message in parser.feed(raw):
            if any(isinstance(event, wanted) for event in tracker.feed(message, offset)):
                return index
    return None


def ring_index(frames: Sequence[tuple[float, bytes]]) -> int | None:
    """Index of the frame that makes the tracker report agents ringing (the frame a card latency starts from)."""
    return _first_index(frames, AgentsRinging)


def answered_index(frames: Sequence[tuple[float, bytes]]) -> int | None:
    """Index of the frame that makes the tracker report the call answered."""
    return _first_index(frames, CallAnswered)
