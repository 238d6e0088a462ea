"""gateway.rescue: which undecorated arrivals get a round trip through their sibling, and where
the sibling's endpoint may send the visitor back to (never anywhere else)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Config, parse_config
from gateway.rescue import (
    GUARD_COOKIE,
    GUARD_MAX_AGE,
    RESCUE_PATH,
    credential,
    eligible,
    guard_cookie,
    is_top_level_navigation,
    rescue_back,
    rescue_location,
    sibling_origin,
)

CONFIG: Config = parse_config(
    """
sites:
  - {host: www.shop.test, upstream: "http://127.0.0.1:1", rescue: true}
  - {host: checkout.pay.test, upstream: "http://127.0.0.1:1", rescue: true}
  - {host: "*.brand.test", upstream: "http://127.0.0.1:1", rescue: true}
  - {host: blog.shop-news.test, upstream: "http://127.0.0.1:1"}
cross_domains: [www.shop.test, checkout.pay.test, psp.elsewhere.test]
""",
    "rescue.yaml",
    {},
)
SHOP, PAY, BLOG = CONFIG.sites[0], CONFIG.sites[1], CONFIG.sites[3]


def test_the_endpoint_lives_under_the_gateways_prefix() -> None:
    assert RESCUE_PATH == "/_ajs_gateway/rescue"


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("http://www.shop.test/cart?x=1", "http://www.shop.test"),
        ("https://www.shop.test:8443/", "https://www.shop.test:8443"),
        ("https://WWW.Shop.TEST./p", "https://www.shop.test"),
        ("https://eu.brand.test/", "https://eu.brand.test"),
        # Not a site of this gateway (a cross-domain only, or nothing at all).
        ("https://psp.elsewhere.test/", None),
        ("https://evil.test/", None),
        # The site itself.
        ("https://checkout.pay.test/other", None),
        # Not a web origin, or not a URL.
        ("ftp://www.shop.test/", None),
        ("javascript:alert(1)", None),
        ("https://www.shop.test:99999/", None),
        ("", None),
        (None, None),
    ],
)
def test_the_sibling_is_the_referers_origin_when_it_is_a_site_here(
    referer: str | None, expected: str | None
) -> None:
    assert sibling_origin(referer, "checkout.pay.test:8080", CONFIG) == expected


@pytest.mark.parametrize(
    ("dest", "accept", "expected"),
    [
        ("document", None, True),
        ("iframe", "text/html", False),
        ("image", "text/html", False),
        ("empty", None, False),
        (None, "text/html,application/xhtml+xml", True),
        (None, "image/avif,*/*", False),
        (None, None, False),
    ],
)
def test_top_level_navigations(dest: str | None, accept: str | None, expected: bool) -> None:
    assert is_top_level_navigation(dest, accept) is expected


GO: dict[str, Any] = {
    "site": PAY,
    "method": "GET",
    "top_level": True,
    "had_params": False,
    "has_id": False,
    "guard": False,
    "sibling": "http://www.shop.test",
    "ahead": False,
    "consent": True,
}


@pytest.mark.parametrize(
    "change",
    [
        {"site": BLOG},  # rescue is off there
        {"method": "POST"},  # never for unsafe methods
        {"method": "HEAD"},
        {"top_level": False},
        {"had_params": True},  # a decorated arrival, or the way back (no rescue of rescue)
        {"has_id": True},  # a cookie (readable or server-only): nothing to rescue
        {"guard": True},  # one attempt
        {"sibling": None},  # not from a sibling
        {"ahead": True},  # a prefetch, a HEAD, a preview bot
        {"consent": False},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_condition_is_needed(change: dict[str, Any]) -> None:
    assert eligible(**GO)
    assert not eligible(**{**GO, **change})


@given(st.fixed_dictionaries({k: st.booleans() for k in ("had_params", "has_id", "guard")}))
def test_no_second_attempt(flags: dict[str, bool]) -> None:
    # Whatever else holds, a request carrying the marker or the guard is never sent again.
    if flags["had_params"] or flags["guard"]:
        assert not eligible(**{**GO, **flags})


def test_the_first_leg_goes_to_the_siblings_endpoint_with_the_url_to_come_back_to() -> None:
    back = "http://checkout.pay.test/from-js?via=script&a=%41#frag"
    assert rescue_location("http://www.shop.test:8080", back) == (
        "http://www.shop.test:8080/_ajs_gateway/rescue?back="
        "http%3A%2F%2Fcheckout.pay.test%2Ffrom-js%3Fvia%3Dscript%26a%3D%2541%23frag"
    )


def test_the_guard_cookie() -> None:
    assert guard_cookie(secure=False) == (
        f"{GUARD_COOKIE}=1; Path=/; Max-Age={GUARD_MAX_AGE}; HttpOnly; SameSite=Lax"
    )
    assert guard_cookie(secure=True).endswith("; SameSite=Lax; Secure")


@pytest.mark.parametrize(
    "back",
    [
        "http://checkout.pay.test/",
        "https://checkout.pay.test:8443/from-js?via=script#x",
        "https://eu.brand.test/p",
        "HTTPS://Checkout.Pay.Test/p",
    ],
)
def test_the_way_back_goes_to_a_rescue_site(back: str) -> None:
    assert rescue_back(back, "www.shop.test", CONFIG) is not None


@pytest.mark.parametrize(
    "back",
    [
        # Not a site with rescue on, or not a site of this gateway at all.
        "https://blog.shop-news.test/",
        "https://psp.elsewhere.test/",
        "https://evil.test/",
        "https://checkout.pay.test.evil.test/",
        "https://evilcheckout.pay.test/",
        # The endpoint's own site.
        "https://www.shop.test/",
        # Relative, scheme-relative and scheme-less forms a browser would resolve anywhere.
        "//evil.test/",
        "/local",
        "checkout.pay.test/p",
        "https:/evil.test/",
        "https:evil.test",
        # What browsers read otherwise than a parser: backslashes, controls, spaces, userinfo.
        "https://checkout.pay.test\\@evil.test/",
        "https:\\\\evil.test/",
        "https://evil.test\\.checkout.pay.test/",
        "https://checkout.pay.test@evil.test/",
        "https://user:pw@checkout.pay.test/",
        "https://evil.test#@checkout.pay.test/",
        "https://checkout.pay.test\t.evil.test/",
        "https://checkout.pay.test\n/",
        " https://checkout.pay.test/",
        "https://checkout.pay.test:99999/",
        "https://checkout.pay.tést/",
        # Other schemes.
        "javascript:alert(1)//https://checkout.pay.test/",
        "data:text/html,https://checkout.pay.test/",
        "ftp://checkout.pay.test/",
        # The gateway's own paths: no rescue of a rescue, no detour through the freshness
        # endpoint.
        "https://checkout.pay.test/_ajs_gateway/rescue?back=https://eu.brand.test/",
        "https://checkout.pay.test/_ajs_gateway/link?to=https://evil.test/",
        "",
    ],
)
def test_the_way_back_never_goes_anywhere_else(back: str) -> None:
    assert rescue_back(back, "www.shop.test", CONFIG) is None


@given(st.text(max_size=80))
def test_the_way_back_is_a_rescue_site_for_any_input(back: str) -> None:
    site = rescue_back(back, "www.shop.test", CONFIG)
    assert site is None or (site.rescue and site.host != "www.shop.test")


@pytest.mark.parametrize(
    ("accept", "can_sign", "expected"),
    [
        (("query", "token", "signed"), True, "token"),
        (("signed", "token"), False, "token"),
        (("signed", "query"), True, "signed"),
        (("signed", "query"), False, "query"),
        (("signed",), False, None),
        (("query",), True, "query"),
        ((), True, None),
    ],
)
def test_the_credential_follows_the_returning_sites_accept(
    accept: tuple[Any, ...], can_sign: bool, expected: str | None
) -> None:
    assert credential(accept, can_sign=can_sign) == expected


def test_a_site_without_rescue_is_not_a_way_back_even_when_its_sibling_has_it() -> None:
    off = replace(CONFIG, sites=(SHOP, replace(PAY, rescue=False)))
    assert rescue_back("https://checkout.pay.test/", "www.shop.test", off) is None
