"""Hostile input is refused and never crashes anything: AMI bytes (parser alone and over a live TCP session) and
HTTP requests to the Bitrix24 event endpoint (random bodies, forged and malicious forms, huge bodies, slow clients).

What counts is observed from outside: the parser's output, the AMI simulator's record of every action it received
(no Originate without a valid token, no injected header or action), HTTP status codes (never 5xx) and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.app import Bridge
from bridge.pbx.asterisk.connection import AmiConnection
from bridge.pbx.asterisk.items import Received
from bridge.pbx.asterisk.protocol import TERMINATOR, AmiMessage, AmiParser
from bridge.sim.ami import AmiSimulator
from bridge.sim.bitrix24 import Bitrix24Simulator
from tests.fault.conftest import (
    AMI_SECRET,
    AMI_USER,
    FIXTURES,
    USERS,
    BackgroundLoop,
    bridge_settings,
    captured_logs,
    running_bridge,
    until,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------- AMI: strategies

_KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True)
_VALUE = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=60)


@st.composite
def valid_frame(draw: st.DrawFn, seq: int) -> tuple[bytes, dict[str, str]]:
    """A well-formed event with a unique `FuzzSeq`, in UTF-8 or (sometimes) cp1251 like a legacy trunk."""
    pairs = [("Event", draw(_KEY)), ("FuzzSeq", str(seq))]
    for key, value in draw(st.lists(st.tuples(_KEY, _VALUE), max_size=6)):
        if key not in ("Event", "FuzzSeq", "Response") and key not in dict(pairs):
            pairs.append((key, value.strip(" ")))
    text = "".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
    try:
        raw = text.encode("cp1251") if draw(st.booleans()) else text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8")
    expected = dict(pairs)
    for name in ("CallerIDName", "ConnectedLineName"):
        expected.pop(name, None)  # those are C-unescaped by design
    return raw, expected


_GARBAGE = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=200).map(lambda t: t.encode("utf-16", "surrogatepass")),
    st.lists(st.sampled_from([b"Event: ", b"Response: ", b"ActionID: ", b": ", b":", b"\r\n", b"\r", b"\n",
                              b"\x00", b"\xff\xfe", b"\xd0", b"Privilege: call,all", b"--END COMMAND--",
                              b"Output: x", b"Asterisk Call Manager/", b"\r\n\r\n"]), max_size=30).map(b"".join),
).filter(lambda g: b"Response: Follows" not in g)


def _clean(garbage: bytes) -> bytes:
    """Garbage as its own frame(s): whatever it contains, a terminator closes it before the next valid frame."""
    return garbage + TERMINATOR


def _stream_headers(messages: list[AmiMessage]) -> list[dict[str, str]]:
    return [dict(m.headers) for m in messages]


# ----------------------------------------------------------------------------------------------- AMI: parser alone


@FUZZ
@given(st.lists(st.binary(max_size=2000), max_size=40))
def test_parser_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    parser = AmiParser(max_frame_bytes=8192)
    for chunk in chunks:
        for message in parser.feed(chunk):
            assert message.event is not None or message.response is not None
        assert len(parser._buf) <= 8192 + len(chunk)
    parser.drain_problems()


@FUZZ
@given(st.data())
def test_parser_output_does_not_depend_on_tcp_chunking(data: st.DataObject) -> None:
    """The same bytes split anywhere (a character cut in half, a terminator cut in half) give the same messages."""
    parts = data.draw(st.lists(st.one_of(st.integers(0, 10**6).map(lambda n: None), _GARBAGE), max_size=25))
    stream = b"".join(_clean(p) if p is not None else data.draw(valid_frame(n))[0] for n, p in enumerate(parts))
    cuts = sorted(data.draw(st.lists(st.integers(0, max(0, len(stream))), max_size=30)))
    whole = AmiParser().feed(stream)
    parser = AmiParser()
    pieces: list[AmiMessage] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces += parser.feed(stream[start:end])
    assert _stream_headers(pieces) == _stream_headers(whole)


@FUZZ
@given(st.data())
def test_valid_events_survive_surrounding_garbage(data: st.DataObject) -> None:
    """Thousands of valid frames interleaved with garbage frames: every valid one comes out intact, in order."""
    items = data.draw(st.lists(st.booleans(), min_size=1, max_size=40))
    stream = b""
    expected: list[dict[str, str]] = []
    for seq, valid in enumerate(items):
        if valid:
            raw, headers = data.draw(valid_frame(seq))
            stream += raw
            expected.append(headers)
        else:
            stream += _clean(data.draw(_GARBAGE))
    size = data.draw(st.integers(1, 4096))
    parser = AmiParser()
    out: list[AmiMessage] = []
    for offset in range(0, len(stream), size):
        out += parser.feed(stream[offset:offset + size])
    ours = [m for m in out if m.get("FuzzSeq") is not None and m.get("FuzzSeq") in {h["FuzzSeq"] for h in expected}]
    got = {m.get("FuzzSeq"): m for m in ours}
    for headers in expected:
        message = got.get(headers["FuzzSeq"])
        assert message is not None, f"frame {headers['FuzzSeq']} lost"
        for key, value in headers.items():
            assert message.get(key) == value, (key, message.get(key), value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(40_000, 200_000), st.integers(64, 5000), st.binary(min_size=1, max_size=50))
def test_huge_header_is_skipped_and_the_stream_recovers(size: int, chunk: int, filler: bytes) -> None:
    """A frame far beyond the limit (the limit bounds the buffer: a frame whose end arrives in the same read that
    crosses it may still pass, so the frames here are well over twice the limit)."""
    value = filler * (size // len(filler) + 1)
    assume(TERMINATOR not in value + b"\r\n" and b"Response: Follows" not in value)
    stream = (b"Event: Before\r\nFuzzSeq: 1\r\n\r\n" + b"Event: Huge\r\nValue: " + value + b"\r\n\r\n"
              + b"Event: After\r\nFuzzSeq: 2\r\n\r\n")
    parser = AmiParser(max_frame_bytes=16_384)
    out: list[AmiMessage] = []
    for offset in range(0, len(stream), chunk):
        out += parser.feed(stream[offset:offset + chunk])
        assert len(parser._buf) <= 16_384 + chunk
    names = [m.event for m in out]
    assert names[0] == "Before" and names[-1] == "After", names
    assert "Huge" not in names
    assert parser.stats.oversized_frames >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_truncated_stream_then_a_new_session(data: st.DataObject) -> None:
    """A link cut mid-frame: frames before the cut are intact; after `reset()` (a new session) all is well."""
    frames = [data.draw(valid_frame(n)) for n in range(data.draw(st.integers(1, 12)))]
    stream = b"".join(raw for raw, _ in frames)
    cut = data.draw(st.integers(0, len(stream)))
    parser = AmiParser()
    before = parser.feed(stream[:cut])
    complete = stream[:cut].count(TERMINATOR)
    assert [m.get("FuzzSeq") for m in before] == [h["FuzzSeq"] for _, h in frames[:complete]]
    parser.reset()
    again = parser.feed(stream)
    assert [m.get("FuzzSeq") for m in again] == [h["FuzzSeq"] for _, h in frames]


def test_unterminated_follows_response_does_not_swallow_events() -> None:
    """A hostile or broken `Response: Follows` without its end marker must not hold back the events after it."""
    parser = AmiParser()
    out = parser.feed(b"Response: Follows\r\nPrivilege: Command\r\n\r\n")
    for n in range(200):
        out += parser.feed(f"Event: Newchannel\r\nPrivilege: call,all\r\nUniqueid: 1.{n}\r\n\r\n".encode())
    assert len([m for m in out if m.event == "Newchannel"]) >= 199


# ----------------------------------------------------------------------------------------------- AMI: over TCP


@dataclass
class LiveAmi:
    bg: BackgroundLoop
    sim: AmiSimulator
    conn: AmiConnection
    seen: dict[str, AmiMessage] = field(default_factory=dict)
    logins: int = 0
    seq: int = 0

    def next_seq(self) -> str:
        self.seq += 1
        return f"tcp-{self.seq}"

    async def wait_seen(self, seq: str, timeout: float = 10.0) -> AmiMessage:
        deadline = time.monotonic() + timeout
        while seq not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"event {seq} never arrived after the garbage")
            await asyncio.sleep(0.002)
        return self.seen[seq]


@pytest.fixture(scope="module")
def live_ami() -> Iterator[LiveAmi]:
    with captured_logs("error"):
        bg = BackgroundLoop()
        stack = contextlib.AsyncExitStack()

        async def start() -> LiveAmi:
            sim = await stack.enter_async_context(AmiSimulator(AMI_USER, AMI_SECRET, fixtures_dir=FIXTURES))
            conn = await stack.enter_async_context(AmiConnection(
                "127.0.0.1", sim.port, AMI_USER, AMI_SECRET, events="on", ping_interval=300.0,
                reconnect_min=0.05, reconnect_max=0.2, fully_booted_timeout=0.5))
            await conn.wait_connected(5)
            live = LiveAmi(bg, sim, conn, logins=sim.stats.sessions_served)

            async def collect() -> None:
                async for item in conn.messages():
                    if isinstance(item, Received) and (seq := item.message.get("FuzzSeq")) is not None:
                        live.seen[seq] = item.message

            task = asyncio.create_task(collect())
            stack.push_async_callback(_cancel, task)
            return live

        live = bg.run(start())
        try:
            yield live
        finally:
            bg.run(stack.aclose())
            bg.close()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _garbage_then_event(live: LiveAmi, garbage: bytes, seq: str) -> AmiMessage:
    await live.sim.send_raw(garbage)
    await live.sim.send_raw(TERMINATOR)
    await live.sim.emit([("Event", "UserEvent"), ("Privilege", "user,all"), ("FuzzSeq", seq)])
    return await live.wait_seen(seq)


@FUZZ
@given(st.lists(_GARBAGE, min_size=1, max_size=8).map(b"".join))
def test_garbage_over_tcp_leaves_the_session_up(live_ami: LiveAmi, garbage: bytes) -> None:
    seq = live_ami.next_seq()
    message = live_ami.bg.run(_garbage_then_event(live_ami, garbage, seq))
    assert message.event == "UserEvent"
    assert live_ami.conn.connected() and live_ami.conn.reconnects == 0
    assert live_ami.sim.stats.sessions_served == live_ami.logins, "the connection had to log in again"


def test_huge_frame_over_tcp_leaves_the_session_up(live_ami: LiveAmi) -> None:
    """A single 6 MB header (beyond the 4 MB frame limit) is skipped; the session stays up and reads on."""
    seq = live_ami.next_seq()
    huge = b"Event: Huge\r\nPrivilege: call,all\r\nValue: " + b"\xd0\x96" * (3 * 1024 * 1024)
    message = live_ami.bg.run(_garbage_then_event(live_ami, huge, seq), timeout=60)
    assert message.get("FuzzSeq") == seq
    assert live_ami.conn.connected() and live_ami.conn.reconnects == 0


# ----------------------------------------------------------------------------------------------- HTTP endpoint

TOKEN = "hostile-suite-application-token-0001"
ALLOWED_ACTIONS = {"login", "challenge", "logoff", "ping", "events", "coreshowchannels", "status", "originate"}
ORIGINATE_KEYS = {"Action", "ActionID", "Channel", "Context", "Exten", "Priority", "CallerID", "Timeout", "Async",
                  "ChannelId", "Variable"}
EXTENSIONS = {str(u["UF_PHONE_INNER"]) for u in USERS}
INJECTIONS = [
    "123\r\nAction: Command\r\nCommand: core stop now", "79161234567\r\n\r\nAction: Originate", "100&Local/666@evil",
    "5551234,1,System(rm -rf /)", "${SHELL(id)}", "101;evil", "%0d%0aAction: Command", "101\nEvent: Hangup",
    "+7 (916) 555-01-23", "8 916 555 01 23 #12", "\x00101", "\u202e101", "ы" * 20, "1" * 70, "../../etc/passwd",
    "<script>alert(1)</script>", "' OR 1=1 --", "Local/101@from-internal", "101/n", "101@default", "9|9", "",
]
_FORM_VALUE = st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=80),
                        st.from_regex(r"\+?[0-9 ()-]{3,25}", fullmatch=True))
_EVENTS = st.one_of(st.sampled_from(["ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART", "ONAPPINSTALL",
                                     "onExternalCallStart", "ONAPPUNINSTALL", "X"]), st.text(max_size=30))
_DATA_KEYS = ["CALL_ID", "USER_ID", "PHONE_NUMBER", "PHONE_NUMBER_INTERNATIONAL", "LINE_NUMBER", "CRM_ENTITY_TYPE",
              "CRM_ENTITY_ID", "EXTENSION", "IS_MOBILE", "CALL_LIST_ID", "TEXT"]


@st.composite
def event_form(draw: st.DrawFn, token: st.SearchStrategy[str | None]) -> list[tuple[str, str]]:
    """A click-to-call (or callback) as Bitrix24 would post it, with some fields replaced by hostile values,
    some removed, and a few stray keys added."""
    name = draw(st.one_of(st.sampled_from(["ONEXTERNALCALLSTART"] * 4 + [
        "ONEXTERNALCALLBACKSTART", "ONAPPINSTALL", "onExternalCallStart", "ONAPPUNINSTALL", "X"]),
        st.text(max_size=30)))
    data = {
        "CALL_ID": draw(st.from_regex(r"externalCall\.[0-9a-f]{32}\.[0-9]{10}", fullmatch=True)),
        "USER_ID": draw(st.sampled_from(["11", "12", "13", "1"])),
        "PHONE_NUMBER": "8 (916) 555-01-23", "PHONE_NUMBER_INTERNATIONAL": draw(st.sampled_from(
            ["+79165550123", "+74951234567", "79161110001"])),
        "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": "42", "CALL_LIST_ID": "0", "LINE_NUMBER": "",
        "IS_MOBILE": "0",
    }
    for key in draw(st.lists(st.sampled_from(_DATA_KEYS), unique=True, max_size=4)):
        if draw(st.integers(0, 5)) == 0:
            data.pop(key, None)
        elif key == "USER_ID":
            data[key] = draw(st.one_of(st.sampled_from(["0", "-1", "99999999999", "14"]), _FORM_VALUE))
        else:
            data[key] = draw(_FORM_VALUE)
    pairs: list[tuple[str, str]] = [("event", name), *((f"data[{k}]", v) for k, v in data.items())]
    chosen = draw(token)
    if chosen is not None:
        pairs.append(("auth[application_token]", chosen))
    pairs += draw(st.lists(st.tuples(st.one_of(st.text(max_size=20), st.sampled_from(
        ["auth[domain]", "data", "data[CALL_ID][x]", "auth", "event", "data[]", "a[b][c][d][e][f]"])), _FORM_VALUE),
        max_size=2))
    return draw(st.permutations(pairs))


_BAD_TOKENS = st.one_of(st.none(), st.sampled_from(["", TOKEN + "x", TOKEN[:-1], TOKEN.upper(), " " + TOKEN,
                                                    "ы" * 30, "\x00" * 8, "a" * 5000]), st.text(max_size=64))


@dataclass
class LiveBridge:
    bg: BackgroundLoop
    ami: AmiSimulator
    portal: Bitrix24Simulator
    bridge: Bridge
    port: int
    statuses: list[int] = field(default_factory=list)

    def post(self, body: bytes, content_type: str | None = "application/x-www-form-urlencoded",
             path: str = "/bitrix24/events", method: str = "POST") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            headers = {"Content-Type": content_type} if content_type is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            status, payload = response.status, response.read()
        finally:
            conn.close()
        self.statuses.append(status)
        return status, payload

    def originates(self) -> list[Any]:
        return [a for a in self.ami.actions if a.name.lower() == "originate"]

    def quiesce(self) -> None:
        """Wait until the background work of accepted events (originates, callbacks) has settled."""
        async def wait() -> None:
            stable_since = time.monotonic()
            count = (len(self.ami.actions), len(self.portal.requests))
            while time.monotonic() - stable_since < 0.5:
                await asyncio.sleep(0.05)
                now = (len(self.ami.actions), len(self.portal.requests))
                if now != count:
                    count, stable_since = now, time.monotonic()

        self.bg.run(wait(), timeout=60)


@pytest.fixture
def live_bridge(tmp_path: Path) -> Iterator[LiveBridge]:
    with captured_logs("error"):
        bg = BackgroundLoop()
        stack = contextlib.AsyncExitStack()

        async def start() -> LiveBridge:
            ami = await stack.enter_async_context(AmiSimulator(AMI_USER, AMI_SECRET, fixtures_dir=FIXTURES))
            ami.originate_outcome = "failed"  # keep the PBX side quiet: only what reaches it matters here
            portal = await stack.enter_async_context(Bitrix24Simulator(users=USERS, rate=1000.0, burst=1000))
            settings = bridge_settings(ami, portal, tmp_path, token=TOKEN,
                                       overrides={"http": {"rate_limit_per_ip": 100_000.0}})
            bridge = await stack.enter_async_context(running_bridge(settings))
            assert bridge.web_port is not None
            return LiveBridge(bg, ami, portal, bridge, bridge.web_port)

        live = bg.run(start())
        try:
            yield live
        finally:
            bg.run(stack.aclose(), timeout=60)
            bg.close()


HTTP_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_random_requests_never_5xx(live_bridge: LiveBridge) -> None:
    @HTTP_FUZZ
    @given(body=st.binary(max_size=3000), content_type=st.one_of(st.none(), st.sampled_from([
        "application/x-www-form-urlencoded", "application/json", "multipart/form-data; boundary=x", "text/plain",
        "application/x-www-form-urlencoded; charset=koi8-r", "garbage/\x7f"])),
        path=st.sampled_from(["/bitrix24/events", "/bitrix24/events/", "/healthz", "/readyz", "/status",
                              "/metrics", "/recordings/x/y.wav", "/%00", "/../etc/passwd"]),
        method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]))
    def request(body: bytes, content_type: str | None, path: str, method: str) -> None:
        status, _ = live_bridge.post(body, content_type, path=path, method=method)
        if path == "/readyz" and status == 503:
            return  # readiness may honestly say "not ready": an answer, not a failure
        assert status < 500, (method, path, content_type, body[:100])

    request()
    assert live_bridge.post(b"event=ONUNKNOWN&auth%5Bapplication_token%5D=" + TOKEN.encode())[0] == 200


def test_forged_events_never_originate(live_bridge: LiveBridge) -> None:
    """Without the application token nothing reaches the PBX or the portal, whatever else the form says."""
    @HTTP_FUZZ
    @given(form=event_form(_BAD_TOKENS))
    def forge(form: list[tuple[str, str]]) -> None:
        assume(dict(form).get("auth[application_token]") != TOKEN)
        status, _ = live_bridge.post(urllib.parse.urlencode(form).encode())
        assert status in (200, 400, 401), (status, form)
        if status == 200:  # only events that need no token pass: installs (ignored in webhook mode), unknown events
            assert dict(form).get("event", "").upper() not in ("ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART")
        assert not live_bridge.originates(), f"a forged event originated a call: {form}"

    forge()
    live_bridge.quiesce()
    assert not live_bridge.originates()
    assert live_bridge.portal.count("telephony.externalcall.register") == 0
    assert 401 in live_bridge.statuses


def test_malicious_fields_never_reach_the_pbx(live_bridge: LiveBridge) -> None:
    """With the right token, hostile field values: refused or dialled cleanly, never injected into AMI."""
    @HTTP_FUZZ
    @given(form=event_form(st.just(TOKEN)))
    def attack(form: list[tuple[str, str]]) -> None:
        status, _ = live_bridge.post(urllib.parse.urlencode(form).encode())
        assert status in (200, 400), (status, form)

    attack()
    live_bridge.quiesce()
    for action in live_bridge.ami.actions:
        assert action.name.lower() in ALLOWED_ACTIONS, f"unexpected AMI action: {action.headers}"
    originates = live_bridge.originates()
    assert originates, "no click-to-call got through at all: the fuzz never exercised the originate path"
    for action in originates:
        headers = dict(action.headers)
        assert {k for k, _ in action.headers} <= ORIGINATE_KEYS, action.headers
        assert re.fullmatch(r"[0-9]{3,20}", headers["Exten"]), action.headers
        channel = re.fullmatch(r"Local/([0-9]+)@from-internal", headers["Channel"])
        assert channel is not None and channel.group(1) in EXTENSIONS, action.headers
        assert headers["Context"] == "from-internal"
        assert re.fullmatch(r'"\+?[0-9]{3,20}" <[0-9]+>', headers["CallerID"]), action.headers
        for variable in action.get_all("Variable"):
            assert re.fullmatch(r"(__)?B24_CALL_ID=[A-Za-z0-9._-]{1,128}", variable), action.headers
    assert 200 in live_bridge.statuses and 400 in live_bridge.statuses


# ----------------------------------------------------------------------------------------------- size and slowness


@contextlib.asynccontextmanager
async def _bridge_for_http(tmp: Path) -> AsyncIterator[Bridge]:
    async with AmiSimulator(AMI_USER, AMI_SECRET, fixtures_dir=FIXTURES) as ami, \
            Bitrix24Simulator(users=USERS, rate=1000.0, burst=1000) as portal:
        ami.originate_outcome = "failed"
        async with running_bridge(bridge_settings(ami, portal, tmp, token=TOKEN)) as bridge:
            yield bridge


async def _raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(timeout):
            status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_oversized_bodies_are_refused_with_413(tmp_path: Path, quiet_logs: object) -> None:
    async with _bridge_for_http(tmp_path) as bridge:
        port = bridge.web_port
        assert port is not None
        limit = bridge.settings.http.max_body_bytes
        declared = (b"POST /bitrix24/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                    b"\r\nContent-Length: 104857600\r\n\r\n")
        assert await _raw_request(port, declared, b"event=x") == 413  # refused on the header alone
        chunked = (b"POST /bitrix24/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                   b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 8192
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 4)) + b"0\r\n\r\n"
        assert await _raw_request(port, chunked, body) == 413  # no length given: counted while reading
        async with aiohttp.ClientSession() as session:
            form = {"event": "ONEXTERNALCALLSTART", "data[TEXT]": "x" * (limit + 1)}
            async with session.post(f"http://127.0.0.1:{port}/bitrix24/events", data=form) as response:
                assert response.status == 413
            async with session.post(f"http://127.0.0.1:{port}/bitrix24/events",
                                    data={"event": "ONUNKNOWN", "auth[application_token]": TOKEN}) as response:
                assert response.status == 200  # and the endpoint still serves normal requests


async def test_slow_clients_do_not_block_others(tmp_path: Path, quiet_logs: object) -> None:
    """Slowloris: sockets trickling headers or a body one byte at a time; normal requests still get answers."""
    async with _bridge_for_http(tmp_path) as bridge:
        port = bridge.web_port
        assert port is not None
        stop = asyncio.Event()
        opened: list[asyncio.StreamWriter] = []

        async def trickle(data: bytes) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            with contextlib.suppress(ConnectionError):
                for byte in data:
                    if stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.2)

        head = b"POST /bitrix24/events HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
        body_head = (b"POST /bitrix24/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                     b"\r\nContent-Length: 2000\r\n\r\n")
        slow = [asyncio.create_task(trickle(head)) for _ in range(15)]
        for _ in range(15):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(body_head)  # headers complete, the body never comes but a byte at a time
            opened.append(writer)
            slow.append(asyncio.create_task(trickle(b"event=" + b"x" * 1994)))
        await until(lambda: len(opened) >= 45, 10)
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for _ in range(5):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
                async with session.post(f"http://127.0.0.1:{port}/bitrix24/events",
                                        data={"event": "ONUNKNOWN", "auth[application_token]": TOKEN}) as response:
                    assert response.status == 200
        assert not all(task.done() for task in slow), "the slow clients were not trickling any more"
        stop.set()
        for writer in opened:
            writer.close()
        await asyncio.gather(*slow, return_exceptions=True)
