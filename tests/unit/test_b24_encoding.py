"""PHP bracket encoding: what the portal's parse_str would read back, and hostile input in the decoder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.crm.bitrix24.encoding import batch_command, decode_pairs, decode_query, encode_query, flatten


def test_flatten_filter_and_lists() -> None:
    pairs = flatten({"FILTER": {"UF_PHONE_INNER": "101", "ACTIVE": True}, "select": ["ID", "NAME"]})
    assert pairs == [("FILTER[UF_PHONE_INNER]", "101"), ("FILTER[ACTIVE]", "1"), ("select[]", "ID"),
                     ("select[]", "NAME")]


def test_scalar_list_uses_empty_brackets() -> None:
    assert encode_query({"USER_ID": [5, 7]}) == "USER_ID[]=5&USER_ID[]=7"


def test_list_of_mappings_is_indexed() -> None:
    pairs = flatten({"MESSAGES": [{"SIDE": "User", "START_TIME": 0}, {"SIDE": "Client", "START_TIME": 3}]})
    assert ("MESSAGES[0][SIDE]", "User") in pairs
    assert ("MESSAGES[1][START_TIME]", "3") in pairs


def test_none_is_left_out_and_false_is_zero() -> None:
    assert flatten({"A": None, "B": False, "C": 0}) == [("B", "0"), ("C", "0")]


def test_dates_are_iso_with_offset() -> None:
    moment = datetime(2026, 3, 7, 10, 20, 30, tzinfo=timezone(timedelta(hours=3)))
    assert flatten({"CALL_START_DATE": moment}) == [("CALL_START_DATE", "2026-03-07T10:20:30+03:00")]


def test_values_are_url_encoded() -> None:
    query = encode_query({"NAME": "a&b=c d", "PHONE": "+7 (999) 1"})
    assert query == "NAME=a%26b%3Dc%20d&PHONE=%2B7%20%28999%29%201"
    assert dict(parse_qsl(query)) == {"NAME": "a&b=c d", "PHONE": "+7 (999) 1"}


def test_result_references_stay_readable() -> None:
    command = batch_command("telephony.externalcall.show", {"CALL_ID": "$result[reg][CALL_ID]", "USER_ID": [5]})
    assert command == "telephony.externalcall.show?CALL_ID=$result[reg][CALL_ID]&USER_ID[]=5"
    assert decode_query(command.split("?", 1)[1])["CALL_ID"] == "$result[reg][CALL_ID]"


def test_a_value_that_only_looks_like_a_reference_is_encoded() -> None:
    assert "%24result" in encode_query({"X": "$result[a] & more"})


def test_batch_command_without_params_and_bad_names() -> None:
    assert batch_command("event.get", None) == "event.get"
    for bad in ("", "user.get?x=1", "a b", "user.get\r\n"):
        with pytest.raises(ValueError):
            batch_command(bad, {})


def test_bytes_and_deep_nesting_are_refused() -> None:
    with pytest.raises(TypeError):
        flatten({"FILE": b"\x00\x01"})
    deep: dict[str, Any] = {"x": "1"}
    for _ in range(40):
        deep = {"n": deep}
    with pytest.raises(ValueError):
        flatten(deep)


def test_decode_nested_and_lists() -> None:
    decoded = decode_query("FILTER[UF_PHONE_INNER]=101&select[]=ID&select[]=NAME&M[0][SIDE]=User&M[1][SIDE]=Client")
    assert decoded == {"FILTER": {"UF_PHONE_INNER": "101"}, "select": ["ID", "NAME"],
                       "M": [{"SIDE": "User"}, {"SIDE": "Client"}]}


def test_decode_event_form_keys() -> None:
    form = [("event", "ONEXTERNALCALLSTART"), ("data[CALL_ID]", "externalCall.x.1"), ("auth[member_id]", "m1")]
    assert decode_pairs(form) == {"event": "ONEXTERNALCALLSTART", "data": {"CALL_ID": "externalCall.x.1"},
                                  "auth": {"member_id": "m1"}}


@pytest.mark.parametrize("query", [
    "a[=1", "[x]=1", "a[b]c=1", "a[]=1&a[b]=2", "a=1&a[b]=2", "a[b]=2&a=1", "%ZZ=%", "&&&=&", "a" + "[x]" * 500 + "=1",
    "a[]=" + "&a[]=".join("x" * 3 for _ in range(2000)), "a[99999999999999999999]=1", "\x00[\x01]=\x02",
])
def test_decode_hostile_queries_never_raise(query: str) -> None:
    result = decode_query(query)
    assert isinstance(result, dict)


def test_decode_last_value_wins_on_conflict() -> None:
    assert decode_query("a=1&a[b]=2") == {"a": {"b": "2"}}
    assert decode_query("a[b]=2&a=1") == {"a": "1"}


_keys = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_abc", min_size=1, max_size=8)
_scalars = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
_values = st.recursive(
    _scalars | st.lists(_scalars, min_size=1, max_size=4),
    lambda children: st.dictionaries(_keys, children, min_size=1, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=5))
def test_round_trip(params: dict[str, Any]) -> None:
    assert decode_query(encode_query(params)) == params


@given(st.text(max_size=300))
def test_decode_arbitrary_text(text: str) -> None:
    assert isinstance(decode_query(text), dict)
