"""Sends the outbox's operations to Bitrix24: cards first, batched, in order per call, exactly once.

Two loops share the client's rate limiter: one sends register/show/hide/finish (several ready ops go in one `batch`,
and a call's register may carry its show/hide along through `$result[key][CALL_ID]`), the other hands
recordings to `attach_handler` one at a time, so a slow upload never holds up a card. Users are resolved when an
op is sent. Transient failures (portal down, rate limit, auth) release the ops untouched and back off; a method the
portal paused is held alone; a recording the handler says is not ready yet (`AttachNotReady`) is held alone until
then, while other recordings go; permanent refusals become dead letters with the portal's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from bridge.config import Bitrix24Settings
from bridge.crm.bitrix24.errors import Bitrix24ApiError, Bitrix24Unavailable
from bridge.sync.answers import Lessons, Verdict, code, has_call_id, inherited, is_transient, judge, learn, reason
from bridge.sync.backoff import Backoff
from bridge.sync.commands import Command, CommandBuilder
from bridge.sync.operations import METHODS, CrmOp, OpKind
from bridge.sync.outbox import DeadLetter, Outbox, StoredOp
from bridge.sync.ports import AttachHandler, AttachNotReady, Bitrix24Port, DirectoryPort

__all__ = ["MAX_BATCH", "Dispatcher", "DispatcherHealth", "DispatcherState"]

log = structlog.get_logger(__name__)

MAX_BATCH = 50
_CRASH_LIMIT = 3
# Bounds on how long one not-ready recording is held: never a busy loop, never forever on a handler's odd answer.
_MIN_HOLD = 0.05
_MAX_HOLD = 3600.0
_ATTACH_METHOD = METHODS[OpKind.ATTACH_RECORD]
Outcome = Literal["ok", "already_done", "dead", "retry"]


class DispatcherState(Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class DispatcherHealth:
    state: DispatcherState
    ok: bool
    backlog: int
    in_flight: int
    dead: int
    backing_off: bool
    paused_methods: dict[str, float]
    last_error: str | None
    last_success_at: float | None
    requests: dict[str, int]
    sent: dict[str, dict[str, int]]  # method -> outcome (ok, already_done, dead, retry) -> count
    retries: int


@dataclass(slots=True)
class _Suspect:
    """An op whose send raised something unexpected (a bug, not a portal answer): held back for a while so the
    rest of the queue moves, and dead-lettered only if it keeps failing while other ops get through."""

    failures: int = 0
    first_at: float = 0.0
    hold_until: float = 0.0


class _Sender:
    """One loop's pacing: its backoff and its wake-up signal."""

    def __init__(self, name: str, backoff: Backoff) -> None:
        self.name = name
        self.backoff = backoff
        self.wake = asyncio.Event()
        self.resume_at = 0.0


class Dispatcher:
    def __init__(self, outbox: Outbox, client: Bitrix24Port, directory: DirectoryPort, *, batching: bool = True,
                 attach_handler: AttachHandler | None = None, max_batch: int = MAX_BATCH,
                 backoff_base: float = 0.5, backoff_cap: float = 60.0, idle_poll: float = 5.0,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time) -> None:
        """`clock` is wall time (unix seconds), the scale of the portal's pause deadlines."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH}")
        self._outbox = outbox
        self._client = client
        self._directory = directory
        self._batching = batching
        self._attach_handler = attach_handler
        self._builder = CommandBuilder(outbox, client, directory)
        self._max_batch = max_batch
        self._idle_poll = idle_poll
        self._clock = clock
        rng = rng or random.Random()
        self._senders = {
            "send": _Sender("send", Backoff(backoff_base, backoff_cap, rng=rng)),
            "attach": _Sender("attach", Backoff(backoff_base, backoff_cap, rng=rng)),
        }
        self._paused: dict[str, float] = {}
        self._solo_left = 0
        self._suspects: dict[int, _Suspect] = {}
        self._not_ready: dict[int, float] = {}  # op id -> monotonic time its recording may be tried again
        self._settled = asyncio.Event()
        self._state = DispatcherState.UNOPENED
        self._task: asyncio.Task[None] | None = None
        self._sent: Counter[tuple[str, str]] = Counter()
        self._requests: Counter[str] = Counter()
        self._retries = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        # Told about every op the portal accepted (metrics: time from ring to card shown).
        self.on_done: Callable[[CrmOp], None] | None = None

    @classmethod
    def from_config(cls, outbox: Outbox, client: Bitrix24Port, directory: DirectoryPort, settings: Bitrix24Settings,
                    *, attach_handler: AttachHandler | None = None) -> Dispatcher:
        return cls(outbox, client, directory, batching=settings.batching, attach_handler=attach_handler,
                   backoff_cap=settings.retry_max_seconds)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def state(self) -> DispatcherState:
        return self._state

    async def __aenter__(self) -> Self:
        if self._state is DispatcherState.RUNNING:
            raise RuntimeError("the dispatcher is already running")
        if self._state is DispatcherState.CLOSED:
            raise RuntimeError("the dispatcher was stopped; create a new one")
        self._outbox.add_listener(self.wake)
        self._task = asyncio.create_task(self._run(), name="b24.dispatcher")
        self._state = DispatcherState.RUNNING
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._outbox.remove_listener(self.wake)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._state = DispatcherState.CLOSED

    def wake(self) -> None:
        """New work landed: look now instead of at the next poll (backoff and pauses still apply)."""
        for sender in self._senders.values():
            sender.wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (True) or `timeout` passes (False); the outbox keeps whatever is left."""
        try:
            async with asyncio.timeout(timeout):
                while self._outbox.pending_count() > 0:
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            return False
        return True

    def health(self) -> DispatcherHealth:
        now = self._clock()
        backing_off = any(s.resume_at > time.monotonic() for s in self._senders.values())
        running = self._state is DispatcherState.RUNNING and self._task is not None and not self._task.done()
        return DispatcherHealth(
            state=self._state,
            ok=running and not backing_off,
            backlog=self._outbox.pending_count(),
            in_flight=self._outbox.in_flight_count(),
            dead=self._outbox.dead_count(),
            backing_off=backing_off,
            paused_methods={m: u for m, u in self._paused.items() if u > now},
            last_error=self._last_error,
            last_success_at=self._last_success_at,
            requests=dict(self._requests),
            sent=_nested(self._sent),
            retries=self._retries,
        )

    # --- loops -------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(self._senders["send"]), name="b24.dispatcher.send")
            group.create_task(self._loop(self._senders["attach"]), name="b24.dispatcher.attach")

    async def _loop(self, sender: _Sender) -> None:
        while True:
            delay = sender.resume_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sender.wake.clear()
            ops: list[StoredOp] = []
            try:
                ops = self._take(sender)
                if not ops:
                    await self._idle(sender)
                    continue
                if sender.name == "attach":
                    await self._attach(ops[0])
                else:
                    await self._send(ops)
            except Exception as exc:  # never let one bad round stop the loop; the ops stay in the outbox
                self._outbox.release(ops)
                self._retries += len(ops)
                self._last_error = f"{type(exc).__name__}: {exc}"
                sender.resume_at = time.monotonic() + sender.backoff.next_delay()
                log.exception("crm_dispatch_failed", loop=sender.name)
            finally:
                self._settled.set()

    def _take(self, sender: _Sender) -> list[StoredOp]:
        if sender.name == "attach":
            return self._outbox.take_ready(1, accept=self._accept_attach)
        limit = 1 if not self._batching or self._solo_left > 0 else self._max_batch
        return self._outbox.take_ready(limit, accept=self._accept_send,
                                       follow=self._follow if self._batching and limit > 1 else None)

    async def _idle(self, sender: _Sender) -> None:
        timeout = self._idle_poll
        now = self._clock()
        waits = [until - now for until in self._paused.values() if until > now]
        waits += self._hold_waits()
        if waits:
            timeout = min(timeout, min(waits) + 0.001)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await sender.wake.wait()

    def _accept_send(self, stored: StoredOp) -> bool:
        return (stored.kind is not OpKind.ATTACH_RECORD and not self._is_paused(stored.op.method)
                and not self._is_held(stored))

    def _accept_attach(self, stored: StoredOp) -> bool:
        return (stored.kind is OpKind.ATTACH_RECORD and not self._is_paused(_ATTACH_METHOD)
                and not self._is_held(stored))

    def _is_held(self, stored: StoredOp) -> bool:
        now = time.monotonic()
        suspect = self._suspects.get(stored.id)
        if suspect is not None and suspect.hold_until > now:
            return True
        until = self._not_ready.get(stored.id)
        if until is None:
            return False
        if until > now:
            return True
        del self._not_ready[stored.id]
        return False

    def _hold_waits(self) -> list[float]:
        """Seconds until each held op may go again (so an idle lane wakes for it); forgets holds that ran out,
        including those of ops settled or dropped elsewhere."""
        now = time.monotonic()
        for op_id in [i for i, until in self._not_ready.items() if until <= now]:
            del self._not_ready[op_id]
        waits = [until - now for until in self._not_ready.values()]
        return waits + [s.hold_until - now for s in self._suspects.values() if s.hold_until > now]

    def _follow(self, previous: StoredOp, nxt: StoredOp) -> bool:
        """May `nxt` ride in the same batch right behind `previous` (same call)? Not uploads, not paused methods.

        A finish never rides behind its own register: if that batch's answer were lost, the retried register could
        not be matched to the (already finished, hence deleted) live call and would open a duplicate. So a finish
        needs a CALL_ID that is already stored, which also covers the owner rule (it reads the register answer).
        """
        if nxt.kind is OpKind.ATTACH_RECORD or self._is_paused(nxt.op.method) or nxt.id in self._suspects:
            return False
        if nxt.kind is OpKind.FINISH:
            return bool(nxt.op.crm_call_id or self._outbox.crm_call_id(nxt.call_key, nxt.op.leg))
        return True

    def _is_paused(self, method: str) -> bool:
        until = self._paused.get(method.lower())
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._paused[method.lower()]
        return False

    # --- sending -----------------------------------------------------------------------------------------------

    async def _send(self, ops: Sequence[StoredOp]) -> None:
        lessons = Lessons()
        try:
            commands, dead = await self._builder.build(ops)
        except Exception as exc:
            self._outbox.release(ops)
            self._retries += len(ops)
            learn(exc, lessons)
            self._apply_lessons(self._senders["send"], lessons, answered=False)
            return
        if dead:
            self._outbox.settle(dead=dead)
            self._count_dead(dead)
        if not commands:
            return
        attempted_before = {c.stored.id: c.stored.attempted for c in commands}
        self._outbox.mark_attempted([c.stored for c in commands])
        answers: dict[str, tuple[bool, Any, BaseException | None]]
        try:
            if len(commands) == 1:
                self._requests["call"] += 1
                only = commands[0]
                answers = {only.key: (True, await self._client.call(only.method, only.params), None)}
            else:
                self._requests["batch"] += 1
                outcome = await self._client.batch({c.key: (c.method, c.params) for c in commands}, halt=False)
                answers = {c.key: (c.key in outcome.results, outcome.results.get(c.key), outcome.errors.get(c.key))
                           for c in commands}
        except Exception as exc:
            if len(commands) == 1:
                answers = {commands[0].key: (False, None, exc)}
            else:
                self._outbox.release([c.stored for c in commands])
                self._retries += len(commands)
                for command in commands:
                    self._count(command, "retry")
                self._batch_failed(exc, len(commands), lessons)
                self._apply_lessons(self._senders["send"], lessons, answered=False)
                return
        self._solo_left = max(0, self._solo_left - len(commands))
        self._apply(commands, answers, attempted_before, lessons, self._senders["send"])

    async def _attach(self, stored: StoredOp) -> None:
        op = stored.op
        handler = self._attach_handler
        call_id = op.crm_call_id or self._outbox.crm_call_id(op.call_key, op.leg)
        reason = ("recordings disabled: no attach handler is configured" if handler is None else
                  "no CALL_ID: this call's register did not succeed" if call_id is None else None)
        if reason is not None or handler is None or call_id is None:
            dead = [DeadLetter(stored, reason or "recordings disabled")]
            self._outbox.settle(dead=dead)
            self._count_dead(dead)
            return
        command = Command(stored, f"op{stored.id}", _ATTACH_METHOD, {"CALL_ID": call_id})
        attempted_before = {stored.id: stored.attempted}
        self._outbox.mark_attempted([stored])
        self._requests["attach"] += 1
        answer: tuple[bool, Any, BaseException | None]
        try:
            answer = (True, await handler(op, call_id, stored.created_at), None)
        except AttachNotReady as exc:
            self._hold_not_ready(command, exc)
            return
        except Exception as exc:
            answer = (False, None, exc)
        self._apply([command], {command.key: answer}, attempted_before, Lessons(), self._senders["attach"])

    def _hold_not_ready(self, command: Command, exc: AttachNotReady) -> None:
        """Only this op waits until `retry_after`: the lane goes on with other recordings at its normal pace, and
        waiting never counts toward a dead letter (the handler gives up by raising a permanent error)."""
        stored = command.stored
        delay = exc.retry_after if math.isfinite(exc.retry_after) else _MAX_HOLD
        delay = min(max(delay, _MIN_HOLD), _MAX_HOLD)
        self._not_ready[stored.id] = time.monotonic() + delay
        self._outbox.release([stored])
        self._retries += 1
        self._count(command, "retry")
        log.debug("crm_attach_not_ready", op_id=stored.id, call_key=stored.call_key, seconds=round(delay, 3),
                 reason=str(exc))

    # --- answers -----------------------------------------------------------------------------------------------

    def _apply(self, commands: Sequence[Command], answers: Mapping[str, tuple[bool, Any, BaseException | None]],
               attempted_before: Mapping[int, bool], lessons: Lessons, sender: _Sender) -> None:
        done: list[tuple[StoredOp, Any]] = []
        dead: list[DeadLetter] = []
        retry: list[StoredOp] = []
        failed_registers: dict[str, BaseException] = {}
        for command in commands:
            stored = command.stored
            ok, result, error = answers.get(command.key, (False, None, None))
            if ok and error is None and stored.kind is OpKind.REGISTER and not has_call_id(result):
                ok, error = False, Bitrix24ApiError("BAD_ANSWER", f"register returned no CALL_ID: {str(result)[:200]}")
            upstream = failed_registers.get(command.depends_on or "")
            if upstream is not None:  # its CALL_ID came from a register that failed: whatever it got is moot
                ok, error = False, inherited(upstream)
            if ok and error is None:
                done.append((stored, result))
                self._count(command, "ok")
                continue
            if stored.kind is OpKind.REGISTER:
                failed_registers[command.key] = error or Bitrix24Unavailable("no answer for this command")
            verdict = self._verdict(command, error, attempted_before.get(stored.id, False), lessons)
            if verdict == "already_done":
                done.append((stored, {"already_finished": True}))
            elif verdict == "dead":
                dead.append(DeadLetter(stored, reason(error), code(error)))
            else:
                retry.append(stored)
            self._count(command, verdict)
        self._outbox.settle(done=done, dead=dead)
        self._outbox.release(retry)
        self._retries += len(retry)
        if self.on_done is not None:
            for stored, _ in done:
                self.on_done(stored.op)
        for stored, _ in done:
            self._suspects.pop(stored.id, None)
            self._not_ready.pop(stored.id, None)
        for letter in dead:
            self._suspects.pop(letter.stored.id, None)
            self._not_ready.pop(letter.stored.id, None)
        self._apply_lessons(sender, lessons, answered=bool(done or dead))

    def _verdict(self, command: Command, error: BaseException | None, attempted_before: bool,
                 lessons: Lessons) -> Outcome:
        verdict: Verdict = judge(command.stored.kind, error, attempted_before=attempted_before)
        if verdict in ("retry", "suspect"):
            learn(error, lessons, method=command.method)
        if verdict == "suspect":
            return self._suspect(command.stored)
        return verdict

    def _suspect(self, stored: StoredOp) -> Outcome:
        suspect = self._suspects.setdefault(stored.id, _Suspect(first_at=self._clock()))
        suspect.failures += 1
        others_got_through = self._last_success_at is not None and self._last_success_at >= suspect.first_at
        if suspect.failures >= _CRASH_LIMIT and others_got_through:
            return "dead"
        backoff = self._senders["send"].backoff
        suspect.hold_until = time.monotonic() + min(backoff.cap, backoff.base * 2.0 ** suspect.failures)
        return "retry"

    def _batch_failed(self, error: BaseException, size: int, lessons: Lessons) -> None:
        """The batch request itself failed: nothing was applied. A refusal of the whole batch (an ApiError) is
        narrowed down by sending the same ops one per request next."""
        if isinstance(error, Bitrix24ApiError):
            self._solo_left = size
            lessons.error = f"batch refused: {error}"
            log.warning("crm_batch_refused", error=str(error), commands=size)
            return
        if not is_transient(error):
            self._solo_left = size  # a bug triggered by one of them: find out which
        learn(error, lessons)

    def _apply_lessons(self, sender: _Sender, lessons: Lessons, *, answered: bool) -> None:
        if lessons.unexpected is not None:
            log.error("crm_dispatch_unexpected_error", error=lessons.error, exc_info=lessons.unexpected)
        elif lessons.auth_failed:
            log.error("bitrix24_auth_failed", error=lessons.error)
        for method, until in lessons.paused.items():
            if method:
                self._paused[method] = until
                log.warning("crm_method_paused", method=method, seconds=round(until - self._clock(), 1))
        if lessons.error is not None:
            self._last_error = lessons.error
        if lessons.retry_after is not None:
            delay = sender.backoff.next_delay(lessons.retry_after)
            sender.resume_at = time.monotonic() + delay
            log.warning("crm_backoff", loop=sender.name, seconds=round(delay, 3), error=lessons.error)
        elif answered:
            sender.backoff.reset()
            self._last_success_at = self._clock()

    def _count(self, command: Command, outcome: Outcome) -> None:
        self._sent[(command.method, outcome)] += 1
        log.debug("crm_op_sent", op_id=command.stored.id, call_key=command.stored.call_key,
                  kind=command.stored.kind.value, outcome=outcome)

    def _count_dead(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            self._sent[(letter.stored.op.method, "dead")] += 1


def _nested(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (method, outcome), n in sorted(counts.items()):
        out.setdefault(method, {})[outcome] = n
    return out
