"""Replay a recorded AMI trace through the call tracker (`b24-bridge replay`, tests, benchmarks).

A trace is the raw bytes of one AMI session (`NAME.ami`) and, optionally, its timing file (`NAME.timing.jsonl`: one
JSON line per message with the arrival time `t` and the byte range `off`/`len`). With the timing file each message
gets its real arrival time, without it times are synthetic (10 ms apart), so durations are then meaningless.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from bridge.model import CallEnded, CallRecord
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiMessage, AmiParser
from bridge.pbx.asterisk.tracker import CallTracker

__all__ = ["SYNTHETIC_STEP", "iter_trace", "replay"]

SYNTHETIC_STEP = 0.01


def iter_trace(ami_path: Path | str, timing_path: Path | str | None = None) -> Iterator[tuple[AmiMessage, float]]:
    """Every message of the trace with its arrival time, in order."""
    data = Path(ami_path).read_bytes()
    parser = AmiParser()
    if timing_path is None:
        for index, message in enumerate(parser.feed(data)):
            yield message, index * SYNTHETIC_STEP
        return
    at = 0.0
    end = 0
    with Path(timing_path).open(encoding="utf-8") as lines:
        for line in lines:
            entry = _timing_entry(line)
            if entry is None:
                continue
            at, offset, length = entry
            if offset < end or offset + length > len(data):
                continue
            end = offset + length
            for message in parser.feed(data[offset:end]):
                yield message, at
    # Bytes the timing file does not cover (a truncated timing file) still count, at the last known time.
    for message in parser.feed(data[end:]):
        yield message, at


def _timing_entry(line: str) -> tuple[float, int, int] | None:
    try:
        item = json.loads(line)
        return float(item["t"]), int(item["off"]), int(item["len"])
    except (ValueError, KeyError, TypeError):
        return None


def replay(ami_path: Path | str, timing_path: Path | str | None, classifier: Classifier) -> list[CallRecord]:
    """The records of every call that ended within the trace (a `Shutdown` ends all); calls still open are left out."""
    tracker = CallTracker(classifier)
    records: list[CallRecord] = []
    for message, at in iter_trace(ami_path, timing_path):
        for event in tracker.feed(message, at):
            if isinstance(event, CallEnded):
                records.append(event.call)
    return records
