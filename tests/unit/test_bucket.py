"""The client-side leaky bucket against the portal's own bucket (the simulator's `ServerBucket`), on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.crm.bitrix24.bucket import LeakyBucket
from bridge.sim.bitrix24_limits import OperatingBudget, ServerBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=2.0, burst=5, clock=clock)
    taken = 0
    while bucket.try_acquire():
        bucket.release()
        taken += 1
    assert taken == 4  # burst minus the safety margin of one
    clock.now += 0.5  # one request drains at 2/s
    assert bucket.try_acquire()
    bucket.release()
    assert not bucket.try_acquire()
    assert bucket.wait_time() > 0


def test_in_flight_requests_do_not_drain() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=10.0, burst=3, margin=0, clock=clock)
    assert bucket.try_acquire() and bucket.try_acquire() and bucket.try_acquire()
    clock.now += 3600  # an hour later, but no answer has come back
    assert not bucket.try_acquire()
    bucket.release()
    assert not bucket.try_acquire()  # the released one starts draining only now
    clock.now += 0.1
    assert bucket.try_acquire()


def test_saturate_assumes_a_full_portal() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=1.0, burst=10, clock=clock)
    bucket.saturate()
    assert bucket.available() == 0
    assert not bucket.try_acquire()
    clock.now += 1.0
    assert bucket.try_acquire()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LeakyBucket(rate=0, burst=5)
    with pytest.raises(ValueError):
        LeakyBucket(rate=1, burst=0)
    assert LeakyBucket(rate=1, burst=1).capacity == 1  # the margin never leaves zero room


def test_initial_level_is_capped() -> None:
    bucket = LeakyBucket(rate=1.0, burst=10, initial_level=99, clock=FakeClock())
    assert bucket.available() == 0


async def test_acquire_waits_for_release_then_proceeds() -> None:
    bucket = LeakyBucket(rate=200.0, burst=3, margin=0)
    for _ in range(3):
        await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # all three still in flight: nothing can drain
    bucket.release()
    await asyncio.wait_for(waiter, timeout=2.0)
    assert bucket.level <= 3


async def test_waiters_are_served_in_order() -> None:
    bucket = LeakyBucket(rate=500.0, burst=2, margin=0)
    order: list[int] = []

    async def one(i: int) -> None:
        async with bucket.slot():
            order.append(i)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), timeout=5.0)
    assert order == list(range(20))


# Random schedules: each request is sent (client acquire), arrives at the portal some time later, and its answer
# comes back later still. Whatever the delays, the portal must never have to refuse one.
_delays = st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, 1.0])
_steps = st.lists(st.tuples(st.sampled_from(["send", "arrive", "answer"]), _delays, st.integers(0, 1000)),
                  min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(_steps, st.sampled_from([(2.0, 50), (50.0, 20), (5.0, 3), (1.0, 1)]))
def test_portal_never_refuses(steps: list[tuple[str, float, int]], limits: tuple[float, int]) -> None:
    rate, burst = limits
    clock = FakeClock()
    client = LeakyBucket(rate=rate, burst=burst, clock=clock)
    portal = ServerBucket(rate, burst, clock=clock)
    sent: list[int] = []
    arrived: list[int] = []
    counter = 0
    for kind, dt, pick in steps:
        clock.now += dt
        if kind == "send" and client.try_acquire():
            sent.append(counter)
            counter += 1
        elif kind == "arrive" and sent:
            arrived.append(sent.pop(pick % len(sent)))
            assert portal.admit(), "the portal refused a request the client let through"
        elif kind == "answer" and arrived:
            arrived.pop(pick % len(arrived))
            client.release()
    assert portal.refused == 0


def test_operating_budget_blocks_and_resets() -> None:
    clock = FakeClock()
    budget = OperatingBudget(1.0, clock=clock)
    budget.add("app", "crm.deal.list", 0.6)
    assert not budget.blocked("app", "crm.deal.list")
    budget.add("app", "crm.deal.list", 0.6)
    assert budget.blocked("app", "crm.deal.list")
    assert not budget.blocked("app", "user.get")
    assert not budget.blocked("other", "crm.deal.list")
    assert budget.reset_at("app", "crm.deal.list") == pytest.approx(1000.0 + 600)
    clock.now += 601
    assert not budget.blocked("app", "crm.deal.list")
