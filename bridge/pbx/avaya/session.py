"""The DMCC application session over one connection: start or re-attach, keep alive, device ids, monitors, actions.

Each method sends one request and checks that the answer is the expected kind; `CSTAErrorCode` and negative
responses become `DmccRequestError`, a refused session start becomes `DmccSessionError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from bridge.pbx.avaya import requests
from bridge.pbx.avaya.connection import DmccConnection
from bridge.pbx.avaya.errors import DmccRequestError, DmccSessionError
from bridge.pbx.avaya.messages import (
    CstaError,
    DeviceIdResponse,
    DmccMessage,
    MakeCallResponse,
    MonitorStartResponse,
    MonitorStopResponse,
    ResetTimerResponse,
    SessionNegative,
    SessionStarted,
    SnapshotDeviceResponse,
    StopSessionResponse,
)

log = structlog.get_logger(__name__)
_M = TypeVar("_M")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    application_id: str
    username: str
    password: str
    protocol_version: str
    session_duration: int
    cleanup_delay: int
    switch_name: str
    switch_ip: str | None = None
    third_party_device_ids: bool = False
    auto_originate: str | None = None


class DmccSession:
    def __init__(self, conn: DmccConnection, config: SessionConfig) -> None:
        self._conn = conn
        self._cfg = config
        self.session_id: str | None = None
        self.protocol = config.protocol_version
        self.duration = config.session_duration

    async def start(self, previous_session_id: str | None = None) -> bool:
        """Open the session; True when AES re-attached us to `previous_session_id` (its monitors still run)."""
        if previous_session_id:
            answer = await self._start(previous_session_id)
            if isinstance(answer, SessionStarted):
                return self._started(answer) == previous_session_id
            log.info("avaya_reattach_refused", error=_describe(answer))
        answer = await self._start(None)
        if not isinstance(answer, SessionStarted):
            raise DmccSessionError(f"AES refused the application session: {_describe(answer)}",
                                   error=_describe(answer))
        self._started(answer)
        return False

    async def keep_alive(self, interval: float) -> None:
        """Reset the session timer every `interval` seconds until cancelled; raise when AES refuses."""
        while True:
            await asyncio.sleep(interval)
            answer = await self._ask(requests.reset_application_session_timer(self._id(), self.duration),
                                     "ResetApplicationSessionTimer", ResetTimerResponse)
            if answer.session_duration:
                self.duration = answer.session_duration

    async def stop(self) -> None:
        if self.session_id:
            await self._ask(requests.stop_application_session(self.session_id), "StopApplicationSession",
                            StopSessionResponse)
            self.session_id = None

    async def device_id(self, extension: str, *, third_party: bool | None = None) -> str:
        use_third_party = self._cfg.third_party_device_ids if third_party is None else third_party
        name = "GetThirdPartyDeviceId" if use_third_party else "GetDeviceId"
        payload = requests.get_device_id(switch_name=self._cfg.switch_name, extension=extension,
                                         switch_ip=self._cfg.switch_ip, third_party=use_third_party)
        return (await self._ask(payload, name, DeviceIdResponse)).device_id

    async def monitor_start(self, device_id: str) -> str:
        answer = await self._ask(requests.monitor_start(self.protocol, device_id), "MonitorStart",
                                 MonitorStartResponse)
        return answer.monitor_id

    async def monitor_stop(self, monitor_id: str) -> None:
        await self._ask(requests.monitor_stop(self.protocol, monitor_id), "MonitorStop", MonitorStopResponse)

    async def snapshot(self, device_id: str) -> SnapshotDeviceResponse:
        return await self._ask(requests.snapshot_device(self.protocol, device_id), "SnapshotDevice",
                               SnapshotDeviceResponse)

    async def make_call(self, calling_device: str, called_device: str, *,
                        on_answer: Callable[[DmccMessage], None] | None = None) -> MakeCallResponse:
        payload = requests.make_call(self.protocol, calling_device=calling_device, called_device=called_device,
                                     auto_originate=self._cfg.auto_originate)
        return await self._ask(payload, "MakeCall", MakeCallResponse, on_answer=on_answer)

    async def _start(self, previous: str | None) -> DmccMessage:
        cfg = self._cfg
        payload = requests.start_application_session(
            application_id=cfg.application_id, username=cfg.username, password=cfg.password,
            protocol_version=cfg.protocol_version, session_duration=cfg.session_duration,
            cleanup_delay=cfg.cleanup_delay, session_id=previous)
        return await self._conn.request(payload, name="StartApplicationSession")

    def _started(self, answer: SessionStarted) -> str:
        self.session_id = answer.session_id
        self.protocol = answer.protocol_version or self._cfg.protocol_version
        self.duration = answer.session_duration or self._cfg.session_duration
        return answer.session_id

    def _id(self) -> str:
        if not self.session_id:
            raise DmccSessionError("no application session")
        return self.session_id

    async def _ask(self, payload: bytes, name: str, expected: type[_M], *,
                   on_answer: Callable[[DmccMessage], None] | None = None) -> _M:
        answer = await self._conn.request(payload, name=name, on_answer=on_answer)
        if isinstance(answer, expected):
            return answer
        if isinstance(answer, SessionNegative) and name == "ResetApplicationSessionTimer":
            raise DmccSessionError(f"AES refused to extend the session: {answer.error}", error=answer.error)
        raise DmccRequestError(f"{name} failed: {_describe(answer)}", request=name, error=_describe(answer))


def _describe(answer: DmccMessage) -> str:
    match answer:
        case CstaError():
            return str(answer)
        case SessionNegative():
            return answer.error
        case _:
            return f"unexpected {type(answer).__name__}"
