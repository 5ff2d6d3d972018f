"""The ready index's batch picking: every ready card (register/show) first, then trailing ops with the room left,
per call in order, and only as far as `follow` allows."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sync.operations import CrmOp, OpKind
from bridge.sync.ready import ReadyIndex, StoredOp

CARDS = (OpKind.REGISTER, OpKind.SHOW)


def index_of(*calls: tuple[str, Iterable[OpKind]]) -> tuple[ReadyIndex, list[StoredOp]]:
    """Calls written one after another (ids grow in that order), as the outbox writes them."""
    ids = itertools.count(1)
    stored = [StoredOp(next(ids), CrmOp(call_key=key, kind=kind)) for key, kinds in calls for kind in kinds]
    index = ReadyIndex()
    index.rebuild(stored)
    return index, stored


def accept_all(_: StoredOp) -> bool:
    return True


def follow_all(_previous: StoredOp, _nxt: StoredOp) -> bool:
    return True


def kinds(ops: Iterable[StoredOp]) -> list[tuple[str, str]]:
    return [(s.call_key, s.kind.value) for s in ops]


def test_a_cards_own_hide_and_finish_do_not_push_other_calls_cards_to_a_later_batch() -> None:
    # Twenty click-to-call calls, each with a show, a hide and a finish waiting: before the fix the first seven
    # calls' tails filled the batch and thirteen shows went one request later.
    index, _ = index_of(*((f"c{i}", (OpKind.SHOW, OpKind.HIDE, OpKind.FINISH)) for i in range(20)))
    batch = index.take(20, accept_all, follow_all)
    assert kinds(batch) == [(f"c{i}", "show") for i in range(20)]
    assert index.take(20, accept_all, follow_all) == []  # the tails wait behind their leased shows
    for stored in batch:
        index.remove(stored)
    assert kinds(index.take(40, accept_all, follow_all)) == [
        (f"c{i}", kind) for kind in ("hide", "finish") for i in range(20)]


def test_trailing_ops_fill_the_room_left_by_priority_then_age() -> None:
    index, _ = index_of(("a", (OpKind.SHOW, OpKind.FINISH)), ("b", (OpKind.HIDE,)), ("c", (OpKind.REGISTER,)),
                        ("d", (OpKind.FINISH,)))
    assert kinds(index.take(10, accept_all, follow_all)) == [
        ("a", "show"), ("c", "register"), ("b", "hide"), ("a", "finish"), ("d", "finish")]


def test_a_trailing_op_comes_only_if_there_is_room_after_the_cards() -> None:
    index, _ = index_of(("a", (OpKind.REGISTER, OpKind.SHOW, OpKind.HIDE)), ("b", (OpKind.REGISTER,)))
    assert kinds(index.take(3, accept_all, follow_all)) == [("a", "register"), ("a", "show"), ("b", "register")]
    index2, _ = index_of(("a", (OpKind.REGISTER, OpKind.SHOW, OpKind.HIDE)), ("b", (OpKind.REGISTER,)))
    assert kinds(index2.take(4, accept_all, follow_all)) == [
        ("a", "register"), ("a", "show"), ("b", "register"), ("a", "hide")]


def test_a_card_behind_a_trailing_op_rides_right_behind_it() -> None:
    # per_agent transfer: the old leg's hide, then the new leg's register and show.
    index, _ = index_of(("a", (OpKind.HIDE, OpKind.REGISTER, OpKind.SHOW)), ("b", (OpKind.FINISH,)))
    assert kinds(index.take(10, accept_all, follow_all)) == [
        ("a", "hide"), ("a", "register"), ("a", "show"), ("b", "finish")]


def test_a_refused_follower_ends_its_calls_chain_for_this_batch() -> None:
    index, _ = index_of(("a", (OpKind.REGISTER, OpKind.SHOW, OpKind.FINISH, OpKind.HIDE)), ("b", (OpKind.FINISH,)))

    def no_finish_behind(_previous: StoredOp, nxt: StoredOp) -> bool:
        return nxt.kind is not OpKind.FINISH  # like the dispatcher: never a finish behind its own register

    assert kinds(index.take(10, accept_all, no_finish_behind)) == [("a", "register"), ("a", "show"), ("b", "finish")]


def test_without_follow_only_heads_go() -> None:
    index, _ = index_of(("a", (OpKind.SHOW, OpKind.FINISH)), ("b", (OpKind.FINISH,)), ("c", (OpKind.REGISTER,)))
    assert kinds(index.take(10, accept_all)) == [("a", "show"), ("c", "register"), ("b", "finish")]


def test_refused_heads_keep_their_place_and_their_tails_stay_behind() -> None:
    index, _ = index_of(("a", (OpKind.SHOW, OpKind.FINISH)), ("b", (OpKind.REGISTER, OpKind.SHOW)))
    assert kinds(index.take(10, lambda s: s.call_key != "a", follow_all)) == [("b", "register"), ("b", "show")]
    assert kinds(index.take(10, accept_all, follow_all)) == [("a", "show"), ("a", "finish")]


KIND = st.sampled_from([OpKind.REGISTER, OpKind.SHOW, OpKind.HIDE, OpKind.FINISH])


@settings(max_examples=200, deadline=None)
@given(queues=st.lists(st.lists(KIND, min_size=1, max_size=6), min_size=1, max_size=8),
       limit=st.integers(min_value=1, max_value=20), order=st.randoms())
def test_any_backlog_batches_keep_call_order_fill_the_room_and_put_cards_first(
        queues: list[list[OpKind]], limit: int, order: random.Random) -> None:
    calls = [(f"c{n}", queue) for n, queue in enumerate(queues)]
    # Interleave the calls' writes at random (ids still grow within each call).
    pending = {key: list(queue) for key, queue in calls}
    written: list[tuple[str, OpKind]] = []
    while pending:
        key = order.choice(sorted(pending))
        written.append((key, pending[key].pop(0)))
        if not pending[key]:
            del pending[key]
    stored = [StoredOp(i, CrmOp(call_key=key, kind=kind)) for i, (key, kind) in enumerate(written, start=1)]
    index = ReadyIndex()
    index.rebuild(stored)

    batch = index.take(limit, accept_all, follow_all)

    assert len(batch) == min(limit, len(stored))
    assert len({s.id for s in batch}) == len(batch)
    for key, _ in calls:
        mine = [s for s in stored if s.call_key == key]
        taken = [s for s in batch if s.call_key == key]
        assert taken == mine[:len(taken)]  # a prefix of the call's queue, in order
    leading_cards = {s.id for key, _ in calls
                     for s in itertools.takewhile(lambda s: s.kind in CARDS, (s for s in stored if s.call_key == key))}
    if any(s.kind not in CARDS for s in batch):
        assert leading_cards <= {s.id for s in batch}  # no hide/finish took the room of a card that was ready
