"""Bridge membership and the walk that finds who is connected to whom (through bridges and Local pairs)."""

from __future__ import annotations

from bridge.model import Direction
from bridge.pbx.asterisk.classify import ChannelKind
from bridge.pbx.asterisk.tracker_state import Call, Leg

__all__ = ["Bridges"]


class Bridges:
    def __init__(self, legs: dict[str, Leg]) -> None:
        self._legs = legs
        self.members: dict[str, dict[str, None]] = {}  # bridge id -> member uids in order of entry

    def __len__(self) -> int:
        return len(self.members)

    def clear(self) -> None:
        self.members.clear()

    def destroy(self, bridge_id: str) -> None:
        for uid in self.members.pop(bridge_id, None) or ():
            leg = self._legs.get(uid)
            if leg is not None:
                leg.bridge = None

    def put(self, leg: Leg, bridge_id: str | None) -> None:
        """Move `leg` into a bridge (None: out of any)."""
        if leg.bridge == bridge_id:
            return
        if leg.bridge is not None:
            members = self.members.get(leg.bridge)
            if members is not None:
                members.pop(leg.uid, None)
                if not members:
                    del self.members[leg.bridge]
        leg.bridge = bridge_id
        if bridge_id is not None:
            self.members.setdefault(bridge_id, {})[leg.uid] = None

    def mates(self, leg: Leg) -> list[Leg]:
        members = self.members.get(leg.bridge) if leg.bridge is not None else None
        if not members:
            return []
        return [m for uid in members if uid != leg.uid and (m := self._legs.get(uid)) is not None and not m.gone]

    def agents_near(self, start: Leg) -> list[str]:
        """Agents connected to `start` through bridges, crossing Local pairs; phones first.

        A Local half standing for an agent counts only when no phone is reached and its other half is bridged with
        someone (e.g. a follow-me to a mobile), so a Local answered by voicemail does not look like a talking agent.
        """
        seen = {start.uid}
        queue = [start]
        peer = self._legs.get(start.peer) if start.peer is not None else None
        if peer is not None and not peer.gone:
            seen.add(peer.uid)
            queue.append(peer)
        phones: list[str] = []
        locals_: list[Leg] = []
        while queue:
            current = queue.pop(0)
            for other in self.mates(current):
                if other.uid in seen:
                    continue
                seen.add(other.uid)
                if other.kind is ChannelKind.DEVICE and other.agent is not None:
                    if other.agent not in phones:
                        phones.append(other.agent)
                elif other.info.is_local:
                    if other.kind is ChannelKind.LOCAL_AGENT:
                        locals_.append(other)
                    twin = self._legs.get(other.peer) if other.peer is not None else None
                    if twin is not None and not twin.gone and twin.uid not in seen:
                        seen.add(twin.uid)
                        queue.append(twin)
        if phones:
            return phones
        found: list[str] = []
        for local in locals_:
            twin = self._legs.get(local.peer) if local.peer is not None else None
            if twin is not None and self.mates(twin) and local.agent is not None and local.agent not in found:
                found.append(local.agent)
        return found

    def talker(self, call: Call) -> str | None:
        """The agent connected to the customer now (internal calls: to the caller), or None."""
        exclude: str | None = None
        if call.direction in (Direction.INBOUND, Direction.OUTBOUND):
            anchors = [leg for leg in call.legs.values() if leg.kind is ChannelKind.TRUNK and not leg.gone]
            anchors.sort(key=lambda leg: leg.uid != call.external_uid)
        else:
            anchors = [call.first] if call.first is not None and not call.first.gone else []
            exclude = call.originator or (call.first.agent if call.first is not None else None)
        found: list[str] = []
        for anchor in anchors:
            for agent in self.agents_near(anchor):
                if agent != exclude and agent not in found:
                    found.append(agent)
        if call.agent in found:
            return call.agent
        return found[0] if found else None

    def note_consult(self, call: Call, leg: Leg) -> None:
        """Remember agents who talked to each other in this call (an attended transfer's consultation)."""
        if leg.kind is not ChannelKind.DEVICE or leg.agent is None:
            return
        for agent in self.agents_near(leg):
            if agent != leg.agent:
                call.consulted.add(frozenset((leg.agent, agent)))
