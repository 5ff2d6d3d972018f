"""A small XMPP client for the Finesse Notification Service (Openfire), over plain TCP with STARTTLS or direct TLS.

Why XMPP over TCP (5222/5223) and not BOSH (7443 http-bind): the guide lists it for non-browser clients, it is one
long-lived stream the server pushes into (no long-poll request churn, `rid`/`sid` bookkeeping or HTTP timeouts), and
its framing is just the XML stream our incremental reader handles. One `XmppSession` keeps one login alive forever:
connect, STARTTLS, SASL PLAIN, bind a fixed resource, presence, optional explicit pubsub subscriptions, then read
stanzas; XEP-0199 pings detect a dead link; any failure reconnects after a jittered, capped exponential delay.
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import count
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import structlog

from bridge.pbx.cisco.errors import FinesseError, XmlRefusedError, XmppAuthError, XmppError
from bridge.pbx.cisco.notifications import NS_PUBSUB
from bridge.pbx.cisco.rest import Credentials
from bridge.pbx.cisco.xml import StreamClosed, StreamOpened, XmlStreamReader, local_name

__all__ = ["SessionState", "XmppConfig", "XmppSession", "backoff_delay"]

log = structlog.get_logger(__name__)

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_PING = "urn:xmpp:ping"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class XmppConfig:
    host: str
    port: int
    domain: str
    pubsub_domain: str
    resource: str = "b24bridge"
    tls: Literal["starttls", "direct", "off"] = "starttls"
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0


class SessionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    READY = "ready"


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential from `low`, capped at `high`, with jitter in the upper half so peers do not synchronize."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return (rng or random).uniform(ceiling / 2, ceiling)


class _Link:
    """One TCP(/TLS) connection carrying one XML stream at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: XmppConfig) -> None:
        self.reader, self.writer, self.config = reader, writer, config
        self.parser = XmlStreamReader()
        self.items: list[StreamOpened | StreamClosed | ET.Element] = []
        self.ids = count(1)

    async def send(self, text: str) -> None:
        self.writer.write(text.encode("utf-8"))
        await self.writer.drain()

    async def open_stream(self) -> ET.Element:
        """(Re)start the stream and return the server's `<stream:features>`."""
        self.parser.reset()
        self.items.clear()
        await self.send("<?xml version='1.0'?><stream:stream to=" + quoteattr(self.config.domain)
                        + " xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        opened = await self.next_item(self.config.connect_timeout)
        if not isinstance(opened, StreamOpened):
            raise XmppError("server did not open an XML stream")
        return await self.expect(lambda e: e.tag == f"{{{NS_STREAM}}}features", self.config.connect_timeout)

    async def next_item(self, timeout: float) -> StreamOpened | StreamClosed | ET.Element:
        async with asyncio.timeout(timeout):
            while not self.items:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    raise XmppError("server closed the connection")
                self.items.extend(self.parser.feed(data))
        return self.items.pop(0)

    async def expect(self, want: Callable[[ET.Element], bool], timeout: float,
                     aside: list[ET.Element] | None = None) -> ET.Element:
        """Read until a stanza matches `want`; answer pings, keep messages in `aside`, fail on stream errors."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self.next_item(timeout)
                if isinstance(item, StreamClosed):
                    raise XmppError("server closed the XML stream")
                if isinstance(item, StreamOpened):
                    raise XmppError("unexpected stream restart from the server")
                if want(item):
                    return item
                await self.handle_common(item, aside)

    async def handle_common(self, stanza: ET.Element, aside: list[ET.Element] | None) -> None:
        name = local_name(stanza.tag)
        if stanza.tag == f"{{{NS_STREAM}}}error":
            condition = next((local_name(c.tag) for c in stanza), "unknown")
            raise XmppError(f"XMPP stream error from the server: {condition[:60]}")
        if name == "iq" and stanza.get("type") in ("get", "set"):
            await self.answer_iq(stanza)
        elif name == "message" and aside is not None:
            aside.append(stanza)

    async def answer_iq(self, iq: ET.Element) -> None:
        target = quoteattr(iq.get("from", self.config.domain))
        ident = quoteattr(iq.get("id", ""))
        if iq.find(f"{{{NS_PING}}}ping") is not None:
            await self.send(f"<iq type='result' to={target} id={ident}/>")
        else:
            await self.send(f"<iq type='error' to={target} id={ident}><error type='cancel'>"
                            f"<service-unavailable xmlns='{NS_STANZAS}'/></error></iq>")

    async def iq(self, body: str, *, to: str | None = None, iq_type: str = "set",
                 aside: list[ET.Element] | None = None) -> ET.Element:
        ident = f"b24_{next(self.ids)}"
        dest = f" to={quoteattr(to)}" if to else ""
        await self.send(f"<iq type='{iq_type}' id='{ident}'{dest}>{body}</iq>")
        return await self.expect(lambda e: local_name(e.tag) == "iq" and e.get("id") == ident
                                 and e.get("type") in ("result", "error"), self.config.connect_timeout, aside)


class XmppSession:
    """Keeps one Finesse notification login alive; hands every `<message>` to `on_message`."""

    def __init__(self, name: str, config: XmppConfig, credentials: Credentials, *,
                 on_message: Callable[[ET.Element, datetime], None],
                 on_ready: Callable[[], Awaitable[None]],
                 subscribe_nodes: Sequence[str] = ()) -> None:
        self.name = name
        self.config = config
        self.credentials = credentials
        self.subscribe_nodes = tuple(subscribe_nodes)
        self._on_message = on_message
        self._on_ready = on_ready
        self.state = SessionState.DISCONNECTED
        self.last_error: str | None = None
        self.connects = 0
        self.jid: str | None = None
        self._was_ready = False

    async def run(self) -> None:
        """Connect, serve, reconnect; returns only when cancelled."""
        attempt = 0
        while True:
            self.state = SessionState.CONNECTING
            wait: float | None = None
            try:
                await self._serve_once()
            except XmppAuthError as exc:
                self.last_error = str(exc)
                wait = self.config.reconnect_max
                log.error("finesse_xmpp_auth_failed", session=self.name, error=str(exc))
            except (FinesseError, OSError, TimeoutError, ssl.SSLError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("finesse_xmpp_link_lost", session=self.name, error=self.last_error)
            finally:
                self.state = SessionState.DISCONNECTED
            if self.connects and self._was_ready:
                attempt = 0
            delay = wait if wait is not None else backoff_delay(attempt, self.config.reconnect_min,
                                                                self.config.reconnect_max)
            attempt += 1
            await asyncio.sleep(delay)

    async def _serve_once(self) -> None:
        self._was_ready = False
        link = await self._connect()
        try:
            aside: list[ET.Element] = []
            await self._login(link, aside)
            self.connects += 1
            await self._on_ready()
            self.state = SessionState.READY
            self._was_ready = True
            self.last_error = None
            log.info("finesse_xmpp_ready", session=self.name, jid=self.jid)
            received = datetime.now(UTC)
            for stanza in aside:
                self._deliver(stanza, received)
            await self._read_loop(link)
        finally:
            await self._close(link)

    async def _connect(self) -> _Link:
        cfg = self.config
        context = cfg.ssl_context if cfg.tls == "direct" else None
        async with asyncio.timeout(cfg.connect_timeout):
            reader, writer = await asyncio.open_connection(
                cfg.host, cfg.port, ssl=context, server_hostname=cfg.host if context else None,
                limit=4 * _READ_SIZE)
        return _Link(reader, writer, cfg)

    async def _login(self, link: _Link, aside: list[ET.Element]) -> None:
        cfg = self.config
        features = await link.open_stream()
        starttls = features.find(f"{{{NS_TLS}}}starttls")
        if cfg.tls == "starttls":
            if starttls is None:
                raise XmppError("server does not offer STARTTLS (set cisco.tls = 'off' only on a trusted network)")
            await link.send(f"<starttls xmlns='{NS_TLS}'/>")
            answer = await link.expect(lambda e: e.tag in (f"{{{NS_TLS}}}proceed", f"{{{NS_TLS}}}failure"),
                                       cfg.connect_timeout)
            if answer.tag != f"{{{NS_TLS}}}proceed":
                raise XmppError("server refused STARTTLS")
            assert cfg.ssl_context is not None
            await link.writer.start_tls(cfg.ssl_context, server_hostname=cfg.host)
            features = await link.open_stream()
        elif cfg.tls == "off" and starttls is not None and starttls.find(f"{{{NS_TLS}}}required") is not None:
            raise XmppError("server requires STARTTLS but cisco.tls is 'off'")
        mechanisms = {(m.text or "").strip().upper() for m in features.iter(f"{{{NS_SASL}}}mechanism")}
        if "PLAIN" not in mechanisms:
            raise XmppAuthError("server does not offer SASL PLAIN")
        token = base64.b64encode(f"\0{self.credentials.user}\0{self.credentials.password}".encode()).decode()
        await link.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        answer = await link.expect(lambda e: e.tag in (f"{{{NS_SASL}}}success", f"{{{NS_SASL}}}failure"),
                                   cfg.connect_timeout)
        if answer.tag != f"{{{NS_SASL}}}success":
            condition = next((local_name(c.tag) for c in answer), "failure")
            raise XmppAuthError(f"SASL PLAIN refused for user {self.credentials.user!r}: {condition[:60]}")
        features = await link.open_stream()
        bound = await link.iq(f"<bind xmlns='{NS_BIND}'><resource>{escape(cfg.resource)}</resource></bind>")
        if bound.get("type") != "result":
            raise XmppError("resource binding refused (another session uses the same resource?)")
        self.jid = (bound.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid") or "").strip() or None
        if features.find(f"{{{NS_SESSION}}}session") is not None:
            await link.iq(f"<session xmlns='{NS_SESSION}'/>")
        await link.send("<presence><priority>0</priority></presence>")
        # One round trip, so the server has taken our presence (and will route notifications) before we resync.
        await link.iq(f"<ping xmlns='{NS_PING}'/>", to=cfg.domain, iq_type="get", aside=aside)
        for node in self.subscribe_nodes:
            jid = quoteattr(self.jid or f"{self.credentials.user}@{cfg.domain}/{cfg.resource}")
            answer = await link.iq(f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node={quoteattr(node)} jid={jid}/>"
                                   "</pubsub>", to=cfg.pubsub_domain, aside=aside)
            if answer.get("type") != "result":
                error = next((e for e in answer if local_name(e.tag) == "error"), None)
                condition = local_name(error[0].tag) if error is not None and len(error) else "error"
                raise XmppError(f"subscription to {node} refused: {condition[:60]}")

    async def _read_loop(self, link: _Link) -> None:
        pinger = asyncio.create_task(self._ping_loop(link), name=f"finesse[{self.name}].ping")
        try:
            while True:
                item = await link.next_item(self.config.ping_interval + self.config.ping_timeout)
                if isinstance(item, StreamClosed):
                    raise XmppError("server closed the XML stream")
                if isinstance(item, StreamOpened):
                    raise XmppError("unexpected stream restart from the server")
                if local_name(item.tag) == "message":
                    self._deliver(item, datetime.now(UTC))
                else:
                    await link.handle_common(item, None)
        except XmlRefusedError as exc:
            raise XmppError(f"unacceptable XML from the server: {exc}") from exc
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    def _deliver(self, message: ET.Element, received: datetime) -> None:
        # Only the pubsub service publishes notifications; the server stamps `from`, so other users cannot fake it.
        sender = (message.get("from") or "").lower()
        if sender != self.config.pubsub_domain.lower():
            log.warning("finesse_message_ignored", session=self.name, sender=sender[:80])
            return
        self._on_message(message, received)

    async def _ping_loop(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(self.config.ping_interval)
            ident = f"ping_{next(link.ids)}"
            await link.send(f"<iq type='get' id='{ident}' to={quoteattr(self.config.domain)}>"
                            f"<ping xmlns='{NS_PING}'/></iq>")

    async def _close(self, link: _Link) -> None:
        try:
            async with asyncio.timeout(1.0):
                if self.state is SessionState.READY or self._was_ready:
                    for node in self.subscribe_nodes if self.jid else ():
                        await link.send(f"<iq type='set' id='unsub_{next(link.ids)}' "
                                        f"to={quoteattr(self.config.pubsub_domain)}><pubsub xmlns='{NS_PUBSUB}'>"
                                        f"<unsubscribe node={quoteattr(node)} jid={quoteattr(self.jid or '')}/>"
                                        "</pubsub></iq>")
                await link.send("</stream:stream>")
        except (OSError, TimeoutError, RuntimeError):
            pass
        link.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await link.writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
