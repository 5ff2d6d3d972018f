"""The XMPP half of the Finesse simulator: a tiny Openfire stand-in speaking just what Finesse clients use.

Stream negotiation (SASL PLAIN, bind, session), presence, XEP-0199 pings, XEP-0060 subscribe/unsubscribe, and
pubsub `<message>`s carrying the XML-escaped `<Update>` like Finesse's notification service. Every stanza a client
sends is recorded. It parses client input with the standard library's pull parser (the adapter has its own).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from itertools import count
from typing import Literal, Protocol
from xml.sax.saxutils import escape, quoteattr

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_PING = "urn:xmpp:ping"


class Directory(Protocol):
    """What the XMPP server needs from the simulator: who may log in and subscribe to what."""

    domain: str
    refuse_xmpp: bool

    def check_password(self, user: str, password: str) -> bool: ...

    def may_subscribe(self, user: str, node: str) -> bool: ...

    def record_stanza(self, user: str | None, stanza: ET.Element) -> None: ...


@dataclass(eq=False)
class ServerSession:
    writer: asyncio.StreamWriter
    user: str | None = None
    resource: str | None = None
    available: bool = False
    subscriptions: set[str] = field(default_factory=set)  # explicit, by full JID


class XmppServer:
    def __init__(self, directory: Directory, *, ssl_context: ssl.SSLContext | None = None,
                 tls: Literal["off", "starttls", "direct"] = "off") -> None:
        if tls != "off" and ssl_context is None:
            raise ValueError("TLS needs an ssl_context")
        self.directory = directory
        self.ssl_context = ssl_context
        self.tls = tls
        self.sessions: set[ServerSession] = set()
        self._server: asyncio.Server | None = None
        self._ids = count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.logins = 0

    async def start(self, host: str) -> int:
        direct = self.ssl_context if self.tls == "direct" else None
        self._server = await asyncio.start_server(self._accept, host, 0, ssl=direct)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def drop_all(self) -> None:
        """Cut every client connection without a goodbye (the 'link drop' fault)."""
        for session in list(self.sessions):
            session.writer.transport.abort()
        self.sessions.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, user_id: str, node: str, update_xml: str) -> int:
        """Deliver one Update to the sessions subscribed to `node` (the owner's own sessions automatically)."""
        delivered = 0
        for session in list(self.sessions):
            if not session.available:
                continue
            own = session.user == user_id and node == f"/finesse/api/User/{user_id}/Dialogs"
            if not own and node not in session.subscriptions:
                continue
            jid = self._jid(session)
            message = (
                f"<message from={quoteattr('pubsub.' + self.directory.domain)} to={quoteattr(jid)} "
                f"id='{node}__{jid}__{next(self._ids)}'><event xmlns='{NS_PUBSUB_EVENT}'><items node={quoteattr(node)}>"
                f"<item id='item{next(self._ids)}'><notification xmlns='{NS_PUBSUB}'>{escape(update_xml)}"
                "</notification></item></items></event></message>"
            )
            session.writer.write(message.encode())
            delivered += 1
        return delivered

    def _jid(self, session: ServerSession) -> str:
        return f"{session.user}@{self.directory.domain}/{session.resource}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.directory.refuse_xmpp:
            writer.transport.abort()
            return
        session = ServerSession(writer)
        self.sessions.add(session)
        try:
            await self._conversation(reader, session)
        except (ConnectionError, ET.ParseError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.sessions.discard(session)
            writer.transport.abort()

    async def _conversation(self, reader: asyncio.StreamReader, session: ServerSession) -> None:
        stream = _Stream(reader)
        write = session.writer.write
        authenticated = False
        secured = self.tls != "starttls"
        while True:
            item = await stream.next()
            if item is None:
                return
            if isinstance(item, _Open):
                if item.attrs.get("to") != self.directory.domain:
                    write((f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' "
                           f"version='1.0'><stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                           "</stream:error></stream:stream>").encode())
                    return
                if not secured:
                    features = f"<starttls xmlns='{NS_TLS}'><required/></starttls>"
                elif not authenticated:
                    features = f"<mechanisms xmlns='{NS_SASL}'><mechanism>PLAIN</mechanism></mechanisms>"
                else:
                    features = f"<bind xmlns='{NS_BIND}'/><session xmlns='{NS_SESSION}'/>"
                write((f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' "
                       f"from={quoteattr(self.directory.domain)} id='s{next(self._ids)}' version='1.0'>"
                       f"<stream:features>{features}</stream:features>").encode())
                continue
            if item == "close":
                write(b"</stream:stream>")
                return
            assert isinstance(item, ET.Element)
            self.directory.record_stanza(session.user, item)
            if item.tag == f"{{{NS_TLS}}}starttls" and not secured:
                write(f"<proceed xmlns='{NS_TLS}'/>".encode())
                await session.writer.drain()
                assert self.ssl_context is not None
                await session.writer.start_tls(self.ssl_context)
                secured = True
                stream.restart()
                continue
            if not secured:
                return
            if item.tag == f"{{{NS_SASL}}}auth":
                authenticated = self._auth(item, session)
                if authenticated:
                    stream.restart()
                continue
            if not authenticated:
                write(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                      b"</stream:error></stream:stream>")
                return
            self._stanza(item, session)

    def _auth(self, item: ET.Element, session: ServerSession) -> bool:
        try:
            _, user, password = base64.b64decode(item.text or "", validate=True).decode().split("\0")
        except ValueError:
            user = password = ""
        if item.get("mechanism") == "PLAIN" and self.directory.check_password(user, password):
            session.user = user
            self.logins += 1
            session.writer.write(f"<success xmlns='{NS_SASL}'/>".encode())
            return True
        session.writer.write(f"<failure xmlns='{NS_SASL}'><not-authorized/></failure>".encode())
        return False

    def _stanza(self, item: ET.Element, session: ServerSession) -> None:
        write = session.writer.write
        name = item.tag.rsplit("}", 1)[-1]
        ident = quoteattr(item.get("id", ""))
        if name == "presence":
            session.available = item.get("type") != "unavailable"
            write(f"<iq type='get' id='srvping{next(self._ids)}' from={quoteattr(self.directory.domain)}>"
                  f"<ping xmlns='{NS_PING}'/></iq>".encode())
            return
        if name != "iq" or item.get("type") not in ("get", "set"):
            return
        bind = item.find(f"{{{NS_BIND}}}bind")
        pubsub = item.find(f"{{{NS_PUBSUB}}}pubsub")
        if bind is not None:
            session.resource = (bind.findtext(f"{{{NS_BIND}}}resource") or "sim").strip()
            write(f"<iq type='result' id={ident}><bind xmlns='{NS_BIND}'><jid>{escape(self._jid(session))}</jid>"
                  "</bind></iq>".encode())
        elif pubsub is not None:
            write(self._pubsub(pubsub, session, ident).encode())
        elif item.find(f"{{{NS_SESSION}}}session") is not None or item.find(f"{{{NS_PING}}}ping") is not None:
            write(f"<iq type='result' id={ident}/>".encode())
        else:
            write(f"<iq type='error' id={ident}><error type='cancel'><feature-not-implemented "
                  "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>".encode())

    def _pubsub(self, pubsub: ET.Element, session: ServerSession, ident: str) -> str:
        for child in pubsub:
            node = child.get("node", "")
            verb = child.tag.rsplit("}", 1)[-1]
            if verb == "subscribe" and session.user and self.directory.may_subscribe(session.user, node):
                session.subscriptions.add(node)
                return f"<iq type='result' id={ident}/>"
            if verb == "unsubscribe":
                session.subscriptions.discard(node)
                return f"<iq type='result' id={ident}/>"
        return (f"<iq type='error' id={ident}><error type='auth'><forbidden "
                "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")


@dataclass(frozen=True)
class _Open:
    attrs: dict[str, str]


class _Stream:
    """Client-to-server XML stream for the simulator: yields an _Open, 'close' or a depth-1 stanza element."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.restart()

    def restart(self) -> None:
        self.parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.pending: list[_Open | str | ET.Element] = []

    async def next(self) -> _Open | str | ET.Element | None:
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                return None
            self.parser.feed(data)
            for kind, element in self.parser.read_events():  # type: ignore[misc]
                assert isinstance(element, ET.Element)
                self._event(str(kind), element)
        return self.pending.pop(0)

    def _event(self, kind: str, element: ET.Element) -> None:
        if kind == "start":
            self.depth += 1
            if self.depth == 1:
                self.root = element
                self.pending.append(_Open(dict(element.attrib)))
            return
        self.depth -= 1
        if self.depth == 0:
            self.pending.append("close")
        elif self.depth == 1:
            self.pending.append(element)
            if self.root is not None:
                self.root.remove(element)  # the stream root would otherwise keep every stanza
