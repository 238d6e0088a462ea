"""outbound.plan: what identity does to a response, decided without a socket (the glue in
identity_flow.py only mints tokens, renders the bootstrap and builds the body it says)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.inbound import Arrival
from gateway.outbound import OutboundPlan, RewritePlan, plan, prepare_for_rewrite

OWN = "www.shop.test"
PAGE = "https://www.shop.test/cart"
TARGETS = ("checkout.pay.test", "*.partner.test")
HTML = "text/html; charset=utf-8"

COOKIE = Arrival(
    redirect=None,
    target="/cart",
    aid="aid-1",
    uid="uid-1",
    write_aid=None,
    write_uid=None,
    minted=False,
    source="cookie",
    cookies_withheld=False,
)
MINTED = replace(COOKIE, aid="new-1", uid=None, minted=True, source="minted")
FROM_URL = replace(COOKIE, write_aid="aid-1", write_uid="uid-1", source="url")
NOBODY = replace(COOKIE, aid=None, uid=None, source="none")
WITHHELD = replace(NOBODY, cookies_withheld=True)


def decide(
    arrival: Arrival = COOKIE,
    *,
    method: str = "GET",
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    accept: str | None = "gzip, br",
    targets: tuple[str, ...] = TARGETS,
    mint: bool = True,
    bootstrap: bool = True,
) -> OutboundPlan:
    asked: list[int] = []

    def page_url() -> str:
        asked.append(1)
        return PAGE

    decided = plan(
        method=method,
        status=status,
        headers=CIMultiDict(headers if headers is not None else [("Content-Type", HTML)]),
        accept_encoding=accept,
        arrival=arrival,
        own_host=OWN,
        page_url=page_url,
        targets=targets,
        mint=mint,
        bootstrap=bootstrap,
    )
    # The page URL is built only for a redirect that may need decorating.
    redirect = 300 <= status < 400 and any(n.lower() == "location" for n, _ in headers or [])
    assert bool(asked) == (redirect and bool(arrival.aid) and bool(targets))
    return decided


def test_html_page_of_a_known_visitor_is_rewritten_and_its_cookie_renewed() -> None:
    decided = decide()
    assert decided.redirect_target is None
    assert (decided.cookie_aid, decided.cookie_uid) == ("aid-1", "uid-1")
    assert decided.rewrite == RewritePlan(
        bootstrap=True,
        nonce=None,
        links=True,
        idless=False,
        coding="",
        output_coding="",
        charset="utf-8",
        build_body=True,
    )
    assert decided.skipped is None


def test_non_html_only_writes_ids_from_the_url() -> None:
    assert decide(headers=[("Content-Type", "image/png")]) == OutboundPlan(
        None, None, None, None, None
    )
    from_url = decide(FROM_URL, headers=[("Content-Type", "image/png")])
    assert (from_url.cookie_aid, from_url.cookie_uid, from_url.rewrite) == ("aid-1", "uid-1", None)


def test_minting_off_writes_only_what_the_url_brought() -> None:
    assert (decide(mint=False).cookie_aid, decide(FROM_URL, mint=False).cookie_aid) == (
        None,
        "aid-1",
    )


@pytest.mark.parametrize(
    ("location", "hit"),
    [
        ("https://checkout.pay.test/pay", "checkout.pay.test"),
        ("https://eu.partner.test/x", "*.partner.test"),
        ("/local", None),
        ("https://elsewhere.test/", None),
    ],
)
def test_redirects_to_targets_are_found(location: str, hit: str | None) -> None:
    decided = decide(status=302, headers=[("Location", location)])
    assert decided.redirect_target == hit
    assert decided.rewrite is None


def test_a_minted_id_handed_to_another_domain_is_also_kept_here() -> None:
    to_target = decide(MINTED, status=302, headers=[("Location", "https://checkout.pay.test/")])
    assert to_target.cookie_aid == "new-1"
    local = decide(MINTED, status=302, headers=[("Location", "/elsewhere")])
    assert local.cookie_aid is None


def test_no_redirect_decoration_without_an_id_or_targets() -> None:
    loc = [("Location", "https://checkout.pay.test/")]
    assert decide(NOBODY, status=302, headers=loc).redirect_target is None
    assert decide(status=302, headers=loc, targets=()).redirect_target is None


def test_cookies_withheld_page_gets_an_idless_bootstrap_and_no_links() -> None:
    decided = decide(WITHHELD, method="POST")
    assert decided.rewrite is not None
    assert decided.rewrite.idless and decided.rewrite.bootstrap and not decided.rewrite.links
    assert decided.cookie_aid is None
    # Without a bootstrap there is nothing to do to such a page.
    assert decide(WITHHELD, method="POST", bootstrap=False).rewrite is None


def test_csp_decides_the_bootstrap_and_its_nonce() -> None:
    blocked = decide(
        headers=[("Content-Type", HTML), ("Content-Security-Policy", "script-src 'self'")]
    )
    assert blocked.rewrite is not None
    assert not blocked.rewrite.bootstrap and blocked.rewrite.links
    nonce = decide(
        headers=[("Content-Type", HTML), ("Content-Security-Policy", "script-src 'nonce-abc123'")]
    )
    assert nonce.rewrite is not None and nonce.rewrite.nonce == "abc123"
    # Nothing to inject and nothing to decorate: nothing to rewrite.
    assert (
        decide(
            headers=[("Content-Type", HTML), ("Content-Security-Policy", "script-src 'self'")],
            targets=(),
        ).rewrite
        is None
    )


def test_codings() -> None:
    gz = decide(headers=[("Content-Type", HTML), ("Content-Encoding", "gzip")], accept="gzip")
    assert gz.rewrite is not None
    assert (gz.rewrite.coding, gz.rewrite.output_coding) == ("gzip", "gzip")
    plain = decide(headers=[("Content-Type", HTML), ("Content-Encoding", "br")], accept="gzip")
    assert plain.rewrite is not None and plain.rewrite.output_coding == ""
    unknown = decide(headers=[("Content-Type", HTML), ("Content-Encoding", "compress")])
    assert unknown.rewrite is None and unknown.skipped == "unknown_coding"
    # A site that rewrites nothing skips nothing.
    nothing = decide(
        headers=[("Content-Type", HTML), ("Content-Encoding", "compress")],
        targets=(),
        bootstrap=False,
    )
    assert nothing.skipped is None


def test_head_gets_the_headers_of_its_get_but_no_body() -> None:
    head = decide(method="HEAD")
    assert head.rewrite is not None and not head.rewrite.build_body
    assert replace(head.rewrite, build_body=True) == decide().rewrite


@pytest.mark.parametrize("status", [204, 206, 304, 101])
def test_responses_without_a_page_are_not_rewritten(status: int) -> None:
    assert decide(status=status).rewrite is None


def test_prepare_for_rewrite() -> None:
    headers = CIMultiDict(
        [("Content-Length", "10"), ("ETag", '"x"'), ("Content-Encoding", "br"), ("Vary", "Cookie")]
    )
    rewrite = RewritePlan(True, None, True, False, "br", "", None, True)
    prepare_for_rewrite(rewrite, headers)
    assert "Content-Length" not in headers and "Content-Encoding" not in headers
    assert headers["ETag"] == 'W/"x"'
    assert "Accept-Encoding" in headers["Vary"]


@given(
    arrival=st.sampled_from([COOKIE, MINTED, FROM_URL, NOBODY, WITHHELD]),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    status=st.sampled_from([200, 204, 301, 302, 304, 404, 500]),
    content_type=st.sampled_from([HTML, "application/json", "application/xhtml+xml"]),
    mint=st.booleans(),
    bootstrap=st.booleans(),
)
def test_property_nothing_personal_for_a_visitor_without_an_id(
    arrival: Arrival, method: str, status: int, content_type: str, mint: bool, bootstrap: bool
) -> None:
    """No id, no identity: nothing is written or decorated for a visitor the gateway has no
    id for, and links are never decorated on a page served without one."""
    decided = decide(
        arrival,
        method=method,
        status=status,
        headers=[("Content-Type", content_type), ("Location", "https://checkout.pay.test/")],
        mint=mint,
        bootstrap=bootstrap,
    )
    if arrival.aid is None:
        assert decided.redirect_target is None
        assert (decided.cookie_aid, decided.cookie_uid) == (None, None)
        assert decided.rewrite is None or not decided.rewrite.links
    if decided.cookie_aid is not None and arrival.write_aid is None:
        assert mint
