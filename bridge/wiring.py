"""Small adapters the composition root uses to join parts that must not know each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.bus.mqtt import MqttBus
from bridge.bus.sites import SiteRouter
from bridge.crm.bitrix24.client import Bitrix24Client
from bridge.crm.bitrix24.directory import Directory
from bridge.crm.bitrix24.errors import Bitrix24ApiError
from bridge.model import CallEnded, CallEvent, CallRecord, CallStarted, Direction, Disposition, OriginateRequest
from bridge.recordings.uploader import RecordingFailed, RecordingNotReady, RecordingUploader
from bridge.sync.operations import CrmOp
from bridge.sync.ports import AttachNotReady

CALL_TYPE_CALLBACK = 4
DIRECTORY_POLL_SECONDS = 0.05


class CallbackRegistrar:
    """ONEXTERNALCALLBACKSTART: the portal did not register the call, so the bridge does (TYPE 4)."""

    def __init__(self, client: Bitrix24Client) -> None:
        self._client = client

    async def register_callback(self, phone: str, line: str | None, crm_entity_type: str | None,
                                crm_entity_id: int | None, user_id: int | None) -> str:
        registered = await self._client.register_call(
            phone_number=phone, call_type=CALL_TYPE_CALLBACK, user_id=user_id, line_number=line or None,
            crm_entity_type=crm_entity_type, crm_entity_id=crm_entity_id,
            call_start_date=datetime.now(UTC), show=False)
        return registered.call_id


class MqttSiteRouting:
    """Multi-site click-to-call: extensions hosted by another site's PBX are originated there via MQTT."""

    def __init__(self, router: SiteRouter, bus: MqttBus) -> None:
        self._router = router
        self._bus = bus

    def route(self, extension: str) -> str | None:
        return self._router.route(extension)

    async def publish_originate(self, site: str, request: OriginateRequest) -> None:
        await self._bus.publish_originate(site, request)


class RecordingAttach:
    """The dispatcher's attach handler: a file not settled yet is asked for again later, a bad one is a dead letter.

    The give-up clock starts at the earlier of the call's end as the PBX stamped it and the time the op was written to
    the outbox: a PBX clock running ahead of ours (or a replayed timeline) must not postpone giving up on a file that
    never comes, and the outbox's time survives restarts.
    """

    def __init__(self, uploader: RecordingUploader, *, clock: Callable[[], float] = time.time) -> None:
        self._uploader = uploader
        self._clock = clock

    async def __call__(self, op: CrmOp, crm_call_id: str, created_at: float) -> object:
        if not op.record_path:
            raise Bitrix24ApiError("", "attach_record operation without a recording path", method="attachRecord")
        queued_at = created_at if created_at > 0 else None  # 0: an op that never went through the outbox's write
        ended_at = op.at.timestamp() if op.at is not None else (queued_at or self._clock())
        try:
            return await self._uploader.attach(op.record_path, crm_call_id, ended_at=ended_at, queued_at=queued_at)
        except RecordingNotReady as exc:
            # Only this op waits; other calls' recordings (and every card) go meanwhile.
            raise AttachNotReady(str(exc), retry_after=exc.retry_after) from exc
        except RecordingFailed as exc:
            raise Bitrix24ApiError("", str(exc), method="attachRecord") from exc


def failed_originate_events(request: OriginateRequest, reason: str, *, pbx: str) -> list[CallEvent]:
    """A click-to-call the PBX refused still ends in the CRM: finished as failed with the PBX's reason."""
    now = datetime.now(UTC)
    call_id = f"originate-{request.request_id}"
    record = CallRecord(
        call_id=call_id, pbx=pbx, direction=Direction.OUTBOUND, external_number=request.number, line=None,
        agent=request.extension, agents_rung=(), disposition=Disposition.FAILED, started_at=now, answered_at=None,
        ended_at=now, talk_seconds=0, crm_call_id=request.crm_call_id, failure_reason=reason)
    return [
        CallStarted(call_id=call_id, at=now, direction=Direction.OUTBOUND, external_number=request.number,
                    line=None, agent=request.extension, crm_call_id=request.crm_call_id),
        CallEnded(call_id=call_id, at=now, call=record),
    ]


async def wait_for_directory(directory: Directory, timeout: float) -> bool:
    """Wait until the directory holds users (from its cache file or a refresh); False when `timeout` ran out."""
    try:
        async with asyncio.timeout(timeout):
            while directory.refreshed_at is None:  # noqa: ASYNC110 - the directory has no "loaded" event to await
                await asyncio.sleep(DIRECTORY_POLL_SECONDS)
    except TimeoutError:
        return False
    return True
