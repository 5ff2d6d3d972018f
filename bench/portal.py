"""Reading the Bitrix24 simulator's records: when each call's card reached the portal, which calls finished."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from bridge.sim.bitrix24 import Bitrix24Simulator

__all__ = ["card_times", "executed", "finish_times", "finished_phones", "phone_key"]

_REGISTER = "telephony.externalcall.register"
_SHOW = "telephony.externalcall.show"
_FINISH = "telephony.externalcall.finish"
_FALSE = frozenset({"0", "", "n", "no", "false", "off"})


def phone_key(number: Any) -> str:
    """Last ten digits: `+7916...`, `7916...` and `8916...` are the same customer."""
    return re.sub(r"\D", "", str(number or ""))[-10:]


def executed(portal: Bitrix24Simulator) -> Iterator[tuple[float, str, Mapping[str, Any], bool]]:
    """Every method the portal executed, single requests and batch commands alike: (time, method, params, ok)."""
    for request in portal.requests:
        if request.method not in ("batch", "upload", "oauth.token"):
            yield request.t, request.method, request.params, request.http_status == 200 and request.error is None
    for command in portal.commands:
        yield command.t, command.method, command.params, command.error is None


def card_times(portal: Bitrix24Simulator) -> dict[str, float]:
    """Customer number (`phone_key`) -> when the first card of that call was shown: a register with SHOW on, or a
    show for its CALL_ID; the simulator stamps each command when it executes it (after its round-trip delay)."""
    phone_of_call = {call_id: phone_key(call.phone_number) for call_id, call in portal.calls.items()}
    first: dict[str, float] = {}
    for at, method, params, ok in executed(portal):
        if not ok:
            continue
        if method == _REGISTER and str(params.get("SHOW", 1)).strip().lower() not in _FALSE:
            key = phone_key(params.get("PHONE_NUMBER"))
        elif method == _SHOW:
            key = phone_of_call.get(str(params.get("CALL_ID", "")), "")
        else:
            continue
        if key and (key not in first or at < first[key]):
            first[key] = at
    return first


def finished_phones(portal: Bitrix24Simulator) -> set[str]:
    """Customer numbers of the calls the portal has finished."""
    return {phone_key(call.phone_number) for call in portal.calls.values() if not call.live}


def finish_times(portal: Bitrix24Simulator) -> dict[str, float]:
    """Customer number -> when the portal executed the call's (first successful) finish."""
    phone_of_call = {call_id: phone_key(call.phone_number) for call_id, call in portal.calls.items()}
    out: dict[str, float] = {}
    for at, method, params, ok in executed(portal):
        if ok and method == _FINISH:
            key = phone_of_call.get(str(params.get("CALL_ID", "")), "")
            if key and (key not in out or at < out[key]):
                out[key] = at
    return out
