"""SiteRouter: which site hosts an extension, from ranges and exact entries; bad config is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.bus.sites import SiteRouter, parse_site_entry, validate_sites
from bridge.config import MqttSettings

SITES = {"pbx1": ("100-199",), "pbx2": ("200-299", "3001", "sales"), "pbx3": ("0400-0499",)}


@pytest.fixture
def router() -> SiteRouter:
    return SiteRouter(SITES, local_site="pbx1")


@pytest.mark.parametrize(("extension", "site"), [
    ("200", "pbx2"), ("250", "pbx2"), ("299", "pbx2"), ("3001", "pbx2"), ("sales", "pbx2"),
    ("0400", "pbx3"), ("0499", "pbx3"),
])
def test_extensions_of_other_sites_route_there(router: SiteRouter, extension: str, site: str) -> None:
    assert router.route(extension) == site


@pytest.mark.parametrize("extension", [
    "100", "150", "199",            # local site
    "199.5", "300", "1999", "3002", "30010", "2000", "20", "",  # nobody
    "0250", "00250",                # leading zeros are a different extension
    "400", "499", "04000",          # padded range wants exactly four digits
    "٢٥٠",                          # Arabic-Indic digits are not ASCII digits
    "Sales", "250\n", " 250", "2" * 40,  # extensions are compared exactly, not trimmed
])
def test_local_and_unknown_extensions_stay_local(router: SiteRouter, extension: str) -> None:
    assert router.route(extension) is None


def test_site_of_reports_the_local_site_too(router: SiteRouter) -> None:
    assert router.site_of("150") == "pbx1"
    assert router.site_of("9999") is None
    assert router.sites == {"pbx1", "pbx2", "pbx3"}


@pytest.mark.parametrize(("sites", "message"), [
    ({"pbx2": ("299-200",)}, "backwards"),
    ({"pbx2": ("0200-299",)}, "same number of digits"),
    ({"pbx2": ("200-",)}, "malformed"),
    ({"pbx2": ("200--299",)}, "malformed"),
    ({"pbx2": ("a b",)}, "neither"),
    ({"pbx2": ("",)}, "neither"),
    ({"pbx/2": ("200",)}, "site id"),
    ({"pbx+": ("200",)}, "site id"),
    ({"pbx1": ("100-199",), "pbx2": ("150-250",)}, "overlaps"),
    ({"pbx1": ("100-199",), "pbx2": ("150",)}, "overlaps"),
    ({"pbx1": ("3001",), "pbx2": ("3001",)}, "overlaps"),
    ({"pbx1": ("0100-1999",), "pbx2": ("1500-1600",)}, "overlaps"),
])
def test_invalid_or_overlapping_entries_are_refused(sites: dict[str, tuple[str, ...]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SiteRouter(sites, local_site="pbx1")


def test_padded_and_plain_ranges_of_different_widths_do_not_clash() -> None:
    validate_sites({"pbx1": ("0200-0299",), "pbx2": ("200-299",), "pbx3": ("20-29",)})
    router = SiteRouter({"pbx1": ("0200-0299",), "pbx2": ("200-299",)}, local_site="pbx1")
    assert router.route("0250") is None
    assert router.route("250") == "pbx2"


def test_same_site_may_list_overlapping_entries() -> None:
    assert SiteRouter({"pbx2": ("200-299", "250")}, local_site="pbx1").route("250") == "pbx2"


def test_settings_refuse_bad_sites_at_load_time() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        MqttSettings(sites={"pbx1": ("1-10",), "pbx2": ("5",)})
    assert MqttSettings(sites={"pbx2": ("200-299",)}).sites == {"pbx2": ("200-299",)}


def test_parse_entry_shapes() -> None:
    assert parse_site_entry("3001") == "3001"
    assert parse_site_entry(" 200-299 ") != "200-299"


@given(st.text(max_size=40))
def test_route_never_raises_on_any_text(extension: str) -> None:
    result = SiteRouter(SITES, local_site="pbx1").route(extension)
    assert result in (None, "pbx2", "pbx3")


@given(st.integers(min_value=0, max_value=10_000))
def test_numeric_extensions_follow_the_ranges(number: int) -> None:
    router = SiteRouter(SITES, local_site="pbx1")
    expected = "pbx2" if 200 <= number <= 299 or number == 3001 else None
    assert router.route(str(number)) == expected
