"""Serve recordings under signed, expiring links (`recordings.mode = "url"`): Bitrix24 downloads them from here."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from bridge.recordings.paths import RecordingRejected, resolve_recording
from bridge.recordings.signing import LinkRejected, RecordingSigner

log = structlog.get_logger(__name__)


def recording_routes(signer: RecordingSigner, root: Path, is_known_call: Callable[[str], bool],
                     clock: Callable[[], float] = time.time) -> list[web.RouteDef]:
    """`GET /recordings/{token}/{name}`: 404 for anything not signed, expired, unknown or outside the root."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            link = signer.verify(request.match_info["token"], clock())
            if not is_known_call(link.crm_call_id):
                raise LinkRejected("recording link for a call this bridge did not handle")
            path = resolve_recording(root, link.relative_path)
        except (LinkRejected, RecordingRejected) as exc:
            log.warning("recording_link_refused", reason=str(exc), peer=request.remote)
            raise web.HTTPNotFound() from None
        if not path.is_file():
            raise web.HTTPNotFound()
        log.info("recording_served", crm_call_id=link.crm_call_id, path=str(path), peer=request.remote)
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    return [web.get("/recordings/{token}/{name}", handle)]
