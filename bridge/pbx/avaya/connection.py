"""One TCP or TLS link to AES: frames out, responses matched to requests by invoke id, everything else handed on.

The reader runs as one task (`read_forever`); it decodes frames in arrival order and calls `on_unsolicited`
synchronously for events, so the order AES sent them in is the order the tracker sees. A response wakes the request
that waits for it. When the link ends, every waiting request fails with `DmccConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

import structlog

from bridge.pbx.avaya.decode import XmlRefused, parse_message
from bridge.pbx.avaya.errors import DmccConnectionError, DmccRequestError, DmccTimeoutError
from bridge.pbx.avaya.framing import EVENT_INVOKE_ID, FrameDecoder, FrameError, encode_frame
from bridge.pbx.avaya.messages import DmccMessage

log = structlog.get_logger(__name__)

READ_CHUNK = 64 * 1024


class DmccConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 on_unsolicited: Callable[[DmccMessage], None], request_timeout: float = 10.0,
                 name: str = "aes") -> None:
        self._reader = reader
        self._writer = writer
        self._on_unsolicited = on_unsolicited
        self._timeout = request_timeout
        self._name = name
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future[DmccMessage]] = {}
        self._on_answer: dict[int, Callable[[DmccMessage], None]] = {}
        self._last_id = 0
        self._closed = False
        self.refused_messages = 0

    @classmethod
    async def open(cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None, connect_timeout: float,
                   on_unsolicited: Callable[[DmccMessage], None], request_timeout: float = 10.0) -> DmccConnection:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl_context, server_hostname=host if ssl_context else None, limit=READ_CHUNK)
        except TimeoutError as exc:
            raise DmccConnectionError(f"connect to AES {host}:{port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise DmccConnectionError(f"cannot connect to AES {host}:{port}: {exc}") from exc
        return cls(reader, writer, on_unsolicited=on_unsolicited, request_timeout=request_timeout,
                   name=f"{host}:{port}")

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, payload: bytes, *, name: str,
                      on_answer: Callable[[DmccMessage], None] | None = None) -> DmccMessage:
        """Send one request and wait for the document answering it (any kind: the caller checks).

        `on_answer` runs inside the reader the moment the answer arrives, before any later event is dispatched,
        for state that must be in place before those events (MakeCall's callID).
        """
        if self._closed:
            raise DmccConnectionError(f"{name}: link to AES is closed")
        invoke_id = self._allocate()
        future: asyncio.Future[DmccMessage] = asyncio.get_running_loop().create_future()
        self._pending[invoke_id] = future
        if on_answer is not None:
            self._on_answer[invoke_id] = on_answer
        try:
            try:
                self._writer.write(encode_frame(invoke_id, payload))
                await self._writer.drain()
            except FrameError as exc:
                raise DmccRequestError(f"{name}: {exc}", request=name, error="too_large") from exc
            except (OSError, RuntimeError) as exc:
                raise DmccConnectionError(f"{name}: write to AES failed: {exc}") from exc
            try:
                async with asyncio.timeout(self._timeout):
                    return await future
            except TimeoutError as exc:
                raise DmccTimeoutError(f"{name}: no answer from AES within {self._timeout:g}s") from exc
        finally:
            self._pending.pop(invoke_id, None)
            self._on_answer.pop(invoke_id, None)

    async def read_forever(self) -> None:
        """Read and dispatch until the link ends; always ends by raising DmccConnectionError."""
        try:
            while True:
                try:
                    data = await self._reader.read(READ_CHUNK)
                except (OSError, ssl.SSLError) as exc:
                    raise DmccConnectionError(f"read from AES failed: {exc}") from exc
                if not data:
                    raise DmccConnectionError("AES closed the connection")
                for frame in self._decoder.feed(data):
                    self._dispatch(frame.invoke_id, frame.payload)
                for problem in self._decoder.drain_problems():
                    log.warning("avaya_framing_problem", link=self._name, problem=problem)
                if self._decoder.garbage_exceeded:
                    raise DmccConnectionError("too much unreadable data from AES; resetting the link")
        finally:
            self._closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(DmccConnectionError("link to AES lost while waiting for an answer"))

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()

    def abort(self) -> None:
        """Drop the link now (the reader then ends with DmccConnectionError)."""
        self._closed = True
        self._writer.transport.abort()

    def _allocate(self) -> int:
        for _ in range(EVENT_INVOKE_ID):
            self._last_id = self._last_id % (EVENT_INVOKE_ID - 1) + 1  # 1..9998; 9999 belongs to events
            if self._last_id not in self._pending:
                return self._last_id
        raise DmccConnectionError("no free invoke id: too many requests in flight")

    def _dispatch(self, invoke_id: int, payload: bytes) -> None:
        future = self._pending.get(invoke_id) if invoke_id != EVENT_INVOKE_ID else None
        try:
            message = parse_message(payload)
        except XmlRefused as exc:
            self.refused_messages += 1
            log.warning("avaya_message_refused", link=self._name, invoke_id=invoke_id, reason=str(exc),
                        size=len(payload))
            if future is not None and not future.done():
                future.set_exception(DmccRequestError(f"unreadable answer from AES: {exc}", request="?",
                                                      error="unreadable"))
            return
        if future is not None and not future.done():
            callback = self._on_answer.pop(invoke_id, None)
            if callback is not None:
                callback(message)
            future.set_result(message)
            return
        self._on_unsolicited(message)
