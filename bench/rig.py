"""The end-to-end test bench: AMI simulator -> bridge (its own process) -> Bitrix24 simulator.

The bridge runs as `python -m bridge.cli run --config FILE`, exactly as the daemon starts, in a child process: it gets
its own interpreter, so on a machine with two or more cores the simulators and the load generator in this process
do not take its CPU time (nothing is pinned: on a shared machine pinning only stops the scheduler from dodging other
tenants), and its resident memory can be read from /proc. The simulators run in this process so their records
(action arrival times, portal requests and batch commands with times) can be read directly. The bridge is observed
from outside only: its HTTP `/status` and `/readyz`, its JSON log, its outbox file (read-only) and /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from bridge.sim.ami import AmiSimulator
from bridge.sim.bitrix24 import Bitrix24Simulator

__all__ = ["AGENT_EXTENSIONS", "BridgeOptions", "BridgeProcess", "Rig", "WatchingAmiSimulator", "poll_until"]

ROOT = Path(__file__).resolve().parents[1]
AMI_SECRET = "bench-secret"  # the simulator's throwaway credential
# Agents 101..180: every synthetic call can ring its own agent; Bitrix24 user ids are 1000 + extension.
AGENT_EXTENSIONS = tuple(str(ext) for ext in range(101, 181))
USERS: list[dict[str, Any]] = [
    {"ID": 1, "NAME": "Anna", "LAST_NAME": "Admin", "UF_PHONE_INNER": "100", "ACTIVE": True},
    *({"ID": 1000 + int(ext), "NAME": f"Agent{ext}", "LAST_NAME": "Bench", "UF_PHONE_INNER": ext, "ACTIVE": True}
      for ext in AGENT_EXTENSIONS),
]


async def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Wait until `predicate()` holds (True) or `timeout` passes (False). Polling, because what is watched lives in
    another process or in a simulator's records, neither of which signals anything."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


class WatchingAmiSimulator(AmiSimulator):
    """The AMI simulator, noting when chosen frames leave it (right before they are written to the sockets)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watched: dict[int, str] = {}
        self.sent_at: dict[str, float] = {}

    def watch(self, raw: bytes, key: str) -> None:
        """Record the send time of this very bytes object under `key` (it must stay alive until sent)."""
        self._watched[id(raw)] = key

    async def _emit(self, raw: bytes) -> None:
        key = self._watched.pop(id(raw), None) if self._watched else None
        if key is not None:
            self.sent_at[key] = time.time()
        await super()._emit(raw)


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    """Settings that differ between benchmarks; everything else is the bridge's defaults."""

    batching: bool = True
    requests_per_second: float = 2.0
    burst: int = 50
    rate_limit_per_ip: float = 20.0
    log_level: str = "info"
    show_cards: bool = True
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


class BridgeExited(RuntimeError):
    """The bridge process ended before it became ready."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BridgeProcess:
    """`b24-bridge run` in a child process, wired to the given simulators; observed over HTTP and /proc."""

    def __init__(self, workdir: Path, *, ami_port: int, webhook_url: str, options: BridgeOptions) -> None:
        self.workdir = workdir
        self.options = options
        self.app_token = secrets.token_hex(16)
        self.http_port = _free_port()
        self.db_path = workdir / "bridge.sqlite3"
        self.log_path = workdir / "bridge.log"
        sections: dict[str, dict[str, Any]] = {
            "ami": {"host": "127.0.0.1", "port": ami_port, "username": "bridge", "secret": AMI_SECRET,
                    "ping_interval": 5.0, "reconnect_min": 0.2, "reconnect_max": 2.0},
            "bitrix24": {"webhook_url": webhook_url, "default_user_id": 1, "batching": options.batching,
                         "requests_per_second": options.requests_per_second, "burst": options.burst,
                         "show_cards": options.show_cards},
            "http": {"host": "127.0.0.1", "port": self.http_port, "application_token": self.app_token,
                     "rate_limit_per_ip": options.rate_limit_per_ip},
            "storage": {"path": self.db_path},
            "recordings": {"enabled": False},
            "log": {"level": options.log_level, "format": "json"},
        }
        for name, values in options.extra.items():
            sections.setdefault(name, {}).update(values)
        self.config_path = workdir / "bridge.toml"
        self.config_path.write_text(_toml(sections), encoding="utf-8")
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("B24BRIDGE_")}
        self._log_file = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log_file, stderr=asyncio.subprocess.STDOUT,
            cwd=str(ROOT), env=env)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz says ready (AMI logged in, portal reachable)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise BridgeExited(f"bridge exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                body = await self.get_json("/readyz")
                if body.get("status") == "ready":
                    return
                last = str(body)
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"bridge not ready after {timeout} s ({last}): {self.log_tail()}")

    async def get_json(self, path: str) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(self.base_url + path) as response:
            body = await response.json(content_type=None)
            return body if isinstance(body, dict) else {}

    async def status(self) -> dict[str, Any]:
        return await self.get_json("/status")

    async def backlog(self) -> int:
        """Operations waiting to be sent (pending, including those in flight)."""
        dispatcher = (await self.status()).get("dispatcher") or {}
        return int(dispatcher.get("backlog", 0))

    async def calls_tracked(self) -> int:
        body = await self.get_json("/readyz")
        return int(((body.get("checks") or {}).get("pbx") or {}).get("extra", {}).get("calls_tracked", 0))

    def _proc_status(self) -> dict[str, str]:
        out: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8").splitlines():
                key, _, value = line.partition(":")
                out[key] = value.strip()
        return out

    def rss_mb(self) -> float:
        """Resident set size now (VmRSS), in MB (10^6 bytes)."""
        return _kib(self._proc_status().get("VmRSS")) * 1024 / 1e6

    def peak_rss_mb(self) -> float:
        """Highest resident set size so far (VmHWM), in MB."""
        return _kib(self._proc_status().get("VmHWM")) * 1024 / 1e6

    def cpu_seconds(self) -> float:
        """User + system CPU time the bridge has used."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The bridge's JSON log lines with this `event` name (its log format is json in the bench)."""
        out: list[dict[str, Any]] = []
        marker = f'"event": "{event}"'
        with contextlib.suppress(OSError), self.log_path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if marker in line:
                    with contextlib.suppress(ValueError):
                        item = json.loads(line)
                        if isinstance(item, dict):
                            out.append(item)
        return out

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        return ""

    def dead_letters(self) -> dict[str, int]:
        """Dead letters as `kind: reason` -> count, read from the outbox file (read-only, the bridge may run on)."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)) as db:
                rows = db.execute("SELECT o.kind, substr(d.reason, 1, 80), count(*) FROM dead_letters d "
                                  "JOIN ops o ON o.id = d.op_id GROUP BY 1, 2").fetchall()
        except sqlite3.Error as exc:
            return {f"unreadable: {exc}": -1}
        return {f"{kind}: {reason}": int(count) for kind, reason, count in rows}

    async def stop(self) -> int | None:
        proc, self._proc = self._proc, None
        if self._session is not None:
            await self._session.close()
            self._session = None
        code: int | None = None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    code = await proc.wait()
            else:
                code = proc.returncode
            self._proc = proc  # keep pid for post-mortem reads of the outbox
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code


def _kib(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return 0.0


class Rig:
    """AMI simulator + Bitrix24 simulator + bridge process, entered together, torn down together."""

    def __init__(self, options: BridgeOptions | None = None, *, portal_rate: float = 2.0, portal_burst: int = 50,
                 latency: float = 0.08, originate_speed: float = 50.0) -> None:
        self.options = options or BridgeOptions()
        self.ami = WatchingAmiSimulator(secret=AMI_SECRET, originate_speed=originate_speed)
        self.portal = Bitrix24Simulator(users=USERS, rate=portal_rate, burst=portal_burst, latency=latency)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._bridge: BridgeProcess | None = None
        self.bridge_exit: int | None = None

    @property
    def bridge(self) -> BridgeProcess:
        assert self._bridge is not None
        return self._bridge

    async def __aenter__(self) -> Rig:
        self._tmp = tempfile.TemporaryDirectory(prefix="b24-bench-")
        await self.ami.__aenter__()
        await self.portal.__aenter__()
        try:
            for attempt in range(3):
                self._bridge = BridgeProcess(Path(self._tmp.name), ami_port=self.ami.port,
                                             webhook_url=self.portal.webhook_url, options=self.options)
                await self._bridge.start()
                try:
                    await self._bridge.wait_ready()
                    break
                except BridgeExited:
                    # Most likely the HTTP port picked for it was taken meanwhile: try another one.
                    await self._bridge.stop()
                    if attempt == 2:
                        raise
            await self._wait_directory()
        except BaseException:
            await self._close()
            raise
        return self

    async def _wait_directory(self, timeout: float = 10.0) -> None:
        """The bridge reads the portal's users at start; calls placed before that would go to the default user."""
        await poll_until(lambda: self.portal.count("user.get") > 0, timeout)
        await asyncio.sleep(0.2)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._bridge is not None:
            self.bridge_exit = await self._bridge.stop()
        await self.ami.__aexit__(None, None, None)
        await self.portal.__aexit__(None, None, None)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
