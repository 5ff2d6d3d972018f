"""CardTimer: ring-to-card measured once per call, from the first ring to the first accepted card-showing op."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.card_timer import CardTimer
from bridge.sync.operations import CrmOp, OpKind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def op(key: str, kind: OpKind, **params: Any) -> CrmOp:
    return CrmOp(call_key=key, kind=kind, params=params)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_measures_from_the_first_ring_to_the_first_show(clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock)
    timer.ringing("c1")
    clock.now += 0.5
    timer.ringing("c1")  # a second agent rings: the clock does not restart
    clock.now += 0.25
    timer.accepted(op("c1", OpKind.REGISTER, SHOW=0))  # registered without a card: not yet
    timer.accepted(op("c1", OpKind.SHOW))
    timer.accepted(op("c1", OpKind.SHOW))  # later cards of the same call are not measured again
    assert seen == [0.75]
    assert len(timer) == 0


def test_a_register_that_shows_the_card_counts(clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock)
    timer.ringing("c1")
    clock.now += 1.0
    timer.accepted(op("c1", OpKind.REGISTER, SHOW=1))
    assert seen == [1.0]


@pytest.mark.parametrize("kind", [OpKind.HIDE, OpKind.FINISH, OpKind.ATTACH_RECORD])
def test_other_ops_do_not_count(kind: OpKind, clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock)
    timer.ringing("c1")
    timer.accepted(op("c1", kind))
    assert seen == [] and len(timer) == 1


def test_calls_that_never_rang_or_ended_first_are_not_measured(clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock)
    timer.accepted(op("outbound", OpKind.REGISTER, SHOW=1))  # never rang here
    timer.ringing("short")
    timer.ended("short")
    timer.accepted(op("short", OpKind.SHOW))
    timer.ended("unknown")  # harmless
    assert seen == [] and len(timer) == 0


def test_memory_is_bounded_oldest_forgotten_first(clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock, max_calls=2)
    for key in ("a", "b", "c"):
        timer.ringing(key)
    assert len(timer) == 2
    for key in ("a", "b", "c"):
        timer.accepted(op(key, OpKind.SHOW))
    assert len(seen) == 2


def test_odd_show_flags_and_a_clock_going_back_never_raise(clock: Clock) -> None:
    seen: list[float] = []
    timer = CardTimer(seen.append, clock=clock)
    timer.ringing("c1")
    timer.accepted(op("c1", OpKind.REGISTER, SHOW="yes"))  # unreadable: treated as no card
    clock.now -= 5
    timer.accepted(op("c1", OpKind.SHOW))
    assert seen == [0.0]
    with pytest.raises(ValueError):
        CardTimer(seen.append, max_calls=0)
