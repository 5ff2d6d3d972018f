"""Finesse Dialog objects as plain data, parsed from XML that `bridge.pbx.cisco.xml` already made safe.

A Dialog is Finesse's view of one call (its `id` is the CTI call id); its participants are the legs. Notifications
carry an `<Update>` with the event (POST = added to a user's collection, PUT = changed, DELETE = removed), the source
URI and either a Dialog, a `<dialogs>` list or `<apiErrors>`. Tag names are matched case-insensitively on the local
name because the guide's own samples mix `<Dialog>`/`<dialog>` and `<ApiError>`/`<apiError>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from bridge.pbx.cisco.errors import XmlRefusedError
from bridge.pbx.cisco.xml import local_name, parse_document

__all__ = [
    "ApiError",
    "Dialog",
    "Participant",
    "Update",
    "dialog_id_from_uri",
    "make_call_body",
    "parse_api_errors",
    "parse_dialog",
    "parse_dialogs",
    "parse_update",
]

# Field values longer than this are cut: nothing legitimate in a Dialog is that long.
_MAX_TEXT = 512


@dataclass(frozen=True, slots=True)
class Participant:
    media_address: str
    state: str
    address_type: str | None = None
    state_cause: str | None = None
    start_time: datetime | None = None
    state_change_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Dialog:
    id: str
    state: str
    from_address: str | None = None
    to_address: str | None = None
    media_type: str | None = None
    call_type: str | None = None
    dnis: str | None = None
    dialed_number: str | None = None
    call_variables: tuple[tuple[str, str], ...] = ()
    participants: tuple[Participant, ...] = ()
    secondary_id: str | None = None
    associated_dialog_id: str | None = None

    def variable(self, name: str) -> str | None:
        for key, value in self.call_variables:
            if key == name:
                return value
        return None

    @property
    def latest_change(self) -> datetime | None:
        """The newest participant time in this snapshot (the PBX's clock), if any."""
        times = [t for p in self.participants for t in (p.state_change_time, p.start_time) if t is not None]
        return max(times) if times else None


@dataclass(frozen=True, slots=True)
class ApiError:
    error_type: str | None
    error_message: str | None
    error_data: str | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """One notification payload. `dialogs` is empty for errors and for payloads that carried no Dialog."""

    event: str
    source: str | None
    request_id: str | None
    dialogs: tuple[Dialog, ...] = ()
    errors: tuple[ApiError, ...] = ()


def _children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    wanted = name.lower()
    return (child for child in element if local_name(child.tag).lower() == wanted)


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    if element is None:
        return None
    return next(_children(element, name), None)


def _text(element: ET.Element | None, name: str) -> str | None:
    child = _child(element, name)
    if child is None or child.text is None:
        return None
    value = child.text.strip()
    return value[:_MAX_TEXT] if value else None


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def dialog_id_from_uri(uri: str | None) -> str | None:
    """`/finesse/api/Dialog/12345` -> `12345`; anything else -> None."""
    if not uri:
        return None
    head, _, tail = uri.strip().rstrip("/").rpartition("/")
    return tail if head.endswith("/Dialog") and tail else None


def _participant(element: ET.Element) -> Participant | None:
    address = _text(element, "mediaAddress")
    state = _text(element, "state")
    if address is None or state is None:
        return None
    return Participant(
        media_address=address,
        state=state.upper(),
        address_type=_text(element, "mediaAddressType"),
        state_cause=_text(element, "stateCause"),
        start_time=_time(_text(element, "startTime")),
        state_change_time=_time(_text(element, "stateChangeTime")),
    )


def parse_dialog(element: ET.Element) -> Dialog | None:
    """A `<Dialog>` element -> Dialog, or None when it lacks an id or a state (nothing to track)."""
    dialog_id = _text(element, "id")
    state = _text(element, "state")
    if dialog_id is None or state is None:
        return None
    media = _child(element, "mediaProperties")
    variables: list[tuple[str, str]] = []
    container = _child(media, "callvariables")
    if container is not None:
        for var in _children(container, "CallVariable"):
            name = _text(var, "name")
            if name is not None:
                variables.append((name, _text(var, "value") or ""))
    participants = _child(element, "participants")
    parts = tuple(
        p for p in (_participant(e) for e in (_children(participants, "Participant") if participants is not None
                                              else ())) if p is not None
    )
    return Dialog(
        id=dialog_id,
        state=state.upper(),
        from_address=_text(element, "fromAddress"),
        to_address=_text(element, "toAddress"),
        media_type=_text(element, "mediaType"),
        call_type=(_text(media, "callType") or "").upper() or None,
        dnis=_text(media, "DNIS"),
        dialed_number=_text(media, "dialedNumber"),
        call_variables=tuple(variables),
        participants=parts,
        secondary_id=_text(element, "secondaryId"),
        associated_dialog_id=dialog_id_from_uri(_text(element, "associatedDialogUri")),
    )


def parse_dialogs(element: ET.Element) -> tuple[Dialog, ...]:
    """A `<Dialogs>`/`<dialogs>` collection (REST GET User/{id}/Dialogs or an Update's data)."""
    return tuple(d for d in (parse_dialog(e) for e in _children(element, "Dialog")) if d is not None)


def parse_api_errors(element: ET.Element) -> tuple[ApiError, ...]:
    """`<ApiErrors><ApiError>` (REST) or `<apiErrors><apiError>` (notifications)."""
    return tuple(
        ApiError(_text(e, "errorType"), _text(e, "errorMessage"), _text(e, "errorData"))
        for e in _children(element, "ApiError")
    )


def parse_update(payload: ET.Element | str | bytes) -> Update:
    """An `<Update>` (element, or its serialized text as Finesse sends it inside `<notification>`)."""
    root = payload if isinstance(payload, ET.Element) else parse_document(payload)
    if local_name(root.tag).lower() != "update":
        raise XmlRefusedError(f"expected an <Update> payload, got <{local_name(root.tag)[:40]}>")
    event = (_text(root, "event") or "").upper()
    data = _child(root, "data")
    dialogs: tuple[Dialog, ...] = ()
    errors: tuple[ApiError, ...] = ()
    if data is not None:
        for child in data:
            name = local_name(child.tag).lower()
            if name == "dialog":
                one = parse_dialog(child)
                dialogs += (one,) if one is not None else ()
            elif name == "dialogs":
                dialogs += parse_dialogs(child)
            elif name == "apierrors":
                errors += parse_api_errors(child)
    return Update(event=event, source=_text(root, "source"), request_id=_text(root, "requestId"),
                  dialogs=dialogs, errors=errors)


def make_call_body(from_address: str, to_address: str, variables: tuple[tuple[str, str], ...] = ()) -> str:
    """The MAKE_CALL request body; every value is escaped (callers validate the numbers before)."""
    parts = [
        "<Dialog><requestedAction>MAKE_CALL</requestedAction>",
        f"<fromAddress>{escape(from_address)}</fromAddress><toAddress>{escape(to_address)}</toAddress>",
    ]
    if variables:
        parts.append("<mediaProperties><callvariables>")
        parts.extend(f"<CallVariable><name>{escape(k)}</name><value>{escape(v)}</value></CallVariable>"
                     for k, v in variables)
        parts.append("</callvariables></mediaProperties>")
    parts.append("</Dialog>")
    return "".join(parts)
