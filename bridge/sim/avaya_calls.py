"""Call primitives of the AES simulator: each changes a call's parties and emits the events a station would see.

Mixed into `AvayaSimulator`, which supplies the monitors (`_broadcast`) and device ids. Party states are what
SnapshotDevice reports: alerting, connected, held, initiated.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.sim import avaya_xml as X

__all__ = ["CallPrimitives", "SimCall"]


@dataclass(eq=False)
class SimCall:
    call_id: str
    ucid: str
    parties: dict[str, str] = field(default_factory=dict)  # number -> alerting/connected/held/initiated
    watchers: set[str] = field(default_factory=set)  # numbers whose monitors see this call's events


class CallPrimitives:
    protocol: str
    stations: set[str]
    vdns: set[str]
    calls: dict[str, SimCall]
    _call_ids: itertools.count[int]

    def device_id(self, number: str) -> str:
        raise NotImplementedError

    def _broadcast(self, call: SimCall, build: Callable[[str], bytes], *, notify: set[str] | None = None) -> None:
        raise NotImplementedError

    def new_call(self) -> SimCall:
        n = next(self._call_ids)
        call = SimCall(call_id=str(n), ucid=f"{n:020d}")
        self.calls[call.call_id] = call
        return call

    def _watch(self, call: SimCall, number: str) -> None:
        if number in self.stations or number in self.vdns:
            call.watchers.add(number)

    async def ring(self, call: SimCall, device: str, *, calling: str | None, called: str | None,
                   vdn: str | None = None) -> None:
        """The call alerts `device` (a station, or a VDN when the call enters it); Delivered to the watchers."""
        call.parties[device] = "alerting"
        if calling is not None:
            call.parties.setdefault(calling, "connected")
        self._watch(call, device)
        d = self.device_id
        self._broadcast(call, lambda mon: X.delivered(self.protocol, mon, call_id=call.call_id, alerting=d(device),
                                                      calling=d(calling) if calling else None,
                                                      called=d(called) if called else None, ucid=call.ucid,
                                                      vdn=d(vdn) if vdn else None))

    async def answer(self, call: SimCall, device: str, *, calling: str | None = None,
                     called: str | None = None) -> None:
        call.parties[device] = "connected"
        self._watch(call, device)
        d = self.device_id
        self._broadcast(call, lambda mon: X.established(self.protocol, mon, call_id=call.call_id,
                                                        answering=d(device), calling=d(calling) if calling else None,
                                                        called=d(called) if called else None, ucid=call.ucid))

    async def clear(self, call: SimCall, device: str, *, cause: str = "normalClearing") -> None:
        """`device` leaves the call. When the far party leaves, or fewer than two parties remain, the switch clears
        the rest of the call too (each remaining party gets its ConnectionCleared) and forgets it."""
        self._broadcast(call, lambda mon: X.connection_cleared(self.protocol, mon, call_id=call.call_id,
                                                               releasing=self.device_id(device), cause=cause))
        call.parties.pop(device, None)
        call.watchers.discard(device)
        far_party = device not in self.stations and device not in self.vdns
        if far_party or len(call.parties) < 2:
            for number in list(call.parties):
                if number in call.parties:
                    await self.clear(call, number, cause=cause)
            self.calls.pop(call.call_id, None)

    async def originate(self, agent: str, number: str, call: SimCall | None = None) -> SimCall:
        """`agent` dials `number`: Originated, then Delivered for the far end."""
        call = call or self.new_call()
        call.parties[agent] = "connected"
        self._watch(call, agent)
        d = self.device_id
        self._broadcast(call, lambda mon: X.originated(self.protocol, mon, call_id=call.call_id, calling=d(agent),
                                                       called=d(number)))
        await self.ring(call, number, calling=agent, called=number)
        return call

    async def fail(self, call: SimCall, device: str, *, cause: str = "busy") -> None:
        call.parties.pop(device, None)
        self._broadcast(call, lambda mon: X.failed(self.protocol, mon, call_id=call.call_id,
                                                   failing=self.device_id(device), called=self.device_id(device),
                                                   cause=cause))

    async def divert(self, call: SimCall, device: str, new_destination: str) -> None:
        self._broadcast(call, lambda mon: X.diverted(self.protocol, mon, call_id=call.call_id,
                                                     diverting=self.device_id(device),
                                                     new_destination=self.device_id(new_destination)))
        call.parties.pop(device, None)
        call.watchers.discard(device)

    async def hold(self, call: SimCall, device: str) -> None:
        call.parties[device] = "held"
        self._broadcast(call, lambda mon: X.held(self.protocol, mon, call_id=call.call_id,
                                                 holding=self.device_id(device)))

    async def transfer(self, held_call: SimCall, consult: SimCall | None, transferring: str, to: str) -> SimCall:
        """`transferring` joins its held call and the consult call (attended) or sends the held call to `to`
        (blind, `consult` None). The held call survives with the transferring party gone."""
        secondary = consult.call_id if consult else held_call.call_id
        notify = set(held_call.watchers) | (consult.watchers if consult else set())
        if consult is not None:
            for number, state in consult.parties.items():
                if number != transferring:
                    held_call.parties[number] = state
            held_call.watchers |= consult.watchers
            self.calls.pop(consult.call_id, None)
        held_call.parties.pop(transferring, None)
        for number, state in list(held_call.parties.items()):
            if state == "held":
                held_call.parties[number] = "connected"
        endpoints = [self.device_id(n) for n in held_call.parties]
        d = self.device_id
        self._broadcast(held_call, lambda mon: X.transferred(
            self.protocol, mon, primary=held_call.call_id, secondary=secondary, transferring=d(transferring),
            transferred_to=d(to), new_call=held_call.call_id, endpoints=endpoints), notify=notify)
        held_call.watchers.discard(transferring)
        return held_call
