"""Scripted calls for the Finesse simulator: each drives one call through the Dialog states Finesse would publish.

Times come from the simulator's virtual clock (`ring`, `talk` are seconds of PBX time, not waits); `pause` is real
time between steps, for demos (0 in tests: the adapter must cope with notifications arriving back to back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.sim.finesse import FinesseSim

__all__ = [
    "blind_transfer",
    "connect_made_call",
    "consult_transfer",
    "inbound_answered",
    "inbound_missed",
    "outbound",
]


async def _step(sim: FinesseSim, seconds: float, pause: float) -> None:
    sim.advance(seconds)
    await asyncio.sleep(pause)


async def inbound_answered(sim: FinesseSim, *, caller: str, dnis: str, agent: str, ring: float = 4,
                           talk: float = 30, pause: float = 0.0) -> str:
    """ACD call from `caller` to `dnis`, offered to `agent`, answered, then the caller hangs up."""
    d = sim.create_dialog(from_address=caller, to_address=dnis, call_type="ACD_IN", state="ALERTING", dnis=dnis,
                          dialed_number=dnis, participants={caller: "ACTIVE", agent: "ALERTING"})
    await _step(sim, ring, pause)
    sim.set_participant(d, agent, "ACTIVE", dialog_state="ACTIVE")
    await _step(sim, talk, pause)
    sim.end_dialog(d)
    await asyncio.sleep(pause)
    return d


async def inbound_missed(sim: FinesseSim, *, caller: str, dnis: str, agents: Sequence[str], ring: float = 12,
                         pause: float = 0.0) -> str:
    """The call rings `agents` (shared line / broadcast) and the caller gives up."""
    legs = {caller: "ACTIVE", **dict.fromkeys(agents, "ALERTING")}
    d = sim.create_dialog(from_address=caller, to_address=dnis, call_type="ACD_IN", state="ALERTING", dnis=dnis,
                          dialed_number=dnis, participants=legs)
    await _step(sim, ring, pause)
    sim.end_dialog(d)
    await asyncio.sleep(pause)
    return d


async def outbound(sim: FinesseSim, *, agent: str, number: str, answer: bool = True, cause: str | None = None,
                   ring: float = 5, talk: float = 20, pause: float = 0.0) -> str:
    """The agent dials `number` from the phone; the far end answers (or not, or is busy with `cause`)."""
    d = sim.create_dialog(from_address=agent, to_address=number, call_type="AGENT_OUT", state="INITIATED",
                          dialed_number=number, participants={agent: "INITIATED"})
    await connect_made_call(sim, d, number=number, answer=answer, cause=cause, ring=ring, talk=talk, pause=pause)
    return d


async def connect_made_call(sim: FinesseSim, dialog_id: str, *, number: str, answer: bool = True,
                            cause: str | None = None, ring: float = 3, talk: float = 10, pause: float = 0.0) -> None:
    """Drive an outbound dialog (e.g. one MAKE_CALL created): far end rings, answers or not, hang up."""
    agent = sim.dialogs[dialog_id].from_address
    await _step(sim, 1, pause)
    sim.set_participant(dialog_id, agent, "ACTIVE")
    sim.set_participant(dialog_id, number, "ALERTING", dialog_state="ALERTING")
    await _step(sim, ring, pause)
    if cause is not None:
        sim.set_participant(dialog_id, number, "FAILED", cause=cause)
        await _step(sim, 1, pause)
        sim.end_dialog(dialog_id, state="FAILED", cause=cause)
        return
    if answer:
        sim.set_participant(dialog_id, number, "ACTIVE", dialog_state="ACTIVE")
        await _step(sim, talk, pause)
    sim.end_dialog(dialog_id)
    await asyncio.sleep(pause)


async def blind_transfer(sim: FinesseSim, *, caller: str, dnis: str, from_agent: str, to_agent: str,
                         talk: float = 10, pause: float = 0.0) -> str:
    """Answered by `from_agent`, single-step transferred to `to_agent`, who answers; the caller hangs up."""
    d = sim.create_dialog(from_address=caller, to_address=dnis, call_type="ACD_IN", state="ALERTING", dnis=dnis,
                          dialed_number=dnis, participants={caller: "ACTIVE", from_agent: "ALERTING"})
    await _step(sim, 3, pause)
    sim.set_participant(d, from_agent, "ACTIVE", dialog_state="ACTIVE")
    await _step(sim, talk, pause)
    sim.set_participant(d, from_agent, "DROPPED")
    sim.remove_participant(d, from_agent)
    sim.set_participant(d, to_agent, "ALERTING")
    await _step(sim, 4, pause)
    sim.set_participant(d, to_agent, "ACTIVE")
    await _step(sim, talk, pause)
    sim.end_dialog(d)
    await asyncio.sleep(pause)
    return d


async def consult_transfer(sim: FinesseSim, *, caller: str, dnis: str, from_agent: str, to_agent: str,
                           talk: float = 10, pause: float = 0.0) -> tuple[str, str]:
    """Answered by `from_agent`, who holds, consults `to_agent`, completes the transfer; the caller hangs up."""
    d = sim.create_dialog(from_address=caller, to_address=dnis, call_type="ACD_IN", state="ALERTING", dnis=dnis,
                          dialed_number=dnis, participants={caller: "ACTIVE", from_agent: "ALERTING"})
    await _step(sim, 3, pause)
    sim.set_participant(d, from_agent, "ACTIVE", dialog_state="ACTIVE")
    await _step(sim, talk, pause)
    sim.set_participant(d, from_agent, "HELD")
    consult = sim.create_dialog(from_address=from_agent, to_address=to_agent, call_type="CONSULT",
                                state="ALERTING", dialed_number=to_agent, associated_id=d,
                                participants={from_agent: "ACTIVE", to_agent: "ALERTING"})
    await _step(sim, 3, pause)
    sim.set_participant(consult, to_agent, "ACTIVE", dialog_state="ACTIVE")
    await _step(sim, 5, pause)
    # Transfer complete: the original call survives with the target on it; the consult call goes away.
    sim.end_dialog(consult)
    sim.set_participant(d, to_agent, "ACTIVE")
    sim.set_participant(d, from_agent, "DROPPED")
    sim.update_dialog(d, secondary_id=consult)
    await _step(sim, talk, pause)
    sim.end_dialog(d)
    await asyncio.sleep(pause)
    return d, consult
