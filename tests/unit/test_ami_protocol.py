"""AmiParser and encode_action: framing on bytes, decoding per frame, hostile input never raising."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.pbx.asterisk.protocol import AmiMessage, AmiParser, UnsafeActionError, c_unescape, encode_action

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"
TRACES = sorted(path.name.removesuffix(".ami") for path in FIXTURES.glob("*.ami"))


def _timing(name: str) -> list[dict[str, Any]]:
    with (FIXTURES / f"{name}.timing.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _feed_chunked(parser: AmiParser, data: bytes, size: int) -> list[AmiMessage]:
    out: list[AmiMessage] = []
    for start in range(0, len(data), size):
        out.extend(parser.feed(data[start:start + size]))
    return out


def _names(messages: list[AmiMessage]) -> list[str]:
    return [m.event or f"response:{m.response}" for m in messages]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("name", TRACES)
def test_every_fixture_parses_to_its_timing_count_with_any_chunking(name: str, chunk: int) -> None:
    data = (FIXTURES / f"{name}.ami").read_bytes()
    timing = _timing(name)
    parser = AmiParser()
    messages = _feed_chunked(parser, data, chunk)
    assert len(messages) == len(timing)
    expected = [row["name"] if row["kind"] == "event" else f"response:{row['name']}" for row in timing]
    assert _names(messages) == expected
    assert parser.drain_problems() == []


def test_fixture_list_is_not_empty() -> None:
    assert "inbound_answered" in TRACES
    assert "cyrillic_callerid" in TRACES


def test_utf8_character_split_across_chunks_is_kept() -> None:
    frame = "Event: Newchannel\r\nCallerIDName: Иван\r\n\r\n".encode()
    split_at = frame.index("И".encode()) + 1  # inside the two-byte character
    parser = AmiParser()
    assert parser.feed(frame[:split_at]) == []
    (message,) = parser.feed(frame[split_at:])
    assert message.get("CallerIDName") == "Иван"
    assert parser.stats.fallback_decodes == 0


def test_cp1251_frame_falls_back_and_keeps_cyrillic() -> None:
    data = (FIXTURES / "cyrillic_callerid.ami").read_bytes()
    assert "Мария Иванова".encode("cp1251") in data  # the fixture really carries CP1251 bytes
    parser = AmiParser(fallback_encoding="cp1251")
    messages = _feed_chunked(parser, data, 1000)
    names = {m.get("CallerIDName") for m in messages if m.event == "NewCallerid"}
    assert "Мария Иванова" in names
    assert parser.stats.fallback_decodes > 0
    # The UTF-8 caller of the same trace is decoded as UTF-8, not through the fallback.
    assert any(m.get("CallerIDName") == "Иван Петров" for m in messages)


def test_duplicate_keys_are_kept_in_order() -> None:
    frame = (b"Event: Newchannel\r\nChanVariable: A=1\r\nUniqueid: 1.1\r\nChanVariable: B=2\r\n"
             b"ChanVariable: A=3\r\n\r\n")
    (message,) = AmiParser().feed(frame)
    assert message.get_all("ChanVariable") == ["A=1", "B=2", "A=3"]
    assert message.variables() == {"A": "3", "B": "2"}
    assert message.get("Uniqueid") == "1.1"


def test_banner_line_is_recorded_and_does_not_hide_the_next_frame() -> None:
    parser = AmiParser()
    messages = parser.feed(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: a-1\r\n"
                           b"Message: Authentication accepted\r\n\r\n")
    assert parser.banner == "Asterisk Call Manager/11.0.0"
    assert len(messages) == 1
    assert messages[0].response == "Success"
    assert messages[0].action_id == "a-1"


def test_response_follows_block_keeps_raw_output_even_with_blank_lines() -> None:
    block = (b"Response: Follows\r\nPrivilege: Command\r\nActionID: c-1\r\n"
             b"line one\nline two\r\n\r\nafter a blank line\r\n--END COMMAND--\r\n\r\n")
    trailer = b"Event: Ping\r\n\r\n"
    parser = AmiParser(command_output=True)
    messages = _feed_chunked(parser, block + trailer, 5)
    assert [m.response or m.event for m in messages] == ["Follows", "Ping"]
    follows = messages[0]
    assert follows.action_id == "c-1"
    assert any("after a blank line" in line for line in follows.output)


def test_follows_without_end_marker_never_holds_back_later_events_by_default() -> None:
    """The bridge sends no `Command` action, so a stray `Response: Follows` frames like any other."""
    stray = b"Response: Follows\r\nPrivilege: Command\r\n\r\n"
    events = b"".join(b"Event: Newstate\r\nUniqueid: 1.%d\r\n\r\n" % n for n in range(3))
    messages = AmiParser().feed(stray + events)
    assert [m.response or m.event for m in messages] == ["Follows", "Newstate", "Newstate", "Newstate"]


def test_frame_without_event_or_response_is_skipped_and_reported() -> None:
    parser = AmiParser()
    messages = parser.feed(b"Foo: bar\r\nBaz: 1\r\n\r\nEvent: Hangup\r\nCause: 16\r\n\r\n")
    assert _names(messages) == ["Hangup"]
    assert parser.stats.skipped_frames == 1
    assert parser.drain_problems()
    assert parser.drain_problems() == []


def test_line_without_separator_is_skipped() -> None:
    parser = AmiParser()
    (message,) = parser.feed(b"Event: Newstate\r\nthis line has no separator\r\nChannelState: 5\r\n\r\n")
    assert message.get("ChannelState") == "5"
    assert parser.stats.malformed_lines == 1
    assert "this line has no separator" not in message.headers


def test_one_megabyte_frame_is_parsed() -> None:
    value = "x" * (1024 * 1024)
    frame = f"Event: Big\r\nData: {value}\r\n\r\nEvent: Next\r\n\r\n".encode()
    parser = AmiParser()
    messages = _feed_chunked(parser, frame, 4096)
    assert _names(messages) == ["Big", "Next"]
    assert messages[0].get("Data") == value


@pytest.mark.parametrize("tail", [0, 1, 2, 3, 4, 5])
def test_oversized_frame_is_skipped_and_the_next_one_still_parsed(tail: int) -> None:
    big = b"Event: Big\r\nData: " + b"x" * 5000 + b"\r\n\r\n"
    data = big + b"Event: Next\r\nA: b\r\n\r\n"
    parser = AmiParser(max_frame_bytes=1000)
    # Chunk boundaries also fall inside the skipped frame's terminator (the `tail` last bytes arrive later).
    cut = len(big) - tail
    messages = _feed_chunked(parser, data[:cut], 700) + parser.feed(data[cut:])
    assert _names(messages) == ["Next"]
    assert parser.stats.oversized_frames >= 1
    assert parser.drain_problems()


def test_c_escaped_caller_names_are_unescaped() -> None:
    (message,) = AmiParser().feed(b'Event: Newchannel\r\nCallerIDName: Jo \\"Bo\\" \\\\ x\r\nExten: \\n\r\n\r\n')
    assert message.get("CallerIDName") == 'Jo "Bo" \\ x'
    assert message.get("Exten") == "\\n"  # only caller/connected names are escaped by Asterisk
    assert c_unescape("a\\tb\\") == "a\tb\\"


def test_encode_action_writes_crlf_frames_with_duplicates() -> None:
    data = encode_action("Originate", [("ActionID", "x-1"), ("Variable", "A=1"), ("Variable", "B=2")])
    assert data == b"Action: Originate\r\nActionID: x-1\r\nVariable: A=1\r\nVariable: B=2\r\n\r\n"


@pytest.mark.parametrize(
    ("action", "headers"),
    [
        ("Originate", {"Exten": "123\r\nAction: Hangup"}),
        ("Originate", {"Exten": "123\nChannel: x"}),
        ("Originate", {"Exten": "1\x002"}),
        ("Ping\r\n", {}),
        ("Originate", {"Bad Key": "1"}),
        ("Originate", {"Bad:Key": "1"}),
        ("Originate", {"": "1"}),
    ],
)
def test_encode_action_refuses_injection(action: str, headers: dict[str, str]) -> None:
    with pytest.raises(UnsafeActionError):
        encode_action(action, headers)


# ------------------------------------------------------------------------------------------- property tests

def _real_frames() -> list[bytes]:
    frames: list[bytes] = []
    for name in ("inbound_answered", "cyrillic_callerid", "inbound_queue"):
        data = (FIXTURES / f"{name}.ami").read_bytes()
        frames += [data[int(r["off"]):int(r["off"]) + int(r["len"])] for r in _timing(name)]
    return frames


REAL_FRAMES = _real_frames()
VALID = b"Event: Sentinel\r\nUniqueid: 42.1\r\n\r\n"


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes_never_raise_and_later_frames_survive(garbage: bytes, cuts: list[int]) -> None:
    # A blank line after the garbage closes whatever frame it started (unless it opened a Follows block).
    if b"Response: Follows" in garbage:
        garbage = garbage.replace(b"Response: Follows", b"")
    stream = garbage + b"\r\n\r\n" + VALID
    parser = AmiParser(max_frame_bytes=4096)
    messages: list[AmiMessage] = []
    for piece in _chunks(stream, cuts):
        messages.extend(parser.feed(piece))
    parser.drain_problems()
    assert messages[-1].event == "Sentinel"
    assert messages[-1].get("Uniqueid") == "42.1"


@settings(max_examples=100, deadline=None)
@given(picks=st.lists(st.integers(min_value=0, max_value=len(REAL_FRAMES) - 1), min_size=1, max_size=30),
       cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_real_frames_parse_the_same_whatever_the_chunking(picks: list[int], cuts: list[int]) -> None:
    stream = b"".join(REAL_FRAMES[i] for i in picks)
    whole = AmiParser().feed(stream)
    parser = AmiParser()
    chunked: list[AmiMessage] = []
    for piece in _chunks(stream, cuts):
        chunked.extend(parser.feed(piece))
    assert [m.headers for m in chunked] == [m.headers for m in whole]
    assert len(whole) == len(picks)


@settings(max_examples=100, deadline=None)
@given(picks=st.lists(st.integers(min_value=0, max_value=len(REAL_FRAMES) - 1), min_size=1, max_size=10),
       cut=st.integers(min_value=0), chunk=st.integers(min_value=1, max_value=500))
def test_truncated_stream_then_valid_frames_recovers(picks: list[int], cut: int, chunk: int) -> None:
    stream = b"".join(REAL_FRAMES[i] for i in picks)
    truncated = stream[: cut % (len(stream) + 1)]
    parser = AmiParser()
    messages = _feed_chunked(parser, truncated, chunk)
    assert len(messages) <= len(picks)
    messages += parser.feed(b"\r\n\r\n" + VALID)
    assert messages[-1].event == "Sentinel"


@settings(max_examples=50, deadline=None)
@given(size=st.integers(min_value=0, max_value=300_000), key_size=st.integers(min_value=1, max_value=5000),
       chunk=st.sampled_from([1024, 4096, 65536]))
def test_huge_headers_are_bounded_and_never_raise(size: int, key_size: int, chunk: int) -> None:
    frame = b"Event: Huge\r\n" + b"K" * key_size + b": " + b"v" * size + b"\r\n\r\n"
    parser = AmiParser(max_frame_bytes=100_000)
    messages = _feed_chunked(parser, frame + VALID, chunk)
    assert messages[-1].event == "Sentinel"
    if len(frame) > 100_000 + chunk:
        assert all(m.event != "Huge" for m in messages)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200), encoding=st.sampled_from(["utf-8", "cp1251", "latin-1", "utf-16", "koi8-r"]))
def test_wrong_encodings_never_raise(text: str, encoding: str) -> None:
    value = text.replace("\r", " ").replace("\n", " ").encode(encoding, errors="replace")
    frame = b"Event: Newchannel\r\nCallerIDName: " + value + b"\r\n\r\n"
    parser = AmiParser(fallback_encoding="cp1251")
    messages = parser.feed(frame + VALID)
    assert messages[-1].event == "Sentinel"
    assert isinstance(messages[0].get("CallerIDName", ""), str)
