"""The tracker's frame filter drops only frames the tracker would ignore: every recorded trace, fed in socket-sized
chunks through a filtering parser, gives exactly the call events of an unfiltered one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.model import CallEvent
from bridge.pbx.asterisk.classify import Classifier
from bridge.pbx.asterisk.protocol import AmiParser
from bridge.pbx.asterisk.tracker import CallTracker

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ami"
NAMES = sorted(p.name.removesuffix(".ami") for p in FIXTURES.glob("*.ami"))


def _events(data: bytes, *, filtered: bool, chunk: int = 4096) -> tuple[list[CallEvent], AmiParser]:
    tracker = CallTracker(Classifier())
    parser = AmiParser(skip=tracker.frame_filter() if filtered else None)
    out: list[CallEvent] = []
    for index in range(0, len(data), chunk):
        for message in parser.feed(data[index:index + chunk]):
            out.extend(tracker.feed(message, float(index)))
    return out, parser


@pytest.mark.parametrize("name", NAMES)
def test_filter_changes_no_call_event(name: str) -> None:
    data = (FIXTURES / f"{name}.ami").read_bytes()
    plain, _ = _events(data, filtered=False)
    filtered, parser = _events(data, filtered=True)
    assert filtered == plain
    assert parser.stats.filtered_frames > 0


def test_filter_keeps_what_the_tracker_or_the_adapter_reads() -> None:
    skip = CallTracker(Classifier()).frame_filter()
    assert skip(b"Event: VarSet\r\nChannel: PJSIP/1-1\r\nVariable: SOMETHING\r\nValue: x")
    assert skip(b"Event: DeviceStateChange\r\nDevice: PJSIP/101\r\nState: INUSE")
    assert not skip(b"Event: VarSet\r\nChannel: PJSIP/1-1\r\nVariable: __FROM_DID\r\nValue: 5551000")
    assert not skip(b"Event: VarSet\r\nVariable: MIXMONITOR_FILENAME\r\nValue: /x.wav")
    assert not skip(b"Event: Newchannel\r\nChannel: PJSIP/1-1")
    assert not skip(b"Event: CoreShowChannel\r\nActionID: a-1\r\nChannel: PJSIP/1-1")
    assert not skip(b"Event: Hold\r\nChanVariable: B24_CALL_ID=x")
    assert not skip(b"Response: Success\r\nActionID: a-2")
    assert not skip(b"garbage without headers")


def test_parser_counts_skipped_frames_and_keeps_framing() -> None:
    parser = AmiParser(skip=lambda raw: raw.startswith(b"Event: Skip"))
    messages = parser.feed(b"Event: Skip\r\nA: 1\r\n\r\nEvent: Keep\r\nB: 2\r\n\r\nEvent: Sk")
    messages += parser.feed(b"ip\r\n\r\n")
    assert [m.event for m in messages] == ["Keep"]
    assert parser.stats.filtered_frames == 2
    assert parser.stats.frames == 1
