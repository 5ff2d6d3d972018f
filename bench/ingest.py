"""AMI ingest on one core: events/s through our parser + call tracker, and panoramisk 1.4 on the same bytes.

The stream: every recorded fixture (except the post-restart stub) as re-identified copies, so no two calls share a
Uniqueid or channel name, started 0.5 s apart and interleaved by their recorded timing (many calls overlap, as on a
busy PBX), then cut into 4 KiB chunks the way socket reads arrive. Shutdown frames are left out (they would end
every call). Four measurements, alternated in rotating order within each repetition, medians reported:

- `ingest`: `AmiParser.feed(chunk)` then `CallTracker.feed(message, at)` for every message, wired as the adapter
  wires them (with the tracker's frame filter, which skips frames the tracker never reads before decoding);
- `parser`: `AmiParser.feed(chunk)` only;
- `panoramisk`: `AMIProtocol.data_received(chunk)` on a protocol given a fake transport (`connection_made`), UTF-8
  as `Manager` sets it, and a factory whose `dispatch` only counts: panoramisk's whole receive path (decode, split,
  `Message.from_line`, `handle_message`) up to where an application callback would run;
- `panoramisk_parser`: the same with `handle_message` replaced by a no-op: decode, split and `Message.from_line`.

Events/s = AMI frames in the stream / seconds for one pass.
"""

from __future__ import annotations

import bisect
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from panoramisk.ami_protocol import AMIProtocol

from bench.result import BenchResult, Check
from bench.traffic import CallFactory, merge
from bridge.config import AsteriskSettings
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiParser
from bridge.pbx.asterisk.tracker import CallTracker
from bridge.sim.ami_traces import default_fixtures_dir

NAME = "ingest"
TITLE = "AMI ingest (one core)"
TARGET_EVENTS_PER_S = 50_000
TARGET_RATIO = 2.0
CHUNK = 4096
FIRST_CALL = 100_000


def build_stream(copies: int) -> tuple[list[bytes], list[float], int]:
    """(4 KiB chunks, arrival time of each chunk, frame count). A chunk arrives when the frame its last byte
    belongs to was sent; like the adapter, every message completed by a chunk gets that chunk's time."""
    names = sorted(p.name.removesuffix(".ami") for p in default_fixtures_dir().glob("*.ami")
                   if not p.name.removesuffix(".ami").endswith(".after"))
    factories = [CallFactory(name) for name in names]
    calls = []
    number = FIRST_CALL
    for copy in range(copies):
        for index, factory in enumerate(factories):
            frames = [(t, raw) for t, raw in factory.make(number) if not raw.startswith(b"Event: Shutdown\r\n")]
            calls.append(((copy * len(factories) + index) * 0.5, frames))
            number += 1
    timeline = merge(calls)
    frame_times: list[float] = []
    frame_ends: list[int] = []
    at = 0.0
    end = 0
    for delay, raw in timeline:
        at += delay
        end += len(raw)
        frame_times.append(at)
        frame_ends.append(end)
    data = b"".join(raw for _delay, raw in timeline)
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    times = [frame_times[bisect.bisect_left(frame_ends, min(len(data), i + CHUNK))]
             for i in range(0, len(data), CHUNK)]
    return chunks, times, len(timeline)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _Factory:
    """Stands in for panoramisk's Manager: counts what its protocol dispatches."""

    def __init__(self) -> None:
        self.dispatched = 0
        self.forgetable_actions: tuple[str, ...] = ()
        self.awaiting_actions: list[Any] = []

    def dispatch(self, message: Any) -> None:
        self.dispatched += 1

    def connection_lost(self, exc: Any) -> None:
        pass


def _adapter_pair(*, use_filter: bool = True) -> tuple[AmiParser, CallTracker]:
    """Parser and tracker wired as the Asterisk adapter wires them: with the tracker's frame filter, or (for the
    before/after comparison) without it."""
    tracker = CallTracker(Classifier(AsteriskSettings()))
    if not use_filter:
        return AmiParser(), tracker
    return AmiParser(skip=tracker.frame_filter()), tracker


def _ingest(chunks: list[bytes], times: list[float], *, use_filter: bool = True) -> dict[str, int]:
    parser, tracker = _adapter_pair(use_filter=use_filter)
    events = 0
    for chunk, at in zip(chunks, times, strict=True):
        for message in parser.feed(chunk):
            events += len(tracker.feed(message, at))
    return {"messages": tracker.stats.messages, "filtered": parser.stats.filtered_frames,
            "call_events": events, "handler_errors": tracker.stats.handler_errors, "calls_left_open": len(tracker)}


def _ingest_unfiltered(chunks: list[bytes], times: list[float]) -> dict[str, int]:
    return _ingest(chunks, times, use_filter=False)


def _parser(chunks: list[bytes], _times: list[float]) -> dict[str, int]:
    parser = AmiParser()
    count = 0
    for chunk in chunks:
        count += len(parser.feed(chunk))
    return {"messages": count}


def _panoramisk(chunks: list[bytes], _times: list[float], *, parser_only: bool = False) -> dict[str, int]:
    protocol = AMIProtocol()
    protocol.connection_made(_Transport())
    protocol.encoding = "utf8"
    factory = _Factory()
    protocol.factory = factory
    parsed = 0
    if parser_only:
        def count(_message: Any) -> None:
            nonlocal parsed
            parsed += 1

        protocol.handle_message = count
    for chunk in chunks:
        protocol.data_received(chunk)
    return {"messages": parsed if parser_only else factory.dispatched}


def _panoramisk_parser(chunks: list[bytes], times: list[float]) -> dict[str, int]:
    return _panoramisk(chunks, times, parser_only=True)


Runner = Callable[[list[bytes], list[float]], dict[str, int]]
# `ingest_unfiltered` is the same path without the frame filter: its before/after, side by side.
RUNNERS: dict[str, Runner] = {"ingest": _ingest, "ingest_unfiltered": _ingest_unfiltered, "parser": _parser,
                              "panoramisk": _panoramisk, "panoramisk_parser": _panoramisk_parser}


def measure(chunks: list[bytes], times: list[float], repetitions: int) -> tuple[dict[str, list[float]],
                                                                                   dict[str, dict[str, int]]]:
    """Seconds per pass for each runner, alternating them in rotating order."""
    names = list(RUNNERS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    details: dict[str, dict[str, int]] = {}
    for rep in range(repetitions):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            gc.collect()
            started = time.perf_counter()
            details[name] = RUNNERS[name](chunks, times)
            seconds[name].append(time.perf_counter() - started)
    return seconds, details


def run_sync(smoke: bool) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    chunks, times, frames = build_stream(1 if smoke else 24)
    seconds, details = measure(chunks, times, 3 if smoke else 5)
    rates = {name: frames / statistics.median(values) for name, values in seconds.items()}
    ingest_ratio = rates["ingest"] / rates["panoramisk"]
    parser_ratio = rates["parser"] / rates["panoramisk_parser"]
    result.data = {
        "frames": frames, "bytes": sum(len(c) for c in chunks), "chunk_bytes": CHUNK,
        "repetitions": len(seconds["ingest"]),
        "events_per_s": {name: round(rate) for name, rate in rates.items()},
        "seconds_per_pass": {name: [round(s, 4) for s in values] for name, values in seconds.items()},
        "ratio_ingest_vs_panoramisk": round(ingest_ratio, 2),
        "ratio_parser_vs_panoramisk_parser": round(parser_ratio, 2),
        "frame_filter": True,
        "details": details,
    }
    judged = not smoke
    result.checks.append(Check("ingest (parser + tracker) events/s", f">= {TARGET_EVENTS_PER_S:,}/s",
                               f"{rates['ingest']:,.0f}/s", rates["ingest"] >= TARGET_EVENTS_PER_S if judged else None))
    result.checks.append(Check(
        "ingest vs panoramisk receive path", f">= {TARGET_RATIO:g}x",
        f"{ingest_ratio:.2f}x ({rates['ingest']:,.0f} vs {rates['panoramisk']:,.0f} events/s)",
        ingest_ratio >= TARGET_RATIO if judged else None))
    result.checks.append(Check(
        "ingest vs panoramisk parser only (decode, split, Message)", f">= {TARGET_RATIO:g}x",
        f"{rates['ingest'] / rates['panoramisk_parser']:.2f}x "
        f"({rates['ingest']:,.0f} vs {rates['panoramisk_parser']:,.0f} events/s)",
        rates["ingest"] / rates["panoramisk_parser"] >= TARGET_RATIO if judged else None))
    # Reference rows, no target: the bare parsers, and our ingest before the frame filter.
    result.checks.append(Check(
        "parser only vs panoramisk parser only", "reference",
        f"{parser_ratio:.2f}x ({rates['parser']:,.0f} vs {rates['panoramisk_parser']:,.0f} events/s)", None))
    result.checks.append(Check(
        "ingest without the frame filter", "reference",
        f"{rates['ingest_unfiltered']:,.0f}/s ({rates['ingest_unfiltered'] / rates['panoramisk']:.2f}x panoramisk)",
        None))
    if details["ingest"]["handler_errors"]:
        result.notes.append(f"tracker handler errors: {details['ingest']['handler_errors']}")
    if details["panoramisk"]["messages"] < frames:
        result.notes.append(f"panoramisk dispatched {details['panoramisk']['messages']} of {frames} frames "
                            "(it drops responses nobody waits for)")
    return result


async def run(smoke: bool) -> BenchResult:
    return run_sync(smoke)
