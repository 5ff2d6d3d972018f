"""MQTT topic names of the bridge, in one place; pure.

    {prefix}/{pbx}/calls/{call_id}/{kind}     CallEvents (QoS 1, not retained); `ended` carries the full call record
    {prefix}/{site}/commands/originate        click-to-call commands for the bridge of `site` (QoS 1)
    {prefix}/{site}/commands/ack              receipts the bridge of another site sends back to `site` (QoS 1)
    {prefix}/{pbx}/status                     retained {"online": true|false}; the broker's will sets false

A call id is one topic level, so the characters MQTT gives a meaning (`/` level separator, `+` and `#` wildcards),
NUL, control characters and `%` itself are percent-encoded as `%XX` of their UTF-8 bytes (`a/b#1` becomes
`a%2Fb%231`); `decode_level` reverses it. Every other character, including non-ASCII letters, is kept as it is.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["ack_topic", "command_topic", "decode_level", "encode_level", "event_topic", "status_topic"]

_SPECIAL = frozenset("%/+#")


def encode_level(value: str) -> str:
    """`value` made safe as one topic level (reversible with `decode_level`)."""
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if ch in _SPECIAL or code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


def decode_level(level: str) -> str:
    return unquote(level, errors="surrogatepass")


def event_topic(prefix: str, pbx_id: str, call_id: str, kind: str) -> str:
    return f"{prefix}/{pbx_id}/calls/{encode_level(call_id)}/{kind}"


def command_topic(prefix: str, site: str) -> str:
    return f"{prefix}/{site}/commands/originate"


def ack_topic(prefix: str, site: str) -> str:
    return f"{prefix}/{site}/commands/ack"


def status_topic(prefix: str, pbx_id: str) -> str:
    return f"{prefix}/{pbx_id}/status"
