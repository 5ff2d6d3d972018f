"""XMPP pubsub stanzas -> Finesse `Update`s (pure).

Finesse publishes through Openfire's XEP-0060 service: a `<message>` carries
`<event xmlns=".../pubsub#event"><items node="/finesse/api/User/{id}/Dialogs"><item><notification
xmlns=".../pubsub">` whose text is the `<Update>` document, XML-escaped. We also accept the Update as a child
element (some relays unescape it). Only Dialogs nodes matter to the adapter; other nodes are reported as ignored.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import structlog

from bridge.pbx.cisco.dialog import Update, parse_update
from bridge.pbx.cisco.errors import XmlRefusedError
from bridge.pbx.cisco.xml import local_name

__all__ = ["NS_PUBSUB", "NS_PUBSUB_EVENT", "Notification", "dialogs_node", "extract_notifications", "node_user"]

log = structlog.get_logger(__name__)

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
_DIALOGS_NODE = re.compile(r"^/finesse/api/User/([^/]{1,64})/Dialogs$")


@dataclass(frozen=True, slots=True)
class Notification:
    node: str
    user_id: str
    update: Update


def dialogs_node(user_id: str) -> str:
    return f"/finesse/api/User/{user_id}/Dialogs"


def node_user(node: str) -> str | None:
    """The user id of a `/finesse/api/User/{id}/Dialogs` node, else None."""
    match = _DIALOGS_NODE.match(node)
    return match.group(1) if match else None


def _payload(notification: ET.Element) -> ET.Element | str | None:
    for child in notification:
        if local_name(child.tag).lower() == "update":
            return child
    text = (notification.text or "").strip()
    return text or None


def extract_notifications(stanza: ET.Element) -> list[Notification]:
    """Every Dialogs-node Update in one `<message>`; malformed payloads are logged and skipped."""
    if local_name(stanza.tag) != "message":
        return []
    out: list[Notification] = []
    for event in stanza.iter(f"{{{NS_PUBSUB_EVENT}}}event"):
        for items in event.iter(f"{{{NS_PUBSUB_EVENT}}}items"):
            node = items.get("node", "")
            user_id = node_user(node)
            if user_id is None:
                log.debug("finesse_node_ignored", node=node[:120])
                continue
            for notification in items.iter(f"{{{NS_PUBSUB}}}notification"):
                payload = _payload(notification)
                if payload is None:
                    continue
                try:
                    update = parse_update(payload)
                except XmlRefusedError as exc:
                    log.warning("finesse_notification_skipped", node=node[:120], reason=str(exc))
                    continue
                out.append(Notification(node=node, user_id=user_id, update=update))
    return out
