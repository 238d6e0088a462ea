"""11. Identity the visitor never brought, in headless Chromium, through the real gateway, with
the real analytics.js: what another site can do to A's visitor by sending them to A.

- A cross-site POST (an attacker's auto-submitted form) or a crafted link whose URL carries
  ``ajs_aid``, ``ajs_uid``, ``ajs_event``, ``ajs_prop_*`` and ``ajs_trait_*``: analytics.js
  reads those from the address bar on its own, so without the bootstrap's clean-up they would
  plant an id, a user id and an event past the site's ``accept`` rules (finding F7).
- A cross-site POST-back (a payment processor's 3-D Secure return, an OIDC ``form_post``):
  the browser withholds A's ``SameSite=Lax`` cookies on it, and an id minted for that request
  would overwrite the visitor's own (finding F8).

This module runs its own gateway process: it overrides the session ``gateway`` fixture of
conftest.py with one whose configuration is the usual one (same sites, same stand-in) except
that A (www.shop-a.test) has ``accept: [signed, token]``, so a plain ``ajs_aid`` in a URL is
nothing A trusts. The attacker's site (``evil.attacker-e.test``) is answered by the test itself
through Playwright's request routing, so it needs no server and no host-resolver rule.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import pytest_asyncio
import yaml

from tests.conftest import GatewayProcess, spawn_gateway

from .conftest import Journey, Sites, gateway_config, skip_unless_ready
from .segment_stand_in import Event, StandIn
from .sites import HOST_A

if TYPE_CHECKING:
    from playwright.async_api import Request, Route

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ATTACKER = "http://evil.attacker-e.test"
FORGED_AID = "FORGED-BY-ATTACKER"
FORGED_UID = "ceo@victim.example"
# Everything analytics.js' query-string feature acts on: an id, a user id with a trait, and
# an event with a property.
FORGED_PARAMS = (
    "ajs_aid=FORGED-BY-ATTACKER&ajs_uid=ceo%40victim.example&ajs_trait_email=ceo%40victim.example"
    "&ajs_event=Order%20Completed&ajs_prop_revenue=99999"
)
FORGED_TRACES = (FORGED_AID, "victim.example", "Order Completed", "99999")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    sites: Sites, stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """Overrides conftest's ``gateway`` for this module (see the module docstring)."""
    config = yaml.safe_load(gateway_config(sites, stand_in))
    (site_a,) = [site for site in config["sites"] if site["host"] == HOST_A]
    site_a["accept"] = ["signed", "token"]
    path = tmp_path_factory.mktemp("e2e-security") / "domains.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = await asyncio.to_thread(spawn_gateway, path)
    previous = sites.origins.gateway_port
    sites.origins.gateway_port = process.port
    yield process
    sites.origins.gateway_port = previous
    await asyncio.to_thread(process.stop)


# --- helpers ------------------------------------------------------------------------------


async def serve_attacker_page(j: Journey, action: str) -> str:
    """The attacker's page, answered by the test: a form that POSTs itself to ``action`` as
    soon as it is parsed. Returns its URL."""
    text = (
        "<!DOCTYPE html><html><head><link rel=icon href='data:,'></head><body>"
        f'<form id="f" method="post" action="{html.escape(action, quote=True)}">'
        '<input name="a" value="b"></form>'
        "<script>document.getElementById('f').submit()</script></body></html>"
    )

    async def answer(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=text)

    await j.context.route(ATTACKER + "/**", answer)
    return ATTACKER + "/win-a-prize"


async def cross_site_post(j: Journey, start: str, path: str) -> Request:
    """Open ``start`` on another site, whose form POSTs the browser to ``path`` on A; wait
    until that page has loaded. Returns the POST as the browser sent it, after checking that
    it is the case in question: cross-site, without A's cookies."""

    def is_post(request: Request) -> bool:
        return request.method == "POST" and urlsplit(request.url).path == path

    async with j.page.expect_request(is_post) as posted:
        await j.page.goto(start, wait_until="commit")
    request = await posted.value
    await j.page.wait_for_url(lambda url: urlsplit(url).path == path, wait_until="load")
    # No Sec-Fetch-Site here: Chromium sends it to secure origins only, and these are http.
    headers = await request.all_headers()
    assert urlsplit(headers.get("origin", "")).hostname == urlsplit(start).hostname, headers
    assert "ajs_anonymous_id" not in headers.get("cookie", ""), f"A's cookie was sent: {headers}"
    return request


async def page_event(j: Journey, path: str, timeout: float = 10.0) -> Event:
    """The first ``page`` event the stand-in got from A's page at ``path``."""

    async def first() -> Event:
        while True:
            for event in j.stand_in.events:
                url = urlsplit(event.page_url)
                if event.type == "page" and url.hostname == HOST_A and url.path == path:
                    return event
            j.stand_in.changed.clear()
            await j.stand_in.changed.wait()

    try:
        return await asyncio.wait_for(first(), timeout)
    except TimeoutError:
        seen = [(e.type, e.page_url) for e in j.stand_in.events]
        raise AssertionError(f"no page event from {path} in {timeout}s; got {seen}") from None


def ajs_params(url: str) -> list[str]:
    """Every ``ajs_`` parameter analytics.js could read from ``url``: its query, and the
    query-like tail of its fragment."""
    parts = urlsplit(url)
    tail = parts.fragment.rpartition("?")[2] if "?" in parts.fragment else ""
    names = [k for query in (parts.query, tail) for k, _ in parse_qsl(query)]
    return [name for name in names if name.startswith("ajs_")]


def assert_nothing_forged(j: Journey, aid: str) -> None:
    """Segment got events from A, all with ``aid`` and no user id, none of them an identify
    or a track, and no trace of the forged values anywhere in them."""
    j.assert_one_id(aid, {HOST_A})
    events = j.stand_in.events
    assert [e.type for e in events if e.type != "page"] == [], [e.body for e in events]
    for event in events:
        assert event.body.get("userId") is None, event.body
        text = json.dumps(event.body)
        assert not [t for t in FORGED_TRACES if t in text], f"forged values reached Segment: {text}"
        assert ajs_params(event.page_url) == [], event.page_url


async def assert_user_id_absent(j: Journey) -> None:
    assert await j.page.evaluate("analytics.user().id()") is None
    names = {c["name"] for c in await j.context.cookies(j.origins.a)}
    assert "ajs_user_id" not in names, names


# --- the journeys ---------------------------------------------------------------------------


async def test_cross_site_post_cannot_plant_identity_or_events(journey: Journey) -> None:
    """11.1 (F7) The visitor has an id on A; an attacker's page auto-submits a POST form to A
    whose URL carries a forged id, user id, trait, event and property. A page answered to a
    POST gets no clean-up redirect, so the parameters arrive in the address bar; the bootstrap
    removes them before analytics.js starts and loads it with ``useQueryString: false``.
    The browser withheld A's cookie, so no id is minted over the visitor's either (F8). The
    visitor keeps their id, and Segment hears of none of it."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)

    start = await serve_attacker_page(j, f"{o.a}/confirmation?order=42&{FORGED_PARAMS}&x=%7E#top")
    request = await cross_site_post(j, start, "/confirmation")
    assert ajs_params(request.url) != [], request.url
    # Every other part of the URL is kept as it was: order, encoding, fragment.
    assert j.page.url == o.a + "/confirmation?order=42&x=%7E#top"
    assert await j.page.text_content("#order") == "Thank you for order 42."
    assert await j.analytics_id() == aid
    await assert_user_id_absent(j)
    await page_event(j, "/confirmation")
    await j.cookie_check(o.a, aid)

    await j.goto(o.a + "/")
    assert await j.analytics_id() == aid
    await page_event(j, "/")
    await j.cookie_check(o.a, aid)
    await assert_user_id_absent(j)
    assert_nothing_forged(j, aid)
    j.assert_healthy()


LINKS = {
    # The gateway's clean-up redirect takes only identity parameters, not events.
    "query": (
        "/confirmation?order=42&ajs_event=Order%20Completed&ajs_prop_revenue=99999",
        "/confirmation?order=42",
    ),
    # analytics.js reads a fragment's query when the URL has none; the server never sees it.
    "fragment": (f"/checkout#/deals?{FORGED_PARAMS}", "/checkout#/deals"),
}


@pytest.mark.parametrize("link", LINKS.values(), ids=LINKS.keys())
async def test_crafted_link_cannot_plant_identity_or_events(
    journey: Journey, link: tuple[str, str]
) -> None:
    """11.2 (F7) A plain link to A with ``ajs_`` parameters where the gateway cannot take them
    out: events in the query, anything in the fragment. The address bar is cleaned before
    analytics.js starts, and nothing forged reaches Segment."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)

    crafted, cleaned = link
    await j.goto(o.a + crafted)
    assert j.page.url == o.a + cleaned
    assert await j.analytics_id() == aid
    await assert_user_id_absent(j)
    await page_event(j, urlsplit(o.a + cleaned).path)
    await j.cookie_check(o.a, aid)
    assert_nothing_forged(j, aid)
    j.assert_healthy()


async def test_cross_site_post_back_keeps_the_visitor_id(journey: Journey) -> None:
    """11.3 (F8) The visitor has an id on A, pays on the processor's site and is sent back by an
    auto-submitted POST form (3-D Secure). The browser withholds A's cookies on that POST, so
    the gateway does not know the id there: it must not mint one, nor overwrite the cookie.
    analytics.js keeps the visitor's id on that page and the next."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/checkout")
    aid = await j.arrived(HOST_A)

    back = o.a + "/confirmation?order=42"
    start = o.psp + "/post-back?" + urlencode({"return": back})
    request = await cross_site_post(j, start, "/confirmation")
    response = await request.response()
    assert response is not None and response.status == 200
    assert "ajs_anonymous_id" not in (await response.header_value("set-cookie") or "")
    assert j.page.url == back
    assert await j.page.text_content("#order") == "Thank you for order 42."
    assert await j.analytics_id() == aid
    await page_event(j, "/confirmation")
    await j.cookie_check(o.a, aid)

    await j.goto(o.a + "/")
    assert await j.arrived(HOST_A) == aid
    await j.cookie_check(o.a, aid)
    posts = [s for s in j.sites.seen[HOST_A].requests if s.method == "POST"]
    assert [(s.path_qs, s.form) for s in posts] == [("/confirmation?order=42", {"status": "paid"})]
    j.assert_one_id(aid, {HOST_A})
    j.assert_healthy()


async def test_first_page_is_a_cross_site_post_back(journey: Journey) -> None:
    """11.4 (F8) A visitor whose first page on A is a cross-site POST-back (no cookie at all,
    or one the browser withheld: the gateway cannot tell). The gateway writes no id there;
    analytics.js makes its own, and the gateway adopts it on the next page."""
    j, o = journey, journey.origins
    back = o.a + "/confirmation?order=7"
    start = o.psp + "/post-back?" + urlencode({"return": back})
    request = await cross_site_post(j, start, "/confirmation")
    response = await request.response()
    assert response is not None
    assert "ajs_anonymous_id" not in (await response.header_value("set-cookie") or "")
    aid = await j.analytics_id()
    assert UUID4.fullmatch(aid), f"analytics.js' own id is not a UUID v4: {aid!r}"
    await page_event(j, "/confirmation")
    assert await j.cookie_id(o.a) == aid

    await j.goto(o.a + "/")
    assert await j.arrived(HOST_A) == aid
    await j.cookie_check(o.a, aid)
    j.assert_one_id(aid, {HOST_A})
    j.assert_healthy()
