"""The simulator's view of live channels, rebuilt from every event it emits (for CoreShowChannels and Status)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bridge.pbx.asterisk.protocol import AmiMessage
from bridge.sim.ami_frames import encode_frame

__all__ = ["ChannelTable", "LiveChannel"]

_BLOCK_KEYS = ("Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
               "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority", "Uniqueid", "Linkedid")


@dataclass(slots=True)
class LiveChannel:
    uniqueid: str
    block: dict[str, str]
    created: float
    bridge_id: str = ""
    application: str = ""
    app_data: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.block.get("Channel", "")


class ChannelTable:
    """Tracks Newchannel / channel-block updates / Rename / BridgeEnter-Leave / VarSet / Hangup by Uniqueid."""

    def __init__(self) -> None:
        self._channels: dict[str, LiveChannel] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, uniqueid: object) -> bool:
        return uniqueid in self._channels

    def clear(self) -> None:
        self._channels.clear()

    def live(self) -> list[LiveChannel]:
        return list(self._channels.values())

    def observe(self, message: AmiMessage) -> None:
        event = message.event
        uniqueid = message.get("Uniqueid")
        if event is None or uniqueid is None or event == "OriginateResponse":
            return
        if event == "Newchannel":
            self._channels[uniqueid] = LiveChannel(uniqueid, _block(message), time.monotonic())
            return
        chan = self._channels.get(uniqueid)
        if chan is None:
            return
        if event == "Hangup":
            del self._channels[uniqueid]
            return
        if event == "Rename":
            chan.block["Channel"] = message.get("Newname") or chan.name
            return
        chan.block.update(_block(message))
        if event == "BridgeEnter":
            chan.bridge_id = message.get("BridgeUniqueid") or ""
        elif event == "BridgeLeave":
            chan.bridge_id = ""
        elif event == "Newexten":
            chan.application = message.get("Application") or ""
            chan.app_data = message.get("AppData") or ""
        elif event == "VarSet":
            name = (message.get("Variable") or "").lstrip("_")
            if name:
                chan.variables[name] = message.get("Value") or ""

    def core_show_channels(self, action_id: str | None) -> list[bytes]:
        """The `CoreShowChannel` items and the `CoreShowChannelsComplete` trailer (after the Success reply)."""
        aid = [("ActionID", action_id)] if action_id is not None else []
        now = time.monotonic()
        frames = []
        for chan in self._channels.values():
            frames.append(encode_frame([
                ("Event", "CoreShowChannel"), *aid, *chan.block.items(), ("BridgeId", chan.bridge_id),
                ("Application", chan.application), ("ApplicationData", chan.app_data),
                ("Duration", _hms(now - chan.created)),
            ]))
        frames.append(encode_frame([("Event", "CoreShowChannelsComplete"), *aid, ("EventList", "Complete"),
                                    ("ListItems", str(len(frames)))]))
        return frames

    def status(self, action_id: str | None, channel: str | None, variables: list[str]) -> list[bytes]:
        """`Status` items (optionally one channel, with `Variable: NAME=value` lines) and `StatusComplete`."""
        aid = [("ActionID", action_id)] if action_id is not None else []
        now = time.monotonic()
        frames = []
        for chan in self._channels.values():
            if channel and chan.name != channel:
                continue
            extra = [("Variable", f"{name}={chan.variables.get(name.lstrip('_'), '')}") for name in variables]
            frames.append(encode_frame([
                ("Event", "Status"), ("Privilege", "Call"), *chan.block.items(), *extra,
                ("Application", chan.application), ("Data", chan.app_data), ("Nativeformats", "(ulaw)"),
                ("Seconds", str(int(now - chan.created))), ("BridgeID", chan.bridge_id), *aid,
            ]))
        frames.append(encode_frame([("Event", "StatusComplete"), *aid, ("EventList", "Complete"),
                                    ("ListItems", str(len(frames))), ("Items", str(len(frames)))]))
        return frames


def _block(message: AmiMessage) -> dict[str, str]:
    return {key: value for key in _BLOCK_KEYS if (value := message.get(key)) is not None}


def _hms(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
