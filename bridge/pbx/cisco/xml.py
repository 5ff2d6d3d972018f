"""Safe XML for Finesse: one-shot documents (REST bodies, notification payloads) and the XMPP stream.

Both sit on expat and refuse anything beyond plain elements and text: a DOCTYPE (so no entity declarations, no
billion laughs, no external entities), undefined entity references, oversized input, absurd nesting. Elements come
out as `xml.etree.ElementTree.Element` with `{namespace}local` tags. No I/O here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, TypeAlias
from xml.parsers import expat

from bridge.pbx.cisco.errors import XmlRefusedError

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "StreamClosed",
    "StreamItem",
    "StreamOpened",
    "XmlStreamReader",
    "local_name",
    "parse_document",
]

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 48


def local_name(tag: str) -> str:
    """`{ns}Dialog` -> `Dialog`."""
    return tag.rsplit("}", 1)[-1]


def _qualified(name: str) -> str:
    # expat with namespace_separator=" " reports "uri local" for namespaced names.
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def _refuse_doctype(*_args: Any) -> None:
    raise XmlRefusedError("XML with a DOCTYPE is refused (no DTDs or entity declarations)")


def _refuse_entity(*_args: Any) -> None:
    raise XmlRefusedError("XML entity declarations or external entities are refused")


def _refuse_external(*_args: Any) -> int:
    raise XmlRefusedError("XML external entity references are refused")


def _new_parser() -> expat.XMLParserType:
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.UnparsedEntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_external
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    return parser


class _Builder:
    """Builds elements from expat callbacks; `depth_base` elements above it are reported, not built."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.tree: ET.TreeBuilder | None = None
        self.done: list[ET.Element] = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise XmlRefusedError(f"XML nested deeper than {self.max_depth} levels is refused")
        if self.tree is None:
            self.tree = ET.TreeBuilder()
        self.tree.start(_qualified(name), {_qualified(k): v for k, v in attrs.items()})

    def end(self, name: str) -> None:
        self.depth -= 1
        assert self.tree is not None
        self.tree.end(_qualified(name))
        if self.depth == 0:
            self.done.append(self.tree.close())
            self.tree = None

    def data(self, text: str) -> None:
        if self.tree is not None:
            self.tree.data(text)


def parse_document(data: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> ET.Element:
    """Parse one complete XML document; raise `XmlRefusedError` for anything hostile, truncated or too big."""
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise XmlRefusedError(f"XML document of {size} bytes exceeds the {max_bytes}-byte limit")
    parser = _new_parser()
    builder = _Builder(MAX_DEPTH)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlRefusedError(f"malformed or truncated XML: {expat.ErrorString(exc.code)}") from None
    if len(builder.done) != 1:
        raise XmlRefusedError("XML document has no root element")
    return builder.done[0]


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer's `<stream:stream ...>` header (XMPP); `attrs` use `{ns}local` keys for namespaced attributes."""

    attrs: dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer sent `</stream:stream>`."""


StreamItem: TypeAlias = StreamOpened | StreamClosed | ET.Element


class _StreamBuilder:
    """Depth 1 is the stream root; every depth-2 subtree is one stanza."""

    def __init__(self, max_depth: int) -> None:
        self.inner = _Builder(max_depth)
        self.depth = 0
        self.items: list[StreamItem] = []
        # Byte offset of the last boundary (stream opened, stanza finished): what is buffered past it is bounded.
        self.mark = 0
        self.parser: expat.XMLParserType | None = None

    def _set_mark(self) -> None:
        if self.parser is not None:
            self.mark = max(self.mark, self.parser.CurrentByteIndex)

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth == 1:
            self._set_mark()
            self.items.append(StreamOpened({_qualified(k): v for k, v in attrs.items()}))
            return
        self.inner.start(name, attrs)

    def end(self, name: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.items.append(StreamClosed())
            return
        self.inner.end(name)
        if self.depth == 1:
            self._set_mark()
            self.items.extend(self.inner.done)
            self.inner.done.clear()

    def data(self, text: str) -> None:
        if self.depth >= 2:
            self.inner.data(text)


class XmlStreamReader:
    """Incremental reader for an XMPP stream: feed bytes as they arrive (any split), get whole stanzas back.

    Call `reset()` when the protocol restarts the stream (after STARTTLS and after SASL success).
    """

    def __init__(self, *, max_stanza_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self.max_depth = max_depth
        self._fed = 0
        self._failed = False
        self._parser, self._builder = self._make()

    def _make(self) -> tuple[expat.XMLParserType, _StreamBuilder]:
        parser = _new_parser()
        builder = _StreamBuilder(self.max_depth + 1)
        builder.parser = parser
        parser.StartElementHandler = builder.start
        parser.EndElementHandler = builder.end
        parser.CharacterDataHandler = builder.data
        return parser, builder

    def reset(self) -> None:
        self._fed = 0
        self._failed = False
        self._parser, self._builder = self._make()

    def feed(self, data: bytes) -> list[StreamItem]:
        """Return the items completed by `data`; raise `XmlRefusedError` (and stay failed) on bad input."""
        if self._failed:
            raise XmlRefusedError("stream already failed; reset() before feeding again")
        self._fed += len(data)
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            self._failed = True
            raise XmlRefusedError(f"malformed XML stream: {expat.ErrorString(exc.code)}") from None
        except XmlRefusedError:
            self._failed = True
            raise
        if self._fed - self._builder.mark > self.max_stanza_bytes:
            self._failed = True
            raise XmlRefusedError(f"XMPP stanza exceeds the {self.max_stanza_bytes}-byte limit")
        items, self._builder.items = self._builder.items, []
        return items
