"""crossings.py: which requests are arrivals from the fleet's other sites, and the marker that
keeps the clean-up redirect's second leg from counting twice."""

from __future__ import annotations

from collections.abc import Sequence
from http.cookies import SimpleCookie

import pytest

from gateway.config import parse_config
from gateway.crossings import (
    MARKER_COOKIE,
    MARKER_MAX_AGE,
    cross_domain_arrival,
    is_navigation,
    is_second_leg,
    marker_cookie,
    marker_value,
)

CONFIG = parse_config(
    """\
sites:
  - {host: www.shop.test, upstream: 'http://127.0.0.1:9'}
  - {host: '*.pay.test', upstream: 'http://127.0.0.1:9'}
cross_domains: [www.shop.test, '*.pay.test']
""",
    "f.yaml",
    {},
)
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def arrival(
    referer: str | None,
    *,
    own_host: str = "www.shop.test",
    target: str = "/cart",
    dest: str | None = None,
    accept: str | None = HTML_ACCEPT,
    cookies: Sequence[str] = (),
    carried: bool = False,
) -> tuple[str, str] | None:
    return cross_domain_arrival(
        config=CONFIG,
        own_host=own_host,
        target=target,
        referer=referer,
        sec_fetch_dest=dest,
        accept=accept,
        cookie_headers=cookies,
        carried=carried,
    )


@pytest.mark.parametrize(
    ("dest", "accept", "expected"),
    [
        ("document", None, True),
        ("iframe", "*/*", True),
        ("frame", None, True),
        (" Document ", None, True),
        ("image", HTML_ACCEPT, False),  # Sec-Fetch-Dest wins where it is sent
        ("script", None, False),
        ("empty", "*/*", False),
        (None, HTML_ACCEPT, True),
        (None, "TEXT/HTML", True),
        (None, "image/avif,image/webp,*/*", False),
        (None, "*/*", False),
        (None, None, False),
        ("", HTML_ACCEPT, True),
    ],
)
def test_is_navigation(dest: str | None, accept: str | None, expected: bool) -> None:
    assert is_navigation(dest, accept) is expected


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("https://checkout.pay.test/cart", "*.pay.test"),
        ("http://a.b.pay.test:8443/", "*.pay.test"),
        ("https://pay.test/", None),  # the pattern covers subdomains only
        ("https://www.shop.test/elsewhere", None),  # this host
        ("https://other.example/", None),
        ("not a url", None),
        ("http://[::1", None),
        (None, None),
        ("", None),
    ],
)
def test_only_a_sibling_referer_makes_an_arrival(referer: str | None, expected: str) -> None:
    found = arrival(referer)
    assert found == (None if expected is None else (expected, "missing"))


def test_carried_or_missing() -> None:
    referer = "https://checkout.pay.test/"
    assert arrival(referer, carried=True) == ("*.pay.test", "carried")
    assert arrival(referer, carried=False) == ("*.pay.test", "missing")
    # A visitor with a cookie here is missing all the same: the URL is all that counts.
    assert arrival(referer, cookies=["ajs_anonymous_id=old"]) == ("*.pay.test", "missing")
    assert arrival(referer, accept="image/png") is None


def test_the_marker_hides_the_second_leg_of_its_own_target_only() -> None:
    referer = "https://checkout.pay.test/"
    header = marker_cookie("/cart?item=1", secure=False)
    value = SimpleCookie(header)[MARKER_COOKIE].value
    sent = [f"ajs_anonymous_id=abc; {MARKER_COOKIE}={value}"]
    assert is_second_leg(sent, "/cart?item=1")
    assert arrival(referer, target="/cart?item=1", cookies=sent) is None
    for other in ("/cart", "/cart?item=2", "/cart?item=1&x", "/Cart?item=1"):
        assert not is_second_leg(sent, other)
        assert arrival(referer, target=other, cookies=sent) == ("*.pay.test", "missing")
    assert not is_second_leg([f"{MARKER_COOKIE}=forged"], "/cart?item=1")
    assert not is_second_leg([], "/cart?item=1")
    # A first leg (identity in the URL) is an arrival whatever markers the browser holds.
    first = "/cart?item=1&ajs_aid=abc"
    assert arrival(referer, target=first, cookies=sent, carried=True) == ("*.pay.test", "carried")
    sent_for_first = [f"{MARKER_COOKIE}={marker_value(first)}"]
    assert arrival(referer, target=first, cookies=sent_for_first, carried=True) is not None


@pytest.mark.parametrize("secure", [False, True])
def test_marker_cookie_attributes(secure: bool) -> None:
    header = marker_cookie("/p?q=1", secure=secure)
    morsel = SimpleCookie(header)[MARKER_COOKIE]
    assert morsel.value == marker_value("/p?q=1")
    assert len(morsel.value) == 16 and int(morsel.value, 16) >= 0
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(MARKER_MAX_AGE)
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["domain"] == ""  # host-only
    assert bool(morsel["secure"]) is secure


def test_marker_values_depend_only_on_the_target() -> None:
    assert marker_value("/a") == marker_value("/a")
    assert marker_value("/a") != marker_value("/b")
    # Targets with bytes outside UTF-8 (as a raw request-target can carry) still digest.
    assert len(marker_value("/caf\udce9")) == 16
