"""Tests for gateway.links: the parameters a link carries per strategy, and the freshness
endpoint's target check (with LinkDecorator.target_of, which it is built on).

The HTTP-level journeys (a page's links, the endpoint's redirects) are in test_tokens_flow.py;
these pin the same rules without a socket.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import CrossDomain
from gateway.links import FRESH_LINK_PATH, LinkDecorator, TargetParams, protected_target
from gateway.params import AID_PARAM, EXP_PARAM, SIG_PARAM, TOKEN_PARAM, UID_PARAM
from gateway.strategies import SigningKeys, verify_signed

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
