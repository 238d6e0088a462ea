"""Tests for gateway.inbound's decisions on requests that may lack the visitor's cookies.

A browser withholds ``SameSite=Lax`` cookies from a cross-site POST navigation but accepts a
``Set-Cookie`` on it: an id minted there would overwrite the visitor's own. These tests drive
the pure pipeline the proxy runs (split_target, read_url_identity, settle) with plain values.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Site, Strategy
from gateway.identity import IdRules
from gateway.inbound import (
    Arrival,
    cookies_may_be_withheld,
    read_url_identity,
    settle,
    split_target,
)
from gateway.strategies import SigningKeys, TokenRecord, sign_params

OPEN = Site(host="www.shop.test", upstream="http://127.0.0.1:1")
STRICT = Site(host="www.shop.test", upstream="http://127.0.0.1:1", accept=("signed", "token"))
COOKIE = "ajs_anonymous_id=visitor-id"


@pytest.mark.parametrize(
    ("method", "sec_fetch_site", "withheld"),
    [
        # A top-level GET navigation carries Lax cookies, from any site.
        ("GET", None, False),
        ("GET", "cross-site", False),
        ("HEAD", None, False),
        ("HEAD", "same-origin", False),
        ("HEAD", "cross-site", True),
        ("HEAD", " Cross-Site ", True),
        # Without Sec-Fetch-Site (plain HTTP, older browsers) a cross-site POST looks like any
        # other: every unsafe method counts, whatever the header says.
        ("POST", None, True),
        ("POST", "same-origin", True),
        ("POST", "cross-site", True),
        ("PUT", None, True),
        ("DELETE", "same-site", True),
        ("PATCH", None, True),
        ("OPTIONS", None, True),
    ],
)
def test_cookies_may_be_withheld(method: str, sec_fetch_site: str | None, withheld: bool) -> None:
    assert cookies_may_be_withheld(method, sec_fetch_site) is withheld


def decide(
    method: str,
    target: str,
    cookies: Sequence[str] = (),
    *,
    site: Site = OPEN,
    sec_fetch_site: str | None = None,
    mint: bool = True,
) -> Arrival:
    """What the proxy decides for one request (no signing keys, no token store)."""
    rules = IdRules()
    path, cleaned, params, had_params = split_target(target)
    url = read_url_identity(
        params,
        site=site,
        rules=rules,
        host=site.host,
        user_agent=None,
        now=0.0,
        keys=None,
        bind_user_agent=False,
        max_lifetime=600,
    )
    return settle(
        method=method,
        target=target,
        path=path,
        cleaned_query=cleaned,
        had_params=had_params,
        url=url,
        cookie_headers=cookies,
        site=site,
        rules=rules,
        mint=mint,
        cookies_withheld=cookies_may_be_withheld(method, sec_fetch_site),
    )


def test_no_id_is_minted_for_a_post_without_cookies() -> None:
    arrival = decide("POST", "/return-from-psp")
    assert arrival.cookies_withheld
    assert (arrival.aid, arrival.uid, arrival.minted) == (None, None, False)
    assert (arrival.write_aid, arrival.write_uid) == (None, None)
    assert arrival.source == "none"
    assert (arrival.redirect, arrival.target) == (None, "/return-from-psp")


def test_the_same_request_as_a_get_mints() -> None:
    arrival = decide("GET", "/return-from-psp", sec_fetch_site="cross-site")
    assert not arrival.cookies_withheld
    assert arrival.minted and arrival.aid is not None
    assert arrival.source == "minted"


def test_a_post_that_brought_the_cookies_uses_them() -> None:
    # A same-site POST does carry Lax cookies: the visitor's id is known, nothing is minted.
    arrival = decide("POST", "/checkout", [COOKIE + "; ajs_user_id=u1"])
    assert (arrival.aid, arrival.uid, arrival.minted) == ("visitor-id", "u1", False)
    assert (arrival.write_aid, arrival.write_uid) == (None, None)
    assert arrival.source == "cookie"


def test_url_identity_on_a_post_is_taken_as_before() -> None:
    # A decorated cross-domain POST form: the id in its action URL is the visitor's hand-off.
    arrival = decide("POST", "/subscribe?ajs_aid=carried-id&ajs_uid=u1&x=1")
    assert (arrival.aid, arrival.uid) == ("carried-id", "u1")
    assert (arrival.write_aid, arrival.write_uid) == ("carried-id", "u1")
    assert not arrival.minted
    assert arrival.source == "url"
    assert (arrival.redirect, arrival.target) == (None, "/subscribe?x=1")


def test_url_identity_a_strict_site_refuses_leaves_no_id_on_a_post() -> None:
    # The F7 request: a forged plain ajs_aid, posted cross-site to a site that accepts only
    # signed links and tokens. Refused, and no id is minted in its place either.
    arrival = decide("POST", "/search?q=x&ajs_aid=FORGED&ajs_uid=ceo", site=STRICT)
    assert (arrival.aid, arrival.uid, arrival.minted) == (None, None, False)
    assert (arrival.write_aid, arrival.write_uid) == (None, None)
    assert arrival.source == "rejected"
    assert (arrival.redirect, arrival.target) == (None, "/search?q=x")


def test_no_minting_when_disabled_whatever_the_method() -> None:
    for method in ("GET", "POST"):
        arrival = decide(method, "/", mint=False)
        assert (arrival.aid, arrival.minted) == (None, False)


METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
FETCH_SITES = st.sampled_from([None, "cross-site", "same-site", "same-origin", "none"])
QUERIES = st.sampled_from(["", "?x=1", "?ajs_aid=url-id", "?ajs_aid=url-id&ajs_uid=u", "?ajs_aid="])
COOKIES = st.sampled_from([(), (COOKIE,), ("ajs_user_id=u2",), (COOKIE + "; ajs_user_id=u2",)])
ACCEPTS: st.SearchStrategy[tuple[Strategy, ...]] = st.sampled_from(
    [("query", "signed", "token"), ("signed", "token")]
)


@given(METHODS, FETCH_SITES, QUERIES, COOKIES, ACCEPTS, st.booleans())
def test_an_id_is_minted_only_where_the_cookies_surely_arrived(
    method: str,
    sec_fetch_site: str | None,
    query: str,
    cookies: tuple[str, ...],
    accept: tuple[Strategy, ...],
    mint: bool,
) -> None:
    site = Site(host="www.shop.test", upstream="http://127.0.0.1:1", accept=accept)
    arrival = decide(
        method, "/p" + query, cookies, site=site, sec_fetch_site=sec_fetch_site, mint=mint
    )
    cross_site_head = method == "HEAD" and sec_fetch_site == "cross-site"
    withheld = method not in ("GET", "HEAD") or cross_site_head
    assert arrival.cookies_withheld is withheld
    if withheld:
        assert not arrival.minted
        # The id is the URL's (under the site's accept) or the cookie's, never a new one.
        cookie_aid = "visitor-id" if any(c.startswith(COOKIE) for c in cookies) else None
        assert arrival.aid in (arrival.write_aid, cookie_aid)
    elif mint:
        assert arrival.aid is not None


# --- Credentials minted for apps: the source says so ---------------------------------------------


def test_an_app_credential_is_the_source_app() -> None:
    keys = SigningKeys.parse("k3Y-a_0123456789abcdefghijklmnopqrstuvwxyzAB")
    rules = IdRules()

    def arrive(params: dict[str, str], record: TokenRecord | None = None) -> Arrival:
        url = read_url_identity(
            params,
            site=OPEN,
            rules=rules,
            host=OPEN.host,
            user_agent="UA",
            now=1000,
            keys=keys,
            bind_user_agent=True,
            max_lifetime=600,
        )
        if url.token is not None:
            url = url.exchanged(record, rules, "unknown_or_expired")
        return settle(
            method="GET",
            target="/x",
            path="/x",
            cleaned_query="",
            had_params=True,
            url=url,
            cookie_headers=[],
            site=OPEN,
            rules=rules,
            mint=True,
            cookies_withheld=False,
        )

    def signed(origin: str) -> dict[str, str]:
        return dict(
            sign_params(
                aid="app-id",
                uid=None,
                target_host=OPEN.host,
                expires=1500,
                keys=keys,
                user_agent=None if origin == "app" else "UA",
                origin=origin,  # type: ignore[arg-type]
            )
        )

    assert (arrive(signed("app")).source, arrive(signed("app")).aid) == ("app", "app-id")
    assert arrive(signed("page")).source == "url"
    token = {"ajs_token": "A" * 32}
    app = TokenRecord("app-id", None, 1000, "", (OPEN.host,), None, "app")
    page = TokenRecord("page-id", None, 1000, "other.test", (OPEN.host,), None)
    assert (arrive(token, app).source, arrive(token, app).aid) == ("app", "app-id")
    assert arrive(token, page).source == "url"
    assert arrive({"ajs_aid": "q-id"}).source == "url"
