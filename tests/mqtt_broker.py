"""A real mosquitto broker per test, on a free loopback port, that a test can stop and start again on the same port.

Use the `mqtt_broker` fixture (import it into the test module, or register this module as a pytest plugin). The test
is skipped only when the mosquitto binary is missing; CI installs it. Set MOSQUITTO to point at another binary.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["MosquittoBroker", "find_mosquitto", "mqtt_broker"]

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")


def find_mosquitto() -> str | None:
    explicit = os.environ.get("MOSQUITTO")
    if explicit:
        return explicit
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which("mosquitto", path=search)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One mosquitto process; `stop()` and `start()` may be called again and again (same port each time)."""

    host = "127.0.0.1"

    def __init__(self, binary: str, workdir: Path, *, listener_options: str = "") -> None:
        """`listener_options`: extra config lines for the listener (e.g. certfile/keyfile for TLS)."""
        self.binary = binary
        self.port = free_port()
        self._workdir = workdir
        self._config = workdir / "mosquitto.conf"
        self._log = workdir / "mosquitto.log"
        self._config.write_text(
            f"listener {self.port} {self.host}\n"
            f"{listener_options}"
            "allow_anonymous true\n"
            # Started as root, mosquitto would switch to its own user, which cannot read the test's files.
            f"user {getpass.getuser()}\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._log.open("ab") as log_file:
                self._proc = subprocess.Popen([self.binary, "-c", str(self._config)],
                                              stdout=log_file, stderr=subprocess.STDOUT)
            if self._wait_accepting(deadline):
                return
            # The port may still be held by the previous run for a moment: try again until the deadline.
            self._terminate()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"mosquitto did not start on port {self.port}; log:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._terminate()

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def _wait_accepting(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found (install the 'mosquitto' package, or set MOSQUITTO=/path/to/it)")
    broker = MosquittoBroker(binary, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
