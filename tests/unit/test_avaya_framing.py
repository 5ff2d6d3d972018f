"""DMCC 8-byte header framing: exact bytes, partial reads, several frames per read, garbage, hostile headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pbx.avaya.framing import EVENT_INVOKE_ID, Frame, FrameDecoder, FrameError, encode_frame

XML = b'<?xml version="1.0" encoding="UTF-8"?><MonitorStartResponse><monitorCrossRefID>7</monitorCrossRefID>' \
      b'</MonitorStartResponse>'


def test_encode_writes_version_total_length_and_ascii_invoke_id() -> None:
    wire = encode_frame(12, b"<a/>")
    assert wire[:2] == b"\x00\x00"
    assert int.from_bytes(wire[2:4], "big") == 8 + 4
    assert wire[4:8] == b"0012"
    assert wire[8:] == b"<a/>"


def test_encode_refuses_what_the_header_cannot_carry() -> None:
    with pytest.raises(FrameError):
        encode_frame(10000, b"<a/>")
    with pytest.raises(FrameError):
        encode_frame(-1, b"<a/>")
    with pytest.raises(FrameError):
        encode_frame(1, b"<" + b"x" * 0xFFFF)


def test_decoder_returns_frames_split_over_reads_and_packed_in_one_read() -> None:
    wire = encode_frame(1, XML) + encode_frame(EVENT_INVOKE_ID, b"<DeliveredEvent/>") + encode_frame(2, b"<x/>")
    dec = FrameDecoder()
    assert dec.feed(wire[:5]) == []
    assert dec.feed(wire[5:30]) == []
    frames = dec.feed(wire[30:])
    assert frames == [Frame(1, XML), Frame(9999, b"<DeliveredEvent/>"), Frame(2, b"<x/>")]
    assert dec.buffered == 0
    assert dec.drain_problems() == []


def test_bad_version_and_non_digit_invoke_id_are_skipped_and_the_stream_resynchronises() -> None:
    bad_version = b"\x00\x01\x00\x0c0001<a/>"
    bad_invoke = b"\x00\x00\x00\x0c00x1<a/>"
    dec = FrameDecoder()
    assert dec.feed(bad_version + encode_frame(2, b"<ok/>")) == [Frame(2, b"<ok/>")]
    assert any("bad version" in p for p in dec.drain_problems())
    assert dec.feed(bad_invoke + encode_frame(3, b"<ok/>")) == [Frame(3, b"<ok/>")]
    assert any("bad invoke id" in p for p in dec.drain_problems())
    assert dec.stats.discarded_bytes == len(bad_version) + len(bad_invoke)
    # Both in one read: the scan skips every implausible header up to the good frame.
    assert dec.feed(bad_version + bad_invoke + encode_frame(4, b"<ok/>")) == [Frame(4, b"<ok/>")]


def test_length_beyond_the_limit_is_refused_without_waiting_for_the_body() -> None:
    dec = FrameDecoder(max_frame_len=1024)
    huge = b"\x00\x00\xff\xf00001<"  # claims 65520 bytes
    frames = dec.feed(huge + encode_frame(4, b"<ok/>"))
    assert frames == [Frame(4, b"<ok/>")]
    assert any("exceeds limit" in p for p in dec.drain_problems())


def test_header_whose_body_is_not_xml_is_not_trusted() -> None:
    fake = b"\x00\x00\x01\x000001garbage-not-xml"
    dec = FrameDecoder()
    assert dec.feed(fake + encode_frame(5, b"<ok/>")) == [Frame(5, b"<ok/>")]


def test_length_too_small_for_a_body_is_refused() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x080001" + encode_frame(6, b"<ok/>")) == [Frame(6, b"<ok/>")]
    assert any("no body" in p for p in dec.drain_problems())


def test_garbage_exceeded_asks_for_a_link_reset() -> None:
    dec = FrameDecoder(max_garbage_bytes=100)
    seen = []
    for chunk in (b"x" * 50, b"y" * 80, encode_frame(1, b"<ok/>")):
        dec.feed(chunk)
        seen.append(dec.garbage_exceeded)
    assert seen == [False, True, False]  # a good frame resets the count


def test_decoder_waits_on_a_trailing_nul_that_may_start_a_header() -> None:
    dec = FrameDecoder()
    wire = encode_frame(7, b"<ok/>")
    assert dec.feed(b"junk" + wire[:1]) == []
    assert dec.feed(wire[1:]) == [Frame(7, b"<ok/>")]


# ---- properties ----------------------------------------------------------------------------------------------------

_xml_body = st.binary(min_size=0, max_size=300).map(lambda b: b"<" + b.replace(b"\x00", b"."))
_frames = st.lists(st.tuples(st.integers(0, 9999), _xml_body), min_size=1, max_size=12)
_garbage = st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\x00", b"!"))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(frames=_frames, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_chunking_yields_exactly_the_frames_sent(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(i, p) for i, p in frames)
    dec = FrameDecoder()
    got: list[Frame] = []
    for chunk in _chunks(wire, cuts):
        got += dec.feed(chunk)
    assert got == [Frame(i, p) for i, p in frames]
    assert dec.stats.resyncs == 0


@given(frames=_frames, garbage=st.lists(_garbage, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 10_000),
                                                                                            max_size=20))
def test_garbage_between_frames_is_skipped_and_every_frame_recovered(
        frames: list[tuple[int, bytes]], garbage: list[bytes], cuts: list[int]) -> None:
    parts = []
    for n, (i, p) in enumerate(frames):
        parts.append(garbage[n % len(garbage)])
        parts.append(encode_frame(i, p))
    wire = b"".join(parts)
    dec = FrameDecoder()
    got: list[Frame] = []
    for chunk in _chunks(wire, cuts):
        got += dec.feed(chunk)
    assert got == [Frame(i, p) for i, p in frames]
    assert dec.stats.discarded_bytes == sum(len(parts[k]) for k in range(0, len(parts), 2))


@settings(max_examples=300)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_arbitrary_bytes_never_raise_and_the_buffer_stays_bounded(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_frame_len=512)
    for chunk in _chunks(data, cuts):
        for frame in dec.feed(chunk):
            assert 0 <= frame.invoke_id <= 9999
            assert len(frame.payload) <= 512 - 8
        assert dec.buffered < 512 + len(chunk)
