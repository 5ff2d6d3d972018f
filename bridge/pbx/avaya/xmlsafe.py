"""A defused XML parser for DMCC documents: no DTDs, no entities, bounded depth. Pure, no I/O.

The network is hostile until checked, and DMCC never needs a DTD or entity, so any document declaring one is refused
outright (billion laughs, external entities). Namespaces are dropped: elements are found by local name, which is
how the vendor's documents are read in practice (prefixes differ between AES releases).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

MAX_DEPTH = 48


class XmlRefused(ValueError):
    """The payload is not a well-formed, plain DMCC document (truncated, hostile or garbage)."""


def _local(name: str) -> str:
    # With namespace_separator=" ", expat reports "uri local"; unprefixed names come through as they are.
    return name.rsplit(" ", 1)[-1]


def parse_xml(payload: bytes) -> ET.Element:
    """Parse one document into an Element tree with local names only; raise XmlRefused on anything suspicious."""
    head = payload[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in payload.lower():
        raise XmlRefused("DTD or entity declaration refused")
    parser = expat.ParserCreate(namespace_separator=" ")
    builder = ET.TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise XmlRefused(f"nesting deeper than {MAX_DEPTH}")
        builder.start(_local(name), {_local(k): v for k, v in attrs.items()})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    def refuse(*_args: object) -> None:
        raise XmlRefused("DTD or entity declaration refused")

    def refuse_reference(*_args: object) -> int:
        raise XmlRefused("external entity reference refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse_reference
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(payload, True)
        root = builder.close()
    except XmlRefused:
        raise
    except (expat.ExpatError, ValueError, AssertionError, IndexError) as exc:
        raise XmlRefused(f"not well-formed XML: {exc}") from None
    return root
