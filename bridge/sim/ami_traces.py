"""Recorded AMI traces for the simulator: loading them, and re-identifying them into fresh, non-clashing calls.

A trace is `NAME.ami` (raw bytes) + `NAME.timing.jsonl` (arrival time and byte range per message), optionally with
`NAME.expected.json` (who called whom) and `NAME.actions.txt` (the actions the recording driver sent).
`synthesize()` turns a trace into a new call: every Uniqueid/Linkedid, channel-name suffix and bridge id is replaced
by a fresh one derived from `call_no`, and the customer number, DID and agent extension can be swapped, so many
copies of real traffic overlap without clashing while staying byte-for-byte realistic for the tracker.

Traces are not shipped with the package: they live in a source checkout under `tests/fixtures/ami`, which
`default_fixtures_dir()` finds relative to this file or the working directory; pass `fixtures_dir` otherwise.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IdAllocator", "Trace", "TraceFrame", "default_fixtures_dir", "load_trace", "reidentify", "synthesize",
    "with_delays",
]

_SESSION_PREAMBLE = frozenset({"FullyBooted", "SuccessfulAuth"})
_UID_HEADER = re.compile(rb"^\w*?(?:uniqueid|linkedid): (\d+\.\d+)\r?$", re.M | re.I)
_CHAN_SUFFIX = re.compile(
    rb"(?<![\w/])((?:PJSIP|SIP|Local|IAX2|DAHDI|Message|Announcer|CBAnn|CBRec|Recorder|Multicast|Motif|UnicastRTP"
    rb"|AudioSocket|WebSocket|Snoop|Surrogate)/[^\s,;]+?-)([0-9a-f]{8})(?![0-9a-f])")
_UUID = re.compile(rb"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_NAMESPACE = uuid.UUID("6f1b7c1e-2b7a-4c55-9a59-3d9a3f1a7c01")
_SEP = b"\x00"


@dataclass(frozen=True, slots=True)
class TraceFrame:
    t: float
    raw: bytes
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    frames: tuple[TraceFrame, ...]
    expected: Mapping[str, Any] | None
    actions: tuple[tuple[tuple[str, str], ...], ...]

    def call_frames(self, *, include_responses: bool = False) -> list[TraceFrame]:
        """The call traffic: without the recording session's own FullyBooted/SuccessfulAuth and, unless asked,
        without replies to the recording driver's actions (Asterisk sent those to the driver's session only)."""
        frames = list(self.frames)
        start = 0
        while start < len(frames) and frames[start].name in _SESSION_PREAMBLE:
            start += 1
        return [frame for frame in frames[start:] if include_responses or frame.kind != "response"]

    def primary_call(self) -> Mapping[str, Any]:
        calls = (self.expected or {}).get("calls") or []
        return calls[0] if calls else {}


def default_fixtures_dir() -> Path:
    """`tests/fixtures/ami` of a source checkout (next to the package, or under the working directory)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = base / "tests" / "fixtures" / "ami"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("AMI traces not found: run from a source checkout or pass fixtures_dir= explicitly")


def resolve_trace(name_or_path: str | Path, fixtures_dir: Path | None = None) -> Path:
    """`inbound_answered`, `inbound_answered.ami` or a path -> the `.ami` file."""
    path = Path(name_or_path)
    if path.suffix != ".ami":
        path = path.with_name(path.name + ".ami")
    if not path.is_absolute() and not path.exists():
        path = (fixtures_dir or default_fixtures_dir()) / path.name
    if not path.is_file():
        raise FileNotFoundError(f"AMI trace {path} not found")
    return path


def load_trace(name_or_path: str | Path, fixtures_dir: Path | None = None) -> Trace:
    return _load(resolve_trace(name_or_path, fixtures_dir))


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> Trace:
    data = path.read_bytes()
    stem = path.name.removesuffix(".ami")
    frames = []
    with path.with_name(stem + ".timing.jsonl").open(encoding="utf-8") as timing:
        for line in timing:
            if line.strip():
                row = json.loads(line)
                off, length = int(row["off"]), int(row["len"])
                frames.append(TraceFrame(float(row["t"]), data[off:off + length], str(row.get("kind", "")),
                                         str(row.get("name", ""))))
    expected_path = path.with_name(stem + ".expected.json")
    expected = json.loads(expected_path.read_text(encoding="utf-8")) if expected_path.is_file() else None
    actions_path = path.with_name(stem + ".actions.txt")
    actions = _parse_actions(actions_path.read_text(encoding="utf-8")) if actions_path.is_file() else ()
    return Trace(stem, tuple(frames), expected, actions)


def _parse_actions(text: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    blocks: list[tuple[tuple[str, str], ...]] = []
    current: list[tuple[str, str]] = []
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition(": ")
        if line.startswith("#"):
            continue
        if sep:
            current.append((key, value))
        elif not line.strip() and current:
            blocks.append(tuple(current))
            current = []
    return tuple(blocks)


class IdAllocator:
    """Fresh Uniqueids, channel-name suffixes and bridge ids for one synthetic call (unique per `call_no`)."""

    def __init__(self, call_no: int, epoch: int | None = None) -> None:
        self.call_no = call_no
        self.epoch = int(time.time()) if epoch is None else epoch
        self._seq = itertools.count(call_no * 4096)

    def uniqueid(self) -> str:
        return f"{self.epoch}.{next(self._seq)}"

    def suffix(self) -> str:
        return f"{next(self._seq) & 0xFFFFFFFF:08x}"

    def bridge_id(self, seed: str = "") -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.epoch}:{self.call_no}:{seed or next(self._seq)}"))


def reidentify(
    raws: Sequence[bytes],
    alloc: IdAllocator,
    *,
    numbers: Iterable[tuple[str, str]] = (),
    tokens: Iterable[tuple[str, str]] = (),
    ids: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Rewrite identities in raw frames consistently across all of them; see the module docstring.

    `numbers`: phone numbers, matched on their last 10 digits so `8916...`/`7916...`/`+7916...` forms all follow;
    `tokens`: exact words such as an extension or DID; `ids`: preset Uniqueid replacements (Originate ChannelId).
    """
    if not raws:
        return []
    if any(_SEP in raw for raw in raws):
        return [reidentify([raw], alloc, numbers=numbers, tokens=tokens, ids=ids)[0] for raw in raws]
    blob = _SEP.join(raws)
    for old, new in numbers:
        blob = _replace_number(blob, old, new)
    for old, new in tokens:
        if old and old != new:
            blob = re.sub(rb"(?<![\w.])" + re.escape(old.encode()) + rb"(?!\w)", _literal(new.encode()), blob)
    blob = _replace_uniqueids(blob, alloc, ids or {})
    suffixes: dict[bytes, bytes] = {}
    blob = _CHAN_SUFFIX.sub(
        lambda m: m.group(1) + suffixes.setdefault(m.group(2), alloc.suffix().encode()), blob)
    bridges: dict[bytes, bytes] = {}
    blob = _UUID.sub(lambda m: bridges.setdefault(m.group(0), alloc.bridge_id(m.group(0).decode()).encode()), blob)
    return blob.split(_SEP)


def _replace_uniqueids(blob: bytes, alloc: IdAllocator, preset: Mapping[str, str]) -> bytes:
    found = dict.fromkeys(match.group(1) for match in _UID_HEADER.finditer(blob))
    if not found:
        return blob
    mapping = {old: (preset.get(old.decode()) or alloc.uniqueid()).encode() for old in found}
    pattern = re.compile(rb"(?<![\d.])(" + b"|".join(re.escape(old) for old in
                                                     sorted(mapping, key=len, reverse=True)) + rb")(?!\d|\.\d)")
    return pattern.sub(lambda m: mapping[m.group(1)], blob)


def _replace_number(blob: bytes, old: str, new: str) -> bytes:
    old_digits = re.sub(r"\D", "", old)
    new_digits = re.sub(r"\D", "", new)
    if not old_digits or old_digits == new_digits:
        return blob
    if len(old_digits) >= 10 and len(new_digits) >= 10:
        core = re.escape(old_digits[-10:].encode())
        replacement = new_digits[-10:].encode()
        return re.sub(rb"(?<![\d.])(\+?\d*?)" + core + rb"(?!\d)", lambda m: m.group(1) + replacement, blob)
    return re.sub(rb"(?<![\w.])\+?" + re.escape(old_digits.encode()) + rb"(?!\w)", _literal(new.encode()), blob)


def _literal(value: bytes) -> Callable[[re.Match[bytes]], bytes]:
    """A replacement function, so backslashes in `value` are never read as group references."""
    return lambda _match: value


def with_delays(frames: Sequence[TraceFrame], raws: Sequence[bytes]) -> list[tuple[float, bytes]]:
    """Pair each frame with the gap (seconds) since the previous one, as recorded."""
    out: list[tuple[float, bytes]] = []
    previous = frames[0].t if frames else 0.0
    for frame, raw in zip(frames, raws, strict=True):
        out.append((max(0.0, frame.t - previous), raw))
        previous = frame.t
    return out


def synthesize(
    template: str | Path,
    *,
    call_no: int,
    caller: str | None = None,
    did: str | None = None,
    agent: str | None = None,
    fixtures_dir: Path | None = None,
    epoch: int | None = None,
) -> list[tuple[float, bytes]]:
    """A fresh copy of a recorded call: `(delay since previous message, raw frame)` pairs, real-time delays.

    `caller`, `did` and `agent` replace the template's customer number, DID and (answering or first rung) agent
    as listed in its `expected.json`; a template without that party raises `ValueError`.
    """
    trace = load_trace(template, fixtures_dir)
    frames = [frame for frame in trace.call_frames() if frame.name != "Shutdown"]
    call = trace.primary_call()
    numbers: list[tuple[str, str]] = []
    tokens: list[tuple[str, str]] = []
    if caller is not None:
        numbers.append((_party(call, "customer_number", trace.name), caller))
    if did is not None:
        tokens.append((_party(call, "did", trace.name), did))
    if agent is not None:
        tokens.append((_party(call, "agent", trace.name), agent))
    raws = reidentify([frame.raw for frame in frames], IdAllocator(call_no, epoch), numbers=numbers, tokens=tokens)
    return with_delays(frames, raws)


def _party(call: Mapping[str, Any], key: str, name: str) -> str:
    value = call.get(key)
    if not value and key == "agent":
        rung = call.get("agents_rung") or []
        value = rung[0] if rung else None
    if not value:
        raise ValueError(f"trace {name!r} has no {key} to replace")
    return str(value)
