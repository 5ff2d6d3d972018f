"""Building and reading raw AMI frames for the simulator (server side: actions in, events out)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["STATE_DESC", "SimChannel", "channel_block", "encode_frame", "parse_frame"]

# ChannelState -> ChannelStateDesc (channelstate.h / ast_state2str).
STATE_DESC = {0: "Down", 1: "Rsrvd", 2: "OffHook", 3: "Dialing", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy",
              8: "Dialing Offhook", 9: "Pre-ring"}


def encode_frame(pairs: Iterable[tuple[str, str]]) -> bytes:
    """`Key: Value` lines plus the blank line; the simulator's own values never contain CR/LF."""
    return ("".join(f"{key}: {value}\r\n" for key, value in pairs) + "\r\n").encode("utf-8")


def parse_frame(raw: bytes) -> list[tuple[str, str]]:
    """Lenient split of one frame into ordered pairs (duplicates kept); lines without ': ' are ignored."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    pairs: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key:
            pairs.append((key.strip(), value))
        elif line.endswith(":") and " " not in line:
            pairs.append((line[:-1], ""))
    return pairs


@dataclass(frozen=True, slots=True)
class SimChannel:
    """The fields of an AMI channel block, for events the simulator composes itself."""

    name: str
    uniqueid: str
    linkedid: str
    state: int = 0
    cid_num: str = "<unknown>"
    cid_name: str = "<unknown>"
    conn_num: str = "<unknown>"
    conn_name: str = "<unknown>"
    context: str = "from-internal"
    exten: str = "s"
    priority: str = "1"

    def with_(self, **changes: object) -> SimChannel:
        return replace(self, **changes)  # type: ignore[arg-type]


def channel_block(chan: SimChannel, prefix: str = "") -> list[tuple[str, str]]:
    """The channel block in Asterisk's order (`ast_manager_build_channel_state_string_prefix`)."""
    return [
        (f"{prefix}Channel", chan.name),
        (f"{prefix}ChannelState", str(chan.state)),
        (f"{prefix}ChannelStateDesc", STATE_DESC.get(chan.state, "Unknown")),
        (f"{prefix}CallerIDNum", chan.cid_num),
        (f"{prefix}CallerIDName", chan.cid_name),
        (f"{prefix}ConnectedLineNum", chan.conn_num),
        (f"{prefix}ConnectedLineName", chan.conn_name),
        (f"{prefix}Language", "en"),
        (f"{prefix}AccountCode", ""),
        (f"{prefix}Context", chan.context),
        (f"{prefix}Exten", chan.exten),
        (f"{prefix}Priority", chan.priority),
        (f"{prefix}Uniqueid", chan.uniqueid),
        (f"{prefix}Linkedid", chan.linkedid),
    ]
