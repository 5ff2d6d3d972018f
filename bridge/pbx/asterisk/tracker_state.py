"""Mutable per-call state of the Asterisk call tracker: legs (channels) and calls (groups of legs).

Plain data with a few helpers; the tracker (`tracker.py`) owns every transition. Times are unix seconds (floats) as
the tracker received them; they become datetimes only in emitted events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.model import CallEvent, Direction, OriginateRequest, RingStopReason, Transfer, TransferKind
from bridge.pbx.asterisk.classify import ChannelInfo, ChannelKind

__all__ = ["Call", "Leg", "PendingOriginate", "PendingTransfer", "Ring"]


@dataclass(slots=True, eq=False)
class Leg:
    """One channel (Uniqueid). `peer` is the other half of a Local pair."""

    uid: str
    info: ChannelInfo
    call: Call
    linkedid: str
    context: str | None = None  # where the channel was created (Newchannel)
    exten: str | None = None  # what it dialled / arrived on at creation
    caller_num: str | None = None
    state: int = 0
    bridge: str | None = None
    peer: str | None = None
    gone: bool = False
    hanging_up: bool = False  # HangupRequest seen: the party is going away
    cause: int | None = None
    cause_txt: str | None = None
    # MixMonitor file seen in dialplan (`Newexten` app data), used only if no MIXMONITOR_FILENAME follows.
    mixmon_candidate: str | None = None

    @property
    def kind(self) -> ChannelKind:
        return self.info.kind

    @property
    def agent(self) -> str | None:
        """The agent this leg stands for (a phone or a Local half of a queue member / ring group / originate)."""
        return self.info.extension if self.info.is_agent else None


@dataclass(slots=True)
class Ring:
    """An agent whose phone(s) ring: the ringing legs, since when, and the first reason one of them stopped."""

    legs: set[str]
    since: float
    reason: RingStopReason | None = None


@dataclass(frozen=True, slots=True)
class PendingTransfer:
    """A transfer Asterisk reported; it is applied when another agent is connected to the customer."""

    from_agent: str | None
    kind: TransferKind
    at: float


@dataclass(slots=True, eq=False)
class PendingOriginate:
    """A click-to-call the adapter sent; `call` is set once its channels are recognised."""

    action_id: str
    request: OriginateRequest
    at: float
    call: Call | None = None


@dataclass(slots=True, eq=False)
class Call:
    """One linkedid group (after merges): what the CRM sees as one call."""

    call_id: str
    started_at: float
    first: Leg | None = None
    legs: dict[str, Leg] = field(default_factory=dict)
    linkedids: set[str] = field(default_factory=set)
    direction: Direction | None = None
    started: bool = False
    closed: bool = False
    # Inbound trunk arrived on exten `s`: wait (briefly) for FROM_DID before announcing the call.
    awaiting_line: bool = False
    pending: list[CallEvent] = field(default_factory=list)
    external_number: str | None = None
    line: str | None = None
    originator: str | None = None  # the agent who placed an outbound/internal call
    crm_call_id: str | None = None
    originate: PendingOriginate | None = None
    originate_exten: str | None = None
    originate_reason: int | None = None
    external_uid: str | None = None  # the customer's leg
    trunk_outcome: str | None = None  # last DialEnd status towards a trunk
    device_outcomes: list[str] = field(default_factory=list)  # DialEnd statuses towards agent phones
    local_outcomes: list[str] = field(default_factory=list)  # ... towards Local halves standing for agents
    dialstatus: str | None = None  # last DIALSTATUS the dialplan saw
    outnum: str | None = None  # FreePBX OUTNUM: the number sent to the trunk
    ringing: dict[str, Ring] = field(default_factory=dict)
    agents_rung: list[str] = field(default_factory=list)
    last_pickup: tuple[float, str] | None = None
    answered_at: float | None = None
    agent: str | None = None  # the agent talking now / who talked last
    transfers: list[Transfer] = field(default_factory=list)
    pending_transfer: PendingTransfer | None = None
    consulted: set[frozenset[str]] = field(default_factory=set)
    recordings: list[str] = field(default_factory=list)

    def alive_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if not leg.gone]

    def external_leg(self) -> Leg | None:
        return self.legs.get(self.external_uid) if self.external_uid is not None else None
