"""HTTP side of the bridge: the Bitrix24 event endpoint (click-to-call, callback, app install), health, metrics."""

from bridge.web.auth import EventVerifier, TokenHolder
from bridge.web.clicktocall import ClickToCall
from bridge.web.dispatch import Accepted, EventDispatcher
from bridge.web.offline import OfflineEventPoller
from bridge.web.phone import PhoneNumber, PhoneNumberError, normalize_phone, parse_phone
from bridge.web.server import WebServer, create_app

__all__ = [
    "Accepted",
    "ClickToCall",
    "EventDispatcher",
    "EventVerifier",
    "OfflineEventPoller",
    "PhoneNumber",
    "PhoneNumberError",
    "TokenHolder",
    "WebServer",
    "create_app",
    "normalize_phone",
    "parse_phone",
]
