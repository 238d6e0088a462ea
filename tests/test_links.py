"""Tests for gateway.links: the parameters a link carries per strategy, and the freshness
endpoint's target check (with LinkDecorator.target_of, which it is built on).

The HTTP-level journeys (a page's links, the endpoint's redirects) are in test_tokens_flow.py;
these pin the same rules without a socket. Then the links minted on request (apps, email,
partners): which URLs are targets, what a request may ask for, and what each strategy's link
carries (end to end in test_applinks.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import CrossDomain
from gateway.hosts import hostname, matches
from gateway.identity import C0_CONTROL_OR_SPACE, IdRules
from gateway.links import (
    FRESH_LINK_PATH,
    AppLinkPlan,
    LinkDecorator,
    LinkRefused,
    TargetParams,
    _web_target,
    app_link_url,
    configured_target,
    plan_app_link,
    protected_target,
)
from gateway.options import MAX_TOKEN_TTL
from gateway.params import AID_PARAM, EXP_PARAM, SIG_PARAM, TOKEN_PARAM, UID_PARAM
from gateway.strategies import SigningKeys, signed_origin, verify_signed

AID = "0b6e6f5a-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
UID = "user@example.com"
TOKEN = "t" * 32
KEYS = SigningKeys.parse("k3Y-a_0123456789abcdefghijklmnopqrstuvwxyzAB")
NOW = 1_700_000_000
EXPIRES = NOW + 600
UA = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"
OWN = "www.shop.test"
CROSS = (
    CrossDomain("checkout.test", "query"),
    CrossDomain("*.pay.test", "token"),
    CrossDomain("sso.test", "signed"),
    CrossDomain(OWN, "query"),
)
PATTERNS = [c.host for c in CROSS]


def params(
    *,
    uid: str | None = UID,
    token: str | None = TOKEN,
    keys: SigningKeys | None = KEYS,
    user_agent: str | None = None,
) -> TargetParams:
    return TargetParams(
        CROSS,
        aid=AID,
        uid=uid,
        token=token,
        keys=keys,
        expires=EXPIRES,
        user_agent=user_agent,
    )


def verify(signed: object, host: str, user_agent: str | None = None) -> str:
    assert isinstance(signed, list)
    return verify_signed(
        dict(signed),
        host=host,
        now=NOW,
        keys=KEYS,
        user_agent=user_agent,
        bind_user_agent=False,
    )[2]


# --- TargetParams ---------------------------------------------------------------------------------


def test_query_targets_carry_the_raw_ids() -> None:
    assert params()("checkout.test", "checkout.test") == [(AID_PARAM, AID), (UID_PARAM, UID)]
    assert params(uid=None)("checkout.test", "checkout.test") == [(AID_PARAM, AID)]


def test_token_targets_carry_the_token_only() -> None:
    assert params()("*.pay.test", "a.pay.test") == [(TOKEN_PARAM, TOKEN)]


def test_without_a_token_a_token_target_gets_nothing() -> None:
    """The store is down or failed: never a fall-back to raw ids for a target that asked not
    to see them, and never another target's parameters."""
    assert params(token=None)("*.pay.test", "a.pay.test") is None


def test_signed_targets_carry_a_signature_for_their_own_host() -> None:
    target = params()
    signed = target("sso.test", "sso.test")
    assert signed is not None
    assert [name for name, _ in signed] == [AID_PARAM, UID_PARAM, EXP_PARAM, SIG_PARAM]
    assert dict(signed)[EXP_PARAM] == str(EXPIRES)
    assert verify(signed, "sso.test") == "ok"
    # The signature covers the host it was made for, and no other.
    assert verify(signed, "checkout.test") == "bad_signature"


def test_one_signature_per_host_and_page_view() -> None:
    target = TargetParams(
        [CrossDomain("*.sso.test", "signed")],
        aid=AID,
        uid=None,
        token=None,
        keys=KEYS,
        expires=EXPIRES,
        user_agent=None,
    )
    a = target("*.sso.test", "a.sso.test")
    assert target("*.sso.test", "a.sso.test") is a
    b = target("*.sso.test", "b.sso.test")
    assert a != b
    assert verify(a, "a.sso.test") == verify(b, "b.sso.test") == "ok"


def test_signed_links_bound_to_the_browser() -> None:
    signed = params(user_agent=UA)("sso.test", "sso.test")
    assert signed is not None and dict(signed)[SIG_PARAM].startswith("v1ua.")
    assert verify(signed, "sso.test", user_agent=UA) == "ok"
    assert verify(signed, "sso.test", user_agent="another browser") == "bad_signature"


def test_without_keys_a_signed_target_gets_nothing() -> None:
    assert params(keys=None)("sso.test", "sso.test") is None


def test_a_host_that_cannot_be_signed_gets_nothing() -> None:
    """sign_params refuses it (no gateway would accept the link), so the link stays bare."""
    target = TargetParams(
        [CrossDomain("*.sso.test", "signed")],
        aid=AID,
        uid=None,
        token=None,
        keys=KEYS,
        expires=EXPIRES,
        user_agent=None,
    )
    assert target("*.sso.test", "a..sso.test") is None


def test_an_unknown_pattern_gets_nothing() -> None:
    assert params()("elsewhere.test", "elsewhere.test") is None
    assert params()("*.checkout.test", "a.checkout.test") is None


def test_a_page_links_each_target_by_its_strategy() -> None:
    decorator = LinkDecorator(OWN, f"https://{OWN}/", PATTERNS, params())
    assert decorator.decorate("https://checkout.test/x", None) == (
        f"https://checkout.test/x?{AID_PARAM}={AID}&{UID_PARAM}=user%40example.com"
    )
    assert decorator.decorate("https://a.pay.test/x", None) == (
        f"https://a.pay.test/x?{TOKEN_PARAM}={TOKEN}"
    )
    signed = decorator.decorate("https://sso.test/x", None)
    assert signed is not None and f"{SIG_PARAM}=v1." in signed
    assert decorator.decorate(f"https://{OWN}/x", None) is None
    assert dict(decorator.targets_hit) == {"checkout.test": 1, "*.pay.test": 1, "sso.test": 1}


# --- LinkDecorator.target_of ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("https://checkout.test/x", None, "checkout.test"),
        ("HTTPS://Checkout.Test.:443/x", None, "checkout.test"),
        ("//a.pay.test/", None, "*.pay.test"),
        ("https://a.b.pay.test/", None, "*.pay.test"),
        ("https://sso.test", None, "sso.test"),
        ("  https://sso.test/\n", None, "sso.test"),
        ("https:\\\\sso.test/", None, "sso.test"),
        ("/relative", "https://checkout.test/", "checkout.test"),
        ("x", "https://a.pay.test/dir/", "*.pay.test"),
        # Not a target, or the page's own host (never decorated, whatever is configured).
        ("https://pay.test/", None, None),
        ("https://evilcheckout.test/", None, None),
        ("https://checkout.test.evil.net/", None, None),
        (f"https://{OWN}/", None, None),
        ("/relative", None, None),
        ("", None, None),
        ("   ", "https://checkout.test/", None),
        ("mailto:x@checkout.test", None, None),
        ("javascript:'https://checkout.test/'", None, None),
        ("https://checkout.test:99999/", None, None),
        ("http://[", None, None),
    ],
)
def test_target_of(url: str, base: str | None, expected: str | None) -> None:
    decorator = LinkDecorator(OWN, f"https://{OWN}/dir/page", PATTERNS)
    assert decorator.target_of(url, base) == expected
    assert not decorator.targets_hit


def test_target_of_is_the_first_listed_target() -> None:
    decorator = LinkDecorator(OWN, f"https://{OWN}/", ["*.test", "checkout.test"])
    assert decorator.target_of("https://checkout.test/") == "*.test"


URLS = st.one_of(
    st.sampled_from(
        [
            "https://checkout.test/",
            "https://a.pay.test/x?y=1#z",
            "//sso.test",
            "https://pay.test/",
            f"https://{OWN}/",
            "/local",
            "local",
            "?q",
            "mailto:a@b",
            "https://CHECKOUT.test./",
            "http:checkout.test",
            "https://checkout.test%2e/",
            "https://xn--grobank-2va.pay.test/",
            "https://gro%C3%9Fbank.pay.test/",
            " ",
        ]
    ),
    st.text(alphabet="htps:/\\.?#@%checkout.pay.sso.test ", max_size=30),
)
BASES = st.sampled_from([None, "https://checkout.test/", "/dir/", "https://a.pay.test/", "x:y"])


@given(URLS, BASES)
def test_target_of_agrees_with_decorate(url: str, base: str | None) -> None:
    """target_of names exactly the target decorate() decorates the link for."""
    probe = LinkDecorator(OWN, f"https://{OWN}/page", PATTERNS)
    decorator = LinkDecorator(OWN, f"https://{OWN}/page", PATTERNS, [(AID_PARAM, AID)])
    target = probe.target_of(url, base)
    decorated = decorator.decorate(url, base)
    assert (decorated is not None) is (target is not None)
    assert dict(decorator.targets_hit) == ({} if target is None else {target: 1})


def full_parse_target(url: str, base: str | None, page_url: str) -> str | None:
    """The target of a link by the full URL parse alone: what LinkDecorator's quick paths
    (plain absolute URLs, relative ones against the page or its <base>) must agree with."""
    if not url.strip(C0_CONTROL_OR_SPACE):
        return None
    try:
        page = _web_target(page_url, None)
        origin = page if base is None else (_web_target(base, page) or page)
        target = _web_target(url, origin)
    except (UnicodeError, ValueError):
        return None
    host = None if target is None else hostname(target[1])
    if host is None or host == OWN:
        return None
    return next((p for p in PATTERNS if matches(host, p)), None)


MORE_BASES = st.one_of(
    BASES,
    st.sampled_from(["//sso.test/", "https://pay.test/", "http://[", "https://sso.test\\x", ""]),
)
# A proxied page's URL is always http(s) (configured_target's about:blank page only ever meets
# absolute http(s) URLs).
PAGES = st.sampled_from(
    [f"https://{OWN}/dir/page", "https://checkout.test/page", "http://x.pay.test"]
)


@given(URLS, MORE_BASES, PAGES)
def test_target_of_agrees_with_the_full_parse(url: str, base: str | None, page: str) -> None:
    decorator = LinkDecorator(OWN, page, PATTERNS)
    # Twice: the second answer comes from the decorator's memory of the <base>.
    assert decorator.target_of(url, base) == full_parse_target(url, base, page)
    assert decorator.target_of(url, base) == full_parse_target(url, base, page)


# --- The freshness endpoint -----------------------------------------------------------------------


def test_the_endpoint_path() -> None:
    assert FRESH_LINK_PATH.startswith("/") and "?" not in FRESH_LINK_PATH


PROTECTED = ["*.pay.test", "sso.test"]


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("https://a.pay.test/checkout?x=1", "*.pay.test"),
        ("http://a.pay.test:8443/", "*.pay.test"),
        ("HTTPS://SSO.TEST/", "sso.test"),
        ("https://sso.test/@evil.example/", "sso.test"),
        ("https://sso.test/%0d%0aSet-Cookie:x=1", "sso.test"),
        # Only an absolute http(s) URL of printable ASCII, nothing a browser reads otherwise.
        ("//sso.test/", None),
        ("/x", None),
        ("sso.test", None),
        ("ftp://sso.test/", None),
        ("javascript:'https://sso.test/'", None),
        ("https://sso.test\\@evil.example/", None),
        ("https://sso.test/ x", None),
        ("https://sso.test/\r\nLocation: https://evil.example/", None),
        (" https://sso.test/", None),
        ("https://sso.tést/", None),
        ("", None),
        # Not a protected target: another host, a look-alike, a query target, the own host.
        ("https://evil.example/", None),
        ("https://sso.test.evil.example/", None),
        ("https://sso.test@evil.example/", None),
        ("https://pay.test/", None),
        ("https://checkout.test/", None),
        (f"https://{OWN}/", None),
    ],
)
def test_protected_target(to: str, expected: str | None) -> None:
    assert protected_target(to, OWN, PROTECTED) == expected


def test_protected_target_never_the_own_host() -> None:
    assert protected_target("https://a.pay.test/", "a.pay.test", PROTECTED) is None
    assert protected_target("https://b.pay.test/", "a.pay.test", PROTECTED) == "*.pay.test"


def test_protected_target_without_targets() -> None:
    assert protected_target("https://sso.test/", OWN, []) is None


@given(URLS)
def test_protected_target_is_target_of_for_plain_absolute_urls(to: str) -> None:
    expected = LinkDecorator(OWN, f"https://{OWN}/", PROTECTED).target_of(to)
    got = protected_target(to, OWN, PROTECTED)
    assert got in (expected, None)
    if got is not None:
        assert to.lower().startswith(("http://", "https://"))


# --- Links minted on request, for apps, emails and partners ------------------------------------

APP_CROSS = (
    CrossDomain("shop.example-query.com"),
    CrossDomain("pay.example-pay.com", "token"),
    CrossDomain("*.example-id.com", "signed"),
)
APP_PATTERNS = [c.host for c in APP_CROSS]
APP_AID = "5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f"


def plan(to: str, **kw: Any) -> AppLinkPlan:
    args: dict[str, Any] = {
        "anonymous_id": APP_AID,
        "user_id": None,
        "ttl": None,
        "cross_domains": APP_CROSS,
        "rules": IdRules(),
        "token_ttl": 300,
        "signed_lifetime": 900,
        "now": NOW,
    }
    args.update(kw)
    return plan_app_link(to, **args)


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("https://shop.example-query.com/", ("shop.example-query.com", "shop.example-query.com")),
        ("http://PAY.example-pay.com./x?y=1", ("pay.example-pay.com", "pay.example-pay.com")),
        ("https://sso.example-id.com/login", ("*.example-id.com", "sso.example-id.com")),
        # Not configured, not a look-alike, not absolute http(s), nothing a browser reads
        # differently.
        ("https://example-id.com/", None),
        ("https://evil.test/?next=https://pay.example-pay.com/", None),
        ("https://pay.example-pay.com.evil.test/", None),
        ("https://evil.test\\@pay.example-pay.com/", None),
        ("//pay.example-pay.com/", None),
        ("/checkout", None),
        ("javascript:alert(1)//pay.example-pay.com", None),
        ("ftp://pay.example-pay.com/", None),
        ("https://pay.example-pay.com/\n", None),
        ("", None),
    ],
)
def test_configured_target(to: str, expected: tuple[str, str] | None) -> None:
    assert configured_target(to, APP_PATTERNS) == expected


def test_a_query_link_carries_the_ids_and_does_not_expire() -> None:
    p = plan("https://shop.example-query.com/p?a=1&ajs_aid=old", user_id="u 1", ttl=99)
    assert (p.strategy, p.ttl, p.expires_at) == ("query", None, None)
    url = app_link_url(p, token=None, keys=None)
    # An identity parameter already in the URL is replaced, the rest kept.
    assert url == f"https://shop.example-query.com/p?a=1&ajs_aid={APP_AID}&ajs_uid=u%201"


def test_a_token_link_carries_only_the_token() -> None:
    p = plan("https://pay.example-pay.com/checkout?cart=1", user_id="u1")
    assert (p.strategy, p.pattern, p.ttl, p.expires_at) == (
        "token",
        "pay.example-pay.com",
        300,
        NOW + 300,
    )
    url = app_link_url(p, token="T" * 32, keys=KEYS)
    assert url == f"https://pay.example-pay.com/checkout?cart=1&ajs_token={'T' * 32}"
    with pytest.raises(ValueError, match="stored token"):
        app_link_url(p, token=None, keys=KEYS)


def test_a_signed_link_is_an_apps_for_its_host_until_it_expires() -> None:
    p = plan("https://sso.example-id.com/login", user_id="u1", ttl=60)
    assert (p.strategy, p.host, p.expires_at) == ("signed", "sso.example-id.com", NOW + 60)
    url = app_link_url(p, token=None, keys=KEYS)
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["ajs_sig"].startswith("v1app.")
    assert signed_origin(params) == "app"
    for bind in (False, True):
        got = verify_signed(
            params,
            host="sso.example-id.com",
            now=NOW,
            keys=KEYS,
            user_agent="Any/1",
            bind_user_agent=bind,
            max_lifetime=900,
        )
        assert got == (APP_AID, "u1", "ok")
    with pytest.raises(LinkRefused, match=r"signing\.keys"):
        app_link_url(p, token=None, keys=None)


@pytest.mark.parametrize(
    ("to", "kw", "message"),
    [
        ("https://evil.test/", {}, "not an http(s) link to a configured cross-domain"),
        ("https://pay.example-pay.com/", {"anonymous_id": "a b"}, "anonymous id is not valid"),
        ("https://pay.example-pay.com/", {"anonymous_id": ""}, "anonymous id is not valid"),
        ("https://pay.example-pay.com/", {"user_id": "<script>"}, "user id is not valid"),
        ("https://pay.example-pay.com/", {"user_id": ""}, "user id is not valid"),
        ("https://pay.example-pay.com/", {"ttl": MAX_TOKEN_TTL + 1}, "from 10 to 600"),
        ("https://pay.example-pay.com/", {"ttl": 0}, "from 10 to 600"),
        ("https://pay.example-pay.com/", {"ttl": True}, "from 10 to 600"),
        # A signature lives no longer than the fleet verifies one.
        ("https://sso.example-id.com/", {"ttl": 901}, "from 10 to 900"),
    ],
)
def test_refusals_say_what_is_wrong(to: str, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(LinkRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(to, **kw)


def test_a_refusal_never_repeats_an_id() -> None:
    secret = "not valid id with spaces"
    for kw in ({"anonymous_id": secret}, {"user_id": secret + "\n"}):
        with pytest.raises(LinkRefused) as info:
            plan("https://pay.example-pay.com/", **kw)
        assert secret not in str(info.value)
