"""Scripted outcomes of an AMI `Originate` for the simulator: what Asterisk would emit after "successfully queued".

`answered` re-identifies a recorded click-to-call (`c2c_local_answered` for `Local/...` channels, `click_to_call`
otherwise) with the requested extension, number, ChannelId and variables. The other outcomes have no recording and
are composed here from the same building blocks Asterisk uses (channel block, Dial*, Hangup with Q.850 causes):
`agent_no_answer` (the agent's phone rings out: Hangup 19, OriginateResponse Failure Reason 3), `customer_busy`
(the agent answers, the trunk leg is busy: DialEnd BUSY, Hangup 17) and `failed` (no channel at all: Failure
Reason 0, Uniqueid `<unknown>`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.sim.ami_frames import SimChannel, channel_block, encode_frame, parse_frame
from bridge.sim.ami_traces import IdAllocator, TraceFrame, load_trace, reidentify, with_delays

__all__ = ["OUTCOMES", "OriginateOutcome", "OriginateSpec", "originate_script"]

OriginateOutcome = Literal["answered", "agent_no_answer", "customer_busy", "failed"]
OUTCOMES: tuple[OriginateOutcome, ...] = ("answered", "agent_no_answer", "customer_busy", "failed")
_TRUE = frozenset({"true", "yes", "1", "on", "y", "t"})
_CHANNEL = re.compile(r"^(?P<tech>[A-Za-z][A-Za-z0-9]*)/(?P<resource>[^@/\s]+)(?:@(?P<context>[^/\s]+))?(?:/\S*)?$")
_PLACEHOLDER = "\x01SIMVAR{}\x01"
Script = list[tuple[float, bytes]]


@dataclass(frozen=True, slots=True)
class OriginateSpec:
    """The parts of an Originate action the simulator acts on."""

    action_id: str | None
    channel: str
    context: str
    exten: str
    is_async: bool
    timeout_ms: int
    variables: tuple[tuple[str, str], ...]
    channel_id: str | None = None
    other_channel_id: str | None = None

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> OriginateSpec:
        first: dict[str, str] = {}
        variables: list[tuple[str, str]] = []
        for key, value in pairs:
            if key.lower() == "variable":
                for item in value.split(","):
                    name, sep, val = item.partition("=")
                    if sep and name.strip():
                        variables.append((name.strip(), val))
            else:
                first.setdefault(key.lower(), value)
        try:
            timeout_ms = int(first.get("timeout", "30000"))
        except ValueError:
            timeout_ms = 30000
        return cls(
            action_id=first.get("actionid"), channel=first.get("channel", "").strip(),
            context=first.get("context", "from-internal"), exten=first.get("exten", ""),
            is_async=first.get("async", "").strip().lower() in _TRUE, timeout_ms=timeout_ms,
            variables=tuple(variables), channel_id=first.get("channelid"), other_channel_id=first.get("otherchannelid"),
        )

    def target(self) -> tuple[str, str, str | None] | None:
        """`(tech, extension, local context)` of the Channel, or None when it is not a dialable channel."""
        match = _CHANNEL.match(self.channel)
        if match is None:
            return None
        return match["tech"], match["resource"], match["context"]


def originate_script(
    spec: OriginateSpec,
    outcome: OriginateOutcome,
    alloc: IdAllocator,
    *,
    fixtures_dir: Path | None = None,
    trunk: str = "provider",
) -> Script:
    """The events following the "queued" reply, as `(delay, frame)` pairs with real-time delays."""
    target = spec.target()
    if outcome == "failed" or target is None:
        return [(0.05, _originate_response(spec, None, "Failure", 0))]
    if outcome == "answered":
        return _answered(spec, target, alloc, fixtures_dir)
    return _Composer(spec, target, alloc, trunk).run(outcome)


# ---------------------------------------------------------------------------------------------- answered (recorded)

def _answered(spec: OriginateSpec, target: tuple[str, str, str | None], alloc: IdAllocator,
              fixtures_dir: Path | None) -> Script:
    tech, ext, context = target
    trace = load_trace("c2c_local_answered" if tech.lower() == "local" else "click_to_call", fixtures_dir)
    template = OriginateSpec.from_pairs(trace.actions[0])
    _, old_ext, old_context = template.target() or ("", "", None)
    wanted = {name.lstrip("_"): value for name, value in spec.variables}
    recorded = {name.lstrip("_"): value for name, value in template.variables}
    frames = [frame for frame in trace.call_frames() if not _drops_var(frame, recorded, wanted)]
    originated = [frame for frame in frames if frame.name == "Newchannel"]
    raws = [frame.raw for frame in frames]
    # Variable values go through placeholders, so the id/number rewriting can never touch them.
    fills: dict[bytes, bytes] = {}
    if template.exten and spec.exten:
        # The dialled string appears verbatim (Exten, OriginateResponse); other forms follow via `numbers`.
        fills[b"\x01SIMEXTEN\x01"] = spec.exten.encode()
        raws = [raw.replace(template.exten.encode(), b"\x01SIMEXTEN\x01") for raw in raws]
    for index, (name, value) in enumerate(wanted.items()):
        placeholder = _PLACEHOLDER.format(index).encode()
        fills[placeholder] = value.encode()
        old = recorded.get(name)
        if old:
            raws = [raw.replace(old.encode(), placeholder) for raw in raws]
    if originated:
        extra = [_varset_from(originated[0].raw, name, _PLACEHOLDER.format(index))
                 for index, (name, _) in enumerate(spec.variables) if name.lstrip("_") not in recorded]
        at = frames.index(originated[0]) + 1
        raws[at:at] = extra
        frames[at:at] = [TraceFrame(originated[0].t, raw, "event", "VarSet") for raw in extra]
    ids: dict[str, str] = {}
    if spec.channel_id and originated:
        ids[_header(originated[0].raw, "Uniqueid")] = spec.channel_id
        if tech.lower() == "local" and len(originated) > 1:
            ids[_header(originated[1].raw, "Uniqueid")] = spec.other_channel_id or f"{spec.channel_id};2"
    raws = reidentify(raws, alloc, numbers=[(template.exten, spec.exten)], tokens=[(old_ext, ext)], ids=ids)
    old_aid = f"ActionID: {template.action_id}\r\n".encode()
    new_aid = f"ActionID: {spec.action_id}\r\n".encode() if spec.action_id else b""
    literals = [*fills.items(), (old_aid, new_aid)]
    if context and old_context and context != old_context:
        literals.append((f"Local/{ext}@{old_context}-".encode(), f"Local/{ext}@{context}-".encode()))
    out = []
    for raw in raws:
        fixed = raw
        for before, after in literals:
            fixed = fixed.replace(before, after)
        out.append(fixed)
    return with_delays(frames, out)


def _drops_var(frame: TraceFrame, recorded: dict[str, str], wanted: dict[str, str]) -> bool:
    """VarSet lines of recorded originate variables the new request did not set."""
    if frame.name != "VarSet":
        return False
    name = _header(frame.raw, "Variable").lstrip("_")
    return name in recorded and name not in wanted


def _varset_from(newchannel: bytes, name: str, value: str) -> bytes:
    pairs = [(k, v) for k, v in parse_frame(newchannel) if k not in ("Event", "Privilege")]
    return encode_frame([("Event", "VarSet"), ("Privilege", "dialplan,all"), *pairs, ("Variable", name),
                         ("Value", value)])


def _header(raw: bytes, key: str) -> str:
    for k, v in parse_frame(raw):
        if k == key:
            return v
    return ""


# ---------------------------------------------------------------------------------------------- composed outcomes

class _Composer:
    """Builds the no-answer and busy sequences for `Local/<ext>@<ctx>` or a device channel such as `PJSIP/<ext>`."""

    def __init__(self, spec: OriginateSpec, target: tuple[str, str, str | None], alloc: IdAllocator,
                 trunk: str) -> None:
        self.spec, self.alloc, self.trunk = spec, alloc, trunk
        tech, self.ext, local_context = target
        self.local = tech.lower() == "local"
        uid = spec.channel_id or alloc.uniqueid()
        self.script: Script = []
        if self.local:
            ctx = local_context or "default"
            name = f"Local/{self.ext}@{ctx}-{alloc.suffix()}"
            self.first = SimChannel(f"{name};1", uid, uid, 0, context=ctx, exten=self.ext)
            self.second: SimChannel | None = SimChannel(f"{name};2", spec.other_channel_id or f"{uid};2", uid, 4,
                                                        context=ctx, exten=self.ext)
            self.phone = SimChannel(f"PJSIP/{self.ext}-{alloc.suffix()}", alloc.uniqueid(), uid, 0,
                                    cid_num=self.ext, cid_name=f"Agent {self.ext}", exten="s")
        else:
            self.first = SimChannel(f"{tech}/{self.ext}-{alloc.suffix()}", uid, uid, 0, cid_num=self.ext,
                                    cid_name=f"Agent {self.ext}", exten="s")
            self.second = None
            self.phone = self.first

    def emit(self, delay: float, event: str, *pairs: tuple[str, str], privilege: str = "call,all") -> None:
        self.script.append((delay, encode_frame([("Event", event), ("Privilege", privilege), *pairs])))

    def run(self, outcome: OriginateOutcome) -> Script:
        self._ring()
        if outcome == "agent_no_answer":
            self._ring_out()
        else:
            self._answer_then_busy()
        return self.script

    def _ring(self) -> None:
        first, second, phone = self.first, self.second, self.phone
        self.emit(0.02, "Newchannel", *channel_block(first))
        if second is not None:
            self.emit(0.0, "Newchannel", *channel_block(second))
        for name, value in self.spec.variables:
            self.emit(0.0, "VarSet", *channel_block(first), ("Variable", name), ("Value", value),
                      privilege="dialplan,all")
        self.emit(0.0, "DialBegin", *channel_block(first, "Dest"), ("DialString", self.ext))
        if second is not None:
            self.emit(0.01, "Newchannel", *channel_block(phone))
            self.emit(0.0, "DialBegin", *channel_block(second), *channel_block(phone, "Dest"),
                      ("DialString", self.ext))
        self.phone = phone = phone.with_(state=5)
        self.emit(0.05, "Newstate", *channel_block(phone))
        if second is None:
            self.first = first = phone
        else:
            self.first = first = first.with_(state=5)
            self.emit(0.0, "Newstate", *channel_block(first))
            self.emit(0.0, "DialState", *channel_block(second), *channel_block(phone, "Dest"),
                      ("DialStatus", "RINGING"))
        self.emit(0.0, "DialState", *channel_block(first, "Dest"), ("DialStatus", "RINGING"))

    def _ring_out(self) -> None:
        ring = min(self.spec.timeout_ms, 60_000) / 1000
        self.emit(ring, "DialEnd", *channel_block(self.first, "Dest"), ("DialStatus", "NOANSWER"))
        self.script.append((0.0, _originate_response(self.spec, self.first, "Failure", 3)))
        if self.second is not None:
            self.emit(0.0, "DialEnd", *channel_block(self.second), *channel_block(self.phone, "Dest"),
                      ("DialStatus", "NOANSWER"))
        self.emit(0.0, "Hangup", *channel_block(self.phone), *_cause(19))
        if self.second is not None:
            self.emit(0.0, "Hangup", *channel_block(self.second), *_cause(0))
            self.emit(0.0, "Hangup", *channel_block(self.first), *_cause(0))

    def _answer_then_busy(self) -> None:
        spec, second = self.spec, self.second
        self.phone = self.phone.with_(state=6)
        self.emit(1.5, "Newstate", *channel_block(self.phone))
        bridge = self.alloc.bridge_id()
        if second is not None:
            self.emit(0.0, "DialEnd", *channel_block(second), *channel_block(self.phone, "Dest"),
                      ("DialStatus", "ANSWER"))
            self.second = second = second.with_(state=6)
            self.emit(0.0, "Newstate", *channel_block(second))
            self.emit(0.0, "BridgeCreate", *_bridge(bridge, 0))
            self.emit(0.0, "BridgeEnter", *_bridge(bridge, 1), *channel_block(self.phone))
            self.emit(0.0, "BridgeEnter", *_bridge(bridge, 2), *channel_block(second))
        self.first = self.first.with_(state=6)
        if second is not None:
            self.emit(0.0, "Newstate", *channel_block(self.first))
        self.emit(0.0, "DialEnd", *channel_block(self.first, "Dest"), ("DialStatus", "ANSWER"))
        self.script.append((0.0, _originate_response(spec, self.first, "Success", 4)))
        self.first = self.first.with_(context=spec.context, exten=spec.exten, cid_num=self.ext,
                                      cid_name=f"Agent {self.ext}", conn_num=spec.exten)
        self.emit(0.01, "Newexten", *channel_block(self.first), ("Extension", spec.exten), ("Application", "Dial"),
                  ("AppData", f"PJSIP/{spec.exten}@{self.trunk},60"), privilege="dialplan,all")
        uid = self.first.uniqueid
        trunk = SimChannel(f"PJSIP/{self.trunk}-{self.alloc.suffix()}", self.alloc.uniqueid(), uid, 0,
                           cid_num=self.ext, cid_name=f"Agent {self.ext}", context="from-internal", exten="s")
        self.emit(0.0, "Newchannel", *channel_block(trunk))
        for name, value in spec.variables:
            if name.startswith("__"):
                self.emit(0.0, "VarSet", *channel_block(trunk), ("Variable", name), ("Value", value),
                          privilege="dialplan,all")
        self.emit(0.0, "DialBegin", *channel_block(self.first), *channel_block(trunk, "Dest"),
                  ("DialString", f"{spec.exten}@{self.trunk}"))
        trunk = trunk.with_(state=7)
        self.emit(0.3, "DialEnd", *channel_block(self.first), *channel_block(trunk, "Dest"), ("DialStatus", "BUSY"))
        self.emit(0.0, "Hangup", *channel_block(trunk), *_cause(17))
        self.emit(0.2, "Hangup", *channel_block(self.first), *_cause(17))
        if second is not None:
            self.emit(0.0, "BridgeLeave", *_bridge(bridge, 1), *channel_block(second))
            self.emit(0.0, "Hangup", *channel_block(second), *_cause(16))
            self.emit(0.0, "BridgeLeave", *_bridge(bridge, 0), *channel_block(self.phone))
            self.emit(0.0, "BridgeDestroy", *_bridge(bridge, 0))
            self.emit(0.0, "Hangup", *channel_block(self.phone), *_cause(16))


_CAUSE_TEXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "User alerting, no answer"}


def _cause(code: int) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("Cause", str(code)), ("Cause-txt", _CAUSE_TEXT.get(code, "Unknown"))


def _bridge(bridge_id: str, members: int) -> list[tuple[str, str]]:
    return [("BridgeUniqueid", bridge_id), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
            ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"), ("BridgeNumChannels", str(members)),
            ("BridgeVideoSourceMode", "none")]


def _originate_response(spec: OriginateSpec, chan: SimChannel | None, response: str, reason: int) -> bytes:
    pairs = [("Event", "OriginateResponse"), ("Privilege", "call,all")]
    if spec.action_id:
        pairs.append(("ActionID", spec.action_id))
    pairs += [("Response", response), ("Channel", chan.name if chan else spec.channel), ("Context", spec.context),
              ("Exten", spec.exten), ("Reason", str(reason)),
              ("Uniqueid", chan.uniqueid if chan else (spec.channel_id or "<unknown>")),
              ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>")]
    return encode_frame(pairs)
