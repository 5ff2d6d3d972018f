"""Shared plumbing of the fault suite: synthetic calls, the portal's record as ground truth, bridges to run.

Every check here reads what the simulators recorded (the portal's calls and request log, the AMI simulator's
actions), never what the bridge says about itself. Long versions of the tests are marked `soak` (`make soak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from bridge.app import Bridge
from bridge.config import (
    AmiSettings,
    Bitrix24Settings,
    HttpSettings,
    LogSettings,
    RecordingsSettings,
    Settings,
    StorageSettings,
)
from bridge.log import configure_logging
from bridge.model import CallEvent
from bridge.sim.ami import AmiSimulator
from bridge.sim.ami_traces import load_trace, synthesize
from bridge.sim.bitrix24 import Bitrix24Simulator, SimCommand, SimRequest
from bridge.sim.bitrix24_portal import SimCall

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ami"
PYTHON = Path(sys.executable)
AMI_USER = "bridge"
AMI_SECRET = "fault-suite-ami-secret"
SIM_MONITOR = b"/var/spool/asterisk/monitor"

# Agents 101..110 are Bitrix24 users 11..20; user 1 is the default (missed calls, unknown extensions).
USERS: list[dict[str, Any]] = [
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    *({"ID": 10 + n, "NAME": f"Agent{n}", "LAST_NAME": "Fault", "UF_PHONE_INNER": str(100 + n), "ACTIVE": True}
      for n in range(1, 11)),
]

# Recorded calls that a PBX syncs to Bitrix24 (internal calls are not synced by default).
MIX = ("inbound_answered", "inbound_missed", "inbound_queue", "outbound_answered", "recorded", "inbound_busy",
       "outbound_noanswer", "fpbx_queue_local", "blind_transfer")

REGISTER = "telephony.externalcall.register"
SHOW = "telephony.externalcall.show"
FINISH = "telephony.externalcall.finish"
ATTACH = "telephony.externalcall.attachrecord"

soak = pytest.mark.soak


# --------------------------------------------------------------------------------------------------- small helpers


async def until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05,
                message: str | Callable[[], str] = "condition not met") -> None:
    """Wait for `predicate`; fail the test with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def last10(number: str | None) -> str:
    digits = re.sub(r"\D", "", number or "")
    return digits[-10:]


@contextlib.contextmanager
def captured_logs(level: str = "warning") -> Iterator[io.StringIO]:
    """Every structlog line at `level` and up goes to a buffer (JSON) for the block; global logging restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(level, "json", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.fixture
def quiet_logs() -> Iterator[io.StringIO]:
    """Warnings and up only, into a buffer (keeps long runs fast and the output readable)."""
    with captured_logs("warning") as buffer:
        yield buffer


# --------------------------------------------------------------------------------------------------- synthetic calls


@dataclass
class PlayedCall:
    """One synthetic call as the test played it: its customer number, when it ran, what it should leave behind."""

    call_no: int
    template: str
    number: str  # last 10 digits of the customer's number
    recorded: bool  # answered and recorded: the portal must end up with the file
    started: float = 0.0  # time.time() of the first frame
    ended: float | None = None  # time.time() after the last frame
    cut: bool = False  # playback was cancelled (the "PBX" died mid-call)

    def within(self, start: float, end: float) -> bool:
        """The whole call ran inside [start, end]."""
        return self.ended is not None and self.started >= start and self.ended <= end


class CallDriver:
    """Plays re-identified copies of recorded calls into an AmiSimulator, each with its own customer number.

    Recording paths are moved under `recordings_root`, and the files are created before the call starts (a real
    PBX writes them while the call runs), so attaching them can be checked in the portal.
    """

    def __init__(self, sim: AmiSimulator, *, speed: float, recordings_root: Path | None = None,
                 first_call_no: int = 10_000) -> None:
        self.sim = sim
        self.speed = speed
        self.recordings_root = recordings_root
        self.calls: list[PlayedCall] = []
        self._numbers = itertools.count(first_call_no)
        self._tasks: set[asyncio.Task[None]] = set()

    def _script(self, template: str, call_no: int, number: str) -> list[tuple[float, bytes]]:
        script = synthesize(template, call_no=call_no, caller=number, fixtures_dir=FIXTURES)
        root = self.recordings_root
        if root is None:
            return script
        moved = [(delay, raw.replace(SIM_MONITOR, str(root).encode())) for delay, raw in script]
        pattern = re.compile(re.escape(str(root).encode()) + rb"/[^\s,;|]+?\.wav")
        for _, raw in moved:
            for match in pattern.finditer(raw):
                path = Path(match.group(0).decode())
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"RIFF" + bytes(4000))  # more than a bare WAV header
                    old = time.time() - 60
                    os.utime(path, (old, old))
        return moved

    async def play(self, template: str) -> PlayedCall:
        call_no = next(self._numbers)
        number = f"79{call_no % 10**9:09d}"
        primary = load_trace(template, FIXTURES).primary_call()
        call = PlayedCall(call_no, template, last10(number),
                          recorded=primary.get("status") == "answered" and bool(primary.get("recording")))
        script = self._script(template, call_no, number)
        self.calls.append(call)
        call.started = time.time()
        try:
            await self.sim.play(script, self.speed)
        except asyncio.CancelledError:
            call.cut = True
            raise
        finally:
            call.ended = time.time()
        return call

    def start(self, template: str) -> asyncio.Task[None]:
        async def run() -> None:
            await self.play(template)

        task = asyncio.create_task(run(), name=f"fault.call[{template}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def burst(self, count: int, rate: float, templates: Sequence[str] = MIX,
                    *, offset: int = 0) -> None:
        """Start `count` calls at `rate` per second (templates round robin) and wait for all of them."""
        tasks = []
        for index in range(count):
            tasks.append(self.start(templates[(index + offset) % len(templates)]))
            await asyncio.sleep(1.0 / rate)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def for_seconds(self, seconds: float, rate: float, templates: Sequence[str] = MIX) -> None:
        """Keep calls coming at `rate` per second for `seconds`, then wait for the last ones to end."""
        await self.burst(max(1, int(seconds * rate)), rate, templates)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


# ------------------------------------------------------------------------------------------------ the portal's record


@dataclass(frozen=True, slots=True)
class Entry:
    """One executed method call in the portal's log, single request or batch command alike."""

    seq: int
    t: float
    method: str
    params: Mapping[str, Any]
    error: str | None


def portal_log(portal: Bitrix24Simulator) -> list[Entry]:
    """Requests and batch commands in the order the portal ran them (a batch's commands before its own record)."""
    rows: list[tuple[float, int, str, Mapping[str, Any], str | None]] = []
    order = itertools.count()
    items: list[SimRequest | SimCommand] = [*portal.commands, *portal.requests]
    for item in items:
        if isinstance(item, SimRequest) and item.method in ("batch", "oauth.token"):
            continue
        if isinstance(item, SimRequest) and item.http_status != 200:
            rows.append((item.t, next(order), item.method, item.params, item.error or f"HTTP {item.http_status}"))
            continue
        rows.append((item.t, next(order), item.method, item.params, item.error))
    rows.sort(key=lambda row: (row[0], row[1]))
    return [Entry(i, t, method, params, error) for i, (t, _, method, params, error) in enumerate(rows)]


@dataclass
class Verdict:
    """What the portal's record says about a set of played calls; `problems` empty means all good."""

    problems: list[str] = field(default_factory=list)
    resent_registers: int = 0
    resent_finishes: int = 0
    resent_uploads: int = 0  # recordings uploaded again to the same call (the portal replaces the record)
    calls: int = 0

    def fail(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)


def check_portal(portal: Bitrix24Simulator, played: Iterable[PlayedCall], *,
                 required: Callable[[PlayedCall], bool] = lambda _call: True,
                 complete: Callable[[PlayedCall], bool] | None = None,
                 strict_register: bool = True) -> Verdict:
    """Every required call registered, carded, finished (and recorded) exactly once, in order; nothing made up.

    Every call found in the portal must be finished exactly once, after its register. `required` calls must be
    there at all; `complete` ones (default: the required ones) are calls the bridge saw from start to end, so their
    cards and recordings are demanded too. `strict_register` also demands that no register was sent twice (a
    SIGKILL between send and commit may resend one; the portal then answers with the same CALL_ID, which the other
    checks still verify).
    """
    verdict = Verdict()
    played = list(played)
    by_number = {call.number: call for call in played}
    log = portal_log(portal)
    sims: dict[str, list[SimCall]] = {}
    for sim_call in portal.calls.values():
        sims.setdefault(last10(sim_call.phone_number), []).append(sim_call)
    verdict.calls = len(portal.calls)
    for number, found in sims.items():
        if number not in by_number:
            verdict.fail(f"phantom call in the portal: {number} was never played ({found[0].call_id})")
    externals: dict[str, list[str]] = {}
    for sim_call in portal.calls.values():
        externals.setdefault(sim_call.external_call_id or sim_call.call_id, []).append(sim_call.call_id)
    for external, ids in externals.items():
        if len(ids) > 1:
            verdict.fail(f"EXTERNAL_CALL_ID {external} has {len(ids)} CALL_IDs in the portal: {ids}")
    for call in played:
        found = sims.get(call.number, [])
        if not found:
            if required(call):
                verdict.fail(f"call {call.number} ({call.template}) never reached the portal")
            continue
        if len(found) > 1:
            verdict.fail(f"call {call.number} ({call.template}) is {len(found)} calls in the portal")
        for sim_call in found:
            _check_call(verdict, call, sim_call, log, strict_register=strict_register,
                        complete=(complete or required)(call))
    return verdict


def _check_call(verdict: Verdict, call: PlayedCall, sim_call: SimCall, log: list[Entry], *,
                strict_register: bool, complete: bool) -> None:
    """Finished once and in order, always; carded and recorded only when the bridge could see the whole call
    (`complete`): events lost while nobody listened (a cut link) cannot be made up by anybody."""
    name = f"call {call.number} ({call.template}, {sim_call.call_id})"
    mine = [e for e in log if e.params.get("CALL_ID") == sim_call.call_id
            or (e.method == REGISTER and sim_call.external_call_id
                and e.params.get("EXTERNAL_CALL_ID") == sim_call.external_call_id)]
    ok = [e for e in mine if e.error is None]
    registers = [e.seq for e in ok if e.method == REGISTER]
    shows = [e.seq for e in ok if e.method == SHOW]
    finishes = [e.seq for e in ok if e.method == FINISH]
    uploads = [e.seq for e in ok if e.method == "upload"] + [
        e.seq for e in ok if e.method == ATTACH and "FILE_CONTENT" in e.params]
    failed_finishes = [e for e in mine if e.method == FINISH and e.error is not None]
    verdict.resent_registers += max(0, len(registers) - 1)
    verdict.resent_finishes += sum(1 for e in failed_finishes if "not found" in (e.error or "").lower()
                                   or "registered prior" in (e.error or "").lower())
    if sim_call.finish is None:
        verdict.fail(f"{name} was never finished: its card stays open")
    if len(finishes) != 1:
        verdict.fail(f"{name} finished {len(finishes)} times")
    if not registers:
        verdict.fail(f"{name}: no successful register in the request log")
    elif strict_register and (len(registers) > 1 or sim_call.registrations != 1):
        verdict.fail(f"{name} registered {max(len(registers), sim_call.registrations)} times")
    if complete and not sim_call.shows:
        verdict.fail(f"{name} never showed a card")
    verdict.resent_uploads += max(0, sim_call.record_uploads - 1)
    if len(sim_call.records) > 1:
        verdict.fail(f"{name} has {len(sim_call.records)} recordings attached")
    if complete and call.recorded and not sim_call.records:
        verdict.fail(f"{name} has no recording attached")
    if not call.recorded and sim_call.records:
        verdict.fail(f"{name} got a recording although nobody talked")
    if registers and finishes:
        first = min(registers)
        if any(s < first for s in shows):
            verdict.fail(f"{name}: a show reached the portal before its register")
        if any(s > min(finishes) for s in shows):
            verdict.fail(f"{name}: a show reached the portal after its finish")
        if min(finishes) < first:
            verdict.fail(f"{name}: finish before register")
        if uploads and min(uploads) < min(finishes):
            verdict.fail(f"{name}: recording attached before the finish")


# --------------------------------------------------------------------------------------------------- in-process bridge


def bridge_settings(ami: AmiSimulator, portal: Bitrix24Simulator, state: Path, *, token: str = "fault-app-token",
                    oauth: bool = False, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """Settings for a bridge between the two simulators: fast reconnects, a fast portal budget, recordings on.

    `overrides` adds or replaces keys per section (`{"ami": {"events": "on"}}`).
    """
    extra = {name: dict(values) for name, values in (overrides or {}).items()}
    b24: dict[str, Any] = {"default_user_id": 1, "requests_per_second": 20.0, "burst": 40, "request_timeout": 10.0}
    if oauth:
        b24 |= {"client_id": portal.client_id, "client_secret": portal.client_secret}
    else:
        b24 |= {"webhook_url": portal.webhook_url}
    b24 |= extra.pop("bitrix24", {})
    ami_opts: dict[str, Any] = {"port": ami.port, "secret": AMI_SECRET, "ping_interval": 2.0, "ping_timeout": 1.0,
                                "reconnect_min": 0.1, "reconnect_max": 0.5, "connect_timeout": 2.0}
    ami_opts |= extra.pop("ami", {})
    http: dict[str, Any] = {"port": 0, "application_token": token, "rate_limit_per_ip": 1000.0}
    http |= extra.pop("http", {})
    recordings: dict[str, Any] = {"enabled": True, "root": state / "monitor", "settle_seconds": 0.0}
    recordings |= extra.pop("recordings", {})
    sections: dict[str, Any] = {
        "ami": AmiSettings(**ami_opts),
        "bitrix24": Bitrix24Settings(**b24),
        "http": HttpSettings(**http),
        "storage": StorageSettings(path=state / "state" / "bridge.sqlite3"),
        "recordings": RecordingsSettings(**recordings),
        "log": LogSettings(level="warning", format="json"),
        **extra,
    }
    return Settings(**sections)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings, *, observers: Sequence[Callable[[CallEvent], None]] = (),
                         ready_timeout: float = 20.0) -> AsyncIterator[Bridge]:
    """A `Bridge` running in this loop until the block ends; failures of `run` surface in the test."""
    bridge = Bridge(settings, event_observers=list(observers))
    stop = asyncio.Event()
    ready = asyncio.Event()
    runner = asyncio.create_task(bridge.run(stop.wait(), ready=lambda _b: ready.set()), name="fault.bridge")
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({runner, waiter}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        waiter.cancel()
        runner.result()  # raises what run() raised
        raise AssertionError("the bridge stopped before it was ready")
    if waiter not in done:
        waiter.cancel()
        runner.cancel()
        raise AssertionError(f"the bridge was not ready within {ready_timeout} s")
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


def outbox_empty(bridge: Bridge) -> bool:
    outbox = bridge.outbox
    return outbox is not None and outbox.pending_count() == 0


async def settle(bridge: Bridge, portal: Bitrix24Simulator, driver: CallDriver, *, timeout: float,
                 required: Callable[[PlayedCall], bool] = lambda _call: True) -> Verdict:
    """Wait until the outbox is empty and the portal's record passes, or `timeout`; return the last verdict."""
    deadline = time.monotonic() + timeout
    verdict = check_portal(portal, driver.calls, required=required)
    while time.monotonic() < deadline:
        verdict = check_portal(portal, driver.calls, required=required)
        if outbox_empty(bridge) and not verdict.problems:
            return verdict
        await asyncio.sleep(0.2)
    return verdict


def describe(verdict: Verdict, bridge: Bridge | None = None) -> str:
    lines = list(verdict.problems)
    if bridge is not None and bridge.outbox is not None:
        lines.append(f"outbox pending {bridge.outbox.pending_count()}, dead {bridge.outbox.dead_count()}: "
                     f"{[(r.kind, r.reason) for r in bridge.outbox.list_rows('dead', limit=5)]}")
    return "\n".join(lines)


@dataclass
class Stack:
    """The two simulators of one test, a call driver and a scratch directory."""

    ami: AmiSimulator
    portal: Bitrix24Simulator
    driver: CallDriver
    tmp: Path


@contextlib.asynccontextmanager
async def simulators(tmp: Path, *, speed: float = 8.0, oauth_tokens_lifetime: float = 3600.0,
                     **portal_opts: Any) -> AsyncIterator[Stack]:
    tmp.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"users": USERS, "rate": 50.0, "burst": 100, "token_lifetime": oauth_tokens_lifetime}
    options |= portal_opts
    async with AmiSimulator(AMI_USER, AMI_SECRET, fixtures_dir=FIXTURES) as ami, \
            Bitrix24Simulator(**options) as portal:
        ami.timestamps = True  # durations stay true although calls replay faster than real time
        # A PBX that has been up for a day: a reconnect is then a lost link, not a restart (which the bridge
        # recognises by an uptime shorter than the outage).
        await ami.restart(uptime=86_400)
        driver = CallDriver(ami, speed=speed, recordings_root=tmp / "monitor")
        try:
            yield Stack(ami, portal, driver, tmp)
        finally:
            await driver.cancel_all()


# --------------------------------------------------------------------------------------------------- daemon subprocess


def toml_text(data: Mapping[str, Any]) -> str:
    """A tiny TOML writer for flat sections of strings, numbers, booleans and string lists."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def daemon_config(ami: AmiSimulator, portal: Bitrix24Simulator, state: Path, *, http_port: int,
                  extra: Mapping[str, Mapping[str, Any]] | None = None, oauth: bool = False) -> dict[str, Any]:
    b24: dict[str, Any] = {"default_user_id": 1, "requests_per_second": 20.0, "burst": 40, "request_timeout": 10.0}
    if oauth:
        b24 |= {"client_id": portal.client_id, "client_secret": portal.client_secret}
    else:
        b24["webhook_url"] = portal.webhook_url
    config: dict[str, dict[str, Any]] = {
        "ami": {"port": ami.port, "secret": AMI_SECRET, "ping_interval": 2.0, "ping_timeout": 1.0,
                "reconnect_min": 0.1, "reconnect_max": 0.5, "connect_timeout": 2.0},
        "bitrix24": b24,
        "http": {"port": http_port, "application_token": "fault-app-token", "rate_limit_per_ip": 1000.0},
        "storage": {"path": str(state / "state" / "bridge.sqlite3")},
        "recordings": {"enabled": True, "root": str(state / "monitor"), "settle_seconds": 0.0},
        "log": {"level": "info", "format": "json"},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


class Daemon:
    """`python -m bridge.cli run --config FILE` as a child process; stderr is kept in a file per start."""

    def __init__(self, config_path: Path, logs: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
        self.logs = logs
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._stderr: Any = None

    @property
    def stderr_files(self) -> list[Path]:
        return sorted(self.logs.glob("daemon-*.stderr"))

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        self._stderr = (self.logs / f"daemon-{self.starts:03d}.stderr").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            str(PYTHON), "-m", "bridge.cli", "run", "--config", str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, cwd=str(REPO), env=self.env)

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no drain, no logoff."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self._close_log()

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for a clean exit (the return code)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._close_log()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def output(self) -> str:
        return "".join(path.read_text(encoding="utf-8", errors="replace") for path in self.stderr_files)


async def run_cli(args: Sequence[str], *, timeout: float = 60.0, cwd: Path = REPO,
                  env: Mapping[str, str] | None = None,
                  preexec: Callable[[], None] | None = None) -> tuple[int, str, str]:
    """Run `python -m bridge.cli ARGS` to completion; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON), "-m", "bridge.cli", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=str(cwd), env={**os.environ, **(env or {})}, preexec_fn=preexec)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --------------------------------------------------------------------------------------------------- background loop


class BackgroundLoop:
    """An event loop in a thread, so synchronous (hypothesis) tests can drive async servers that outlive examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(shutdown(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
