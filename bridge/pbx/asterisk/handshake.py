"""Opening an AMI session: TCP (or TLS) with keep-alive, the banner line, and the plain or MD5 login.

Shared by `AmiConnection` and `capture`. Before login Asterisk sends nothing but the banner and the replies to our
own actions, so these steps read whole frames with `readuntil`, which leaves every byte after the login reply
untouched in the stream for the caller (the capture tool relies on that to record exact bytes).
Timeouts are the caller's job (`asyncio.timeout` around each step).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from typing import Literal

from bridge.errors import AmiConnectionError, AmiLoginError
from bridge.pbx.asterisk.protocol import BANNER_PREFIX, TERMINATOR, AmiMessage, AmiParser, encode_action

__all__ = ["STREAM_LIMIT", "AuthMode", "login", "md5_key", "open_stream", "read_banner"]

AuthMode = Literal["md5", "plain"]
# Largest single frame `readuntil` accepts during the handshake (the replies are tiny; this only bounds abuse).
STREAM_LIMIT = 1024 * 1024
_MAX_BANNER = 256


async def open_stream(
    host: str, port: int, *, tls: bool | ssl.SSLContext = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and switch on TCP keep-alive, so a dead peer is noticed even between our own pings."""
    ssl_arg = tls if isinstance(tls, ssl.SSLContext) else (ssl.create_default_context() if tls else None)
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_arg, limit=STREAM_LIMIT)
    except (OSError, ssl.SSLError) as exc:
        raise AmiConnectionError(f"cannot connect to AMI at {host}:{port}: {exc}") from exc
    _enable_keepalive(writer)
    return reader, writer


def _enable_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Linux: first probe after 30 s idle, then every 10 s, give up after 3 misses.
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # keep-alive is a bonus; the Ping deadline is what really detects a dead link


async def read_banner(reader: asyncio.StreamReader) -> str:
    """Read the `Asterisk Call Manager/<version>` line; anything else means we did not reach an AMI port."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as exc:
        raise AmiConnectionError("connection closed before the AMI banner") from exc
    except asyncio.LimitOverrunError as exc:
        raise AmiConnectionError("no AMI banner (first line too long): is this an AMI port?") from exc
    banner = line[:-2].decode("utf-8", errors="replace")
    if not banner.startswith(BANNER_PREFIX) or len(banner) > _MAX_BANNER:
        raise AmiConnectionError(f"unexpected banner {banner[:60]!r}: is this an AMI port?")
    return banner


def md5_key(challenge: str, secret: str) -> str:
    """The `Key` of an MD5 login: lower-hex md5 of challenge followed by secret (manager.c `authenticate`)."""
    return hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


async def login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    parser: AmiParser,
    *,
    username: str,
    secret: str,
    auth: AuthMode,
    events: str,
    id_prefix: str,
) -> AmiMessage:
    """Log in (MD5 challenge or plain secret) and return the `Authentication accepted` reply."""
    headers: list[tuple[str, str]] = [("Username", username)]
    if auth == "md5":
        reply = await _request(reader, writer, parser, "Challenge", [("AuthType", "MD5")],
                               action_id=f"{id_prefix}-challenge")
        challenge = reply.get("Challenge")
        if reply.response != "Success" or not challenge:
            raise AmiLoginError(f"MD5 challenge refused: {reply.get('Message') or reply.response}")
        headers += [("AuthType", "MD5"), ("Key", md5_key(challenge, secret))]
    else:
        headers.append(("Secret", secret))
    headers.append(("Events", events))
    reply = await _request(reader, writer, parser, "Login", headers, action_id=f"{id_prefix}-login")
    if reply.response != "Success":
        raise AmiLoginError(f"login refused for user {username!r}: {reply.get('Message') or reply.response}")
    return reply


async def _request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    parser: AmiParser,
    action: str,
    headers: list[tuple[str, str]],
    *,
    action_id: str,
) -> AmiMessage:
    writer.write(encode_action(action, [("ActionID", action_id), *headers]))
    await writer.drain()
    while True:
        try:
            frame = await reader.readuntil(TERMINATOR)
        except asyncio.IncompleteReadError as exc:
            # Asterisk closes right after `Authentication failed`; a close without a reply is a link problem.
            raise AmiConnectionError(f"connection closed while waiting for the {action} reply") from exc
        except asyncio.LimitOverrunError as exc:
            raise AmiConnectionError(f"oversized frame while waiting for the {action} reply") from exc
        for message in parser.feed(frame):
            if message.response is not None and message.action_id in (action_id, None):
                return message
