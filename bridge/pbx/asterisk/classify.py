"""Who is who on an Asterisk channel: trunk, agent phone, Local half standing for an agent, helper, or other.

Pure functions of the channel name (and the context the channel was created in) plus `AsteriskSettings`. The
tracker asks once per channel, when it first sees it, and keeps the answer.

Name formats (Asterisk 13-22): `PJSIP/<endpoint>-<8 hex>`, `SIP/<peer>-<8 hex>`, `IAX2/<peer>-<callno>`,
`DAHDI/<chan>-<n>` or `DAHDI/i<span>/<number>-<hex>`, `Local/<exten>@<context>-<8 hex>;1|;2`. Transient suffixes such
as `<ZOMBIE>` (masquerades) are dropped before parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bridge.config import AsteriskSettings

__all__ = ["ChannelInfo", "ChannelKind", "Classifier", "is_number", "known_value"]

_SUFFIXES = ("<ZOMBIE>", "<MASQ>", "(renamed)")
_TECH = re.compile(r"(?P<tech>[A-Za-z0-9_]+)/(?P<rest>.+)")
_HEX_SUFFIX = re.compile(r"(?P<endpoint>.+)-[0-9a-fA-F]{8}")
_IAX2 = re.compile(r"(?P<endpoint>.+)-\d+")
_DAHDI = re.compile(r"(?:i\d+/)?(?P<endpoint>.+)-[0-9a-fA-F]+")
_ANY_SUFFIX = re.compile(r"(?P<endpoint>.+)-[0-9a-fA-F]+")
_LOCAL = re.compile(r"(?P<exten>[^@]+)@(?P<context>.+)-(?P<id>[0-9a-fA-F]+);(?P<half>[12])")
# `Local/101@from-queue/n` (queue Interface) or `Local/101@from-internal` (a Dial string without the unique part).
_LOCAL_INTERFACE = re.compile(r"(?P<exten>[^@/]+)@(?P<context>[^/;]+)(?:/[A-Za-z]*)?")
_DIAL_TOKEN_SPLIT = re.compile(r"[/@:;,&]")
_PHONE_TOKEN = re.compile(r"\+?[0-9]{3,20}")
_NUMBER = re.compile(r"\+?[0-9]{2,20}")
_UNKNOWN_VALUES = frozenset({"", "<unknown>", "s"})


class ChannelKind(StrEnum):
    TRUNK = "trunk"  # the external party's leg (inbound caller or dialled customer)
    DEVICE = "device"  # an agent's phone; `extension` is set
    LOCAL_AGENT = "local_agent"  # a Local half that stands for an agent (queue member, ring group, originate)
    LOCAL = "local"  # any other Local half
    OTHER = "other"  # a device that is neither a known trunk nor an agent
    HELPER = "helper"  # announcer, recorder, message...: never a party


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What a channel name says. `local_base` joins the two halves of one Local pair (`;1` and `;2`)."""

    name: str
    tech: str
    endpoint: str
    kind: ChannelKind
    extension: str | None = None
    local_context: str | None = None
    local_half: int | None = None
    local_base: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local_half is not None

    @property
    def is_agent(self) -> bool:
        return self.kind in (ChannelKind.DEVICE, ChannelKind.LOCAL_AGENT)


class Classifier:
    """Classifies channel names with the site's settings; build one per tracker (it precompiles its patterns)."""

    def __init__(self, settings: AsteriskSettings | None = None) -> None:
        s = settings if settings is not None else AsteriskSettings()
        self.settings = s
        self._trunk_contexts = frozenset(s.trunk_contexts)
        self._trunk_endpoints = tuple(re.compile(p) for p in s.trunk_endpoints)
        self._trunk_techs = frozenset(t.lower() for t in s.trunk_technologies)
        self._ignored_techs = frozenset(t.lower() for t in s.ignored_technologies)
        self._agent = re.compile(s.agent_endpoint_pattern)
        self._endpoint_map = dict(s.endpoint_extensions)
        self._local_agent_contexts = frozenset(s.local_agent_contexts)
        self._external = re.compile(s.external_number_pattern)

    def classify(self, name: str, context: str | None = None) -> ChannelInfo:
        """Classify a channel; `context` is where it was created (Newchannel), which marks trunks on FreePBX."""
        clean = _strip_suffixes(name)
        match = _TECH.fullmatch(clean)
        if match is None:
            return ChannelInfo(name=name, tech="", endpoint=clean, kind=ChannelKind.OTHER)
        tech, rest = match.group("tech"), match.group("rest")
        low = tech.lower()
        if low in self._ignored_techs:
            return ChannelInfo(name=name, tech=tech, endpoint=rest, kind=ChannelKind.HELPER)
        if low == "local":
            return self._local(name, tech, rest)
        endpoint = _endpoint(low, rest)
        if low in self._trunk_techs or self.is_trunk_endpoint(endpoint) or self.is_trunk_context(context):
            return ChannelInfo(name=name, tech=tech, endpoint=endpoint, kind=ChannelKind.TRUNK)
        extension = self.extension_of_endpoint(endpoint)
        kind = ChannelKind.DEVICE if extension is not None else ChannelKind.OTHER
        return ChannelInfo(name=name, tech=tech, endpoint=endpoint, kind=kind, extension=extension)

    def _local(self, name: str, tech: str, rest: str) -> ChannelInfo:
        local = _LOCAL.fullmatch(rest)
        if local is None:
            return ChannelInfo(name=name, tech=tech, endpoint=rest, kind=ChannelKind.LOCAL)
        exten, context = local.group("exten"), local.group("context")
        half = int(local.group("half"))
        base = name[: name.rfind(";")] if ";" in name else name
        extension = self.agent_extension(exten) if context in self._local_agent_contexts else None
        kind = ChannelKind.LOCAL_AGENT if extension is not None else ChannelKind.LOCAL
        return ChannelInfo(name=name, tech=tech, endpoint=exten, kind=kind, extension=extension,
                           local_context=context, local_half=half, local_base=base)

    def is_trunk_context(self, context: str | None) -> bool:
        return context is not None and context in self._trunk_contexts

    def is_trunk_endpoint(self, endpoint: str) -> bool:
        return any(p.fullmatch(endpoint) for p in self._trunk_endpoints)

    def extension_of_endpoint(self, endpoint: str) -> str | None:
        mapped = self._endpoint_map.get(endpoint)
        if mapped is not None:
            return mapped
        return self.agent_extension(endpoint)

    def agent_extension(self, text: str) -> str | None:
        """The extension if `text` looks like one (`agent_endpoint_pattern`, full match), else None."""
        match = self._agent.fullmatch(text)
        if match is None:
            return None
        return match.group(1) if match.re.groups else match.group(0)

    def agent_from_interface(self, interface: str | None) -> str | None:
        """The agent of a queue member `Interface` (`Local/101@from-queue/n`, `PJSIP/101`, `SIP/101`).

        A queue member is an agent by configuration, so a Local interface counts whatever its context.
        """
        if not interface:
            return None
        match = _TECH.fullmatch(_strip_suffixes(interface))
        if match is None:
            return None
        tech, rest = match.group("tech").lower(), match.group("rest")
        if tech == "local":
            local = _LOCAL_INTERFACE.fullmatch(rest)
            return self.agent_extension(local.group("exten")) if local is not None else None
        return self.extension_of_endpoint(rest.split("/", 1)[0])

    def looks_external(self, number: str | None) -> bool:
        """True for what looks like a customer's phone number (`external_number_pattern`)."""
        return number is not None and self._external.fullmatch(number) is not None

    def number_from_dial_string(self, dial_string: str | None) -> str | None:
        """The dialled number in a trunk Dial string: `7916...@provider`, `provider/sip:+7916...@host`, `g0/7916...`."""
        if not dial_string:
            return None
        for token in _DIAL_TOKEN_SPLIT.split(dial_string):
            if _PHONE_TOKEN.fullmatch(token):
                return token
        return None


def known_value(value: str | None) -> str | None:
    """An AMI number/exten field with Asterisk's placeholders (`<unknown>`, empty, exten `s`) turned into None."""
    if value is None:
        return None
    value = value.strip()
    return None if value in _UNKNOWN_VALUES else value


def is_number(value: str | None) -> bool:
    """Digits with an optional leading `+` (a DID or a dialled number, not a pattern or `s`)."""
    return value is not None and _NUMBER.fullmatch(value) is not None


def _strip_suffixes(name: str) -> str:
    name = name.strip()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _endpoint(tech: str, rest: str) -> str:
    if tech in ("pjsip", "sip"):
        pattern = _HEX_SUFFIX
    elif tech == "iax2":
        pattern = _IAX2
    elif tech == "dahdi":
        pattern = _DAHDI
    else:
        pattern = _ANY_SUFFIX
    match = pattern.fullmatch(rest)
    return match.group("endpoint") if match is not None else rest
