"""gateway/links.py's links minted on request (apps, email, partners): which URLs are targets,
what a request may ask for, and what each strategy's link carries."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.config import CrossDomain
from gateway.identity import IdRules
from gateway.links import (
    AppLinkPlan,
    LinkRefused,
    app_link_url,
    configured_target,
    plan_app_link,
)
from gateway.options import MAX_TOKEN_TTL
from gateway.strategies import SigningKeys, signed_origin, verify_signed

CROSS = (
    CrossDomain("shop.example-query.com"),
    CrossDomain("pay.example-pay.com", "token"),
    CrossDomain("*.example-id.com", "signed"),
)
PATTERNS = [c.host for c in CROSS]
AID = "5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f"
KEYS = SigningKeys.parse("k3Y-a_0123456789abcdefghijklmnopqrstuvwxyzAB")
NOW = 1_700_000_000


def plan(to: str, **kw: Any) -> AppLinkPlan:
    args: dict[str, Any] = {
        "anonymous_id": AID,
        "user_id": None,
        "ttl": None,
        "cross_domains": CROSS,
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
    assert configured_target(to, PATTERNS) == expected


def test_a_query_link_carries_the_ids_and_does_not_expire() -> None:
    p = plan("https://shop.example-query.com/p?a=1&ajs_aid=old", user_id="u 1", ttl=99)
    assert (p.strategy, p.ttl, p.expires_at) == ("query", None, None)
    url = app_link_url(p, token=None, keys=None)
    # An identity parameter already in the URL is replaced, the rest kept.
    assert url == f"https://shop.example-query.com/p?a=1&ajs_aid={AID}&ajs_uid=u%201"


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
        assert got == (AID, "u1", "ok")
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
