"""Visitor journeys across domains in headless Chromium, through the real gateway, with the
real analytics.js: one anonymousId everywhere, on the wire and in what Segment receives.

Each journey starts from an empty browser profile. On every page it checks what analytics.js
reports (``analytics.user().anonymousId()`` once ready), the cookies the browser holds for
each domain, that the address bar carries no identity parameter, and finally that the
Segment stand-in received events from every domain visited, all with the one id.

Hosts: A = www.shop-a.test, B = checkout.pay-b.test, C = auth.id-c.test (all behind the
gateway), PSP = thirdparty.psp-d.test (a third party, not behind it); see sites.py.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote, urlencode

import pytest

from .conftest import Journey, query_of, skip_unless_ready
from .sites import HOST_A, HOST_B, HOST_C, HOST_PSP, TAMPERED_AID

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


async def test_first_visit_mints_an_id_that_follows_a_link_to_b(journey: Journey) -> None:
    """1. No cookie on A: the gateway mints the id; a click to B keeps it."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    assert UUID4.fullmatch(aid), f"minted id is not a UUID v4: {aid!r}"
    await j.cookie_check(o.a, aid)
    assert await j.local_storage_id() == aid

    chain = await j.follow("#to-b")
    assert query_of(chain[0].url) == {"from": "a", "ajs_aid": aid}
    assert chain[0].status == 302, chain
    assert j.page.url == o.b + "/welcome?from=a"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    await j.cookie_check(o.a, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


@pytest.mark.parametrize("form", ["json-quoted", "plain"])
async def test_returning_visitor_keeps_the_id_analytics_js_wrote(
    journey: Journey, form: str
) -> None:
    """2. A's cookie written by analytics.js itself, old JSON-quoted (``%22id%22``) or plain."""
    j, o = journey, journey.origins
    aid = str(uuid.uuid4())
    value = quote(f'"{aid}"') if form == "json-quoted" else aid
    await j.context.add_cookies(
        [{"name": "ajs_anonymous_id", "value": value, "domain": ".shop-a.test", "path": "/"}]
    )
    await j.goto(o.a + "/")
    assert await j.arrived(HOST_A) == aid
    await j.cookie_check(o.a, aid)

    await j.follow("#to-b")
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


async def test_carried_id_replaces_a_stale_id_in_b_local_storage(journey: Journey) -> None:
    """3. B's localStorage (which analytics.js reads before its cookie) holds a different id
    from an earlier visit: after the journey from A, B reports the carried id."""
    j, o = journey, journey.origins
    await j.goto(o.b + "/")
    earlier = await j.arrived(HOST_B)
    stale = "stale-" + uuid.uuid4().hex
    await j.page.evaluate(
        "id => localStorage.setItem('ajs_anonymous_id', JSON.stringify(id))", stale
    )
    j.stand_in.reset()

    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    assert aid not in (earlier, stale)
    await j.follow("#to-b")
    assert await j.arrived(HOST_B) == aid
    assert await j.local_storage_id() == aid
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


@pytest.mark.parametrize("a_cookie", ["kept", "lost"])
async def test_payment_round_trip_through_a_third_party(journey: Journey, a_cookie: str) -> None:
    """4. A → the payment processor (not behind the gateway) → back to A's confirmation page
    on the return URL, carrying the id the gateway put on A's link to it: same id, clean URL.

    "lost": A's cookies are gone by the time the visitor comes back (Safari's caps, a
    privacy extension); A's localStorage still holds the id, so only the id carried in the
    return URL keeps it from being replaced by a freshly minted one."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/checkout")
    aid = await j.arrived(HOST_A)

    chain = await j.follow("#pay")
    assert [h.url for h in chain] == [j.page.url], "the PSP answers directly"
    assert query_of(j.page.url) == {
        "order": "42",
        "amount": "19.99",
        "return": o.a + "/confirmation?order=42",
        "ajs_aid": aid,
    }
    assert await j.page.evaluate("typeof window.analytics") == "undefined"
    if a_cookie == "lost":
        await j.context.clear_cookies(domain=".shop-a.test")
        assert await j.cookie_id(o.a) is None

    chain = await j.follow("#pay-go")
    assert [(h.method, h.status) for h in chain] == [("POST", 303), ("GET", 302), ("GET", 200)]
    assert query_of(chain[1].url) == {"order": "42", "ajs_aid": aid, "status": "paid"}
    assert chain[1].location == "/confirmation?order=42&status=paid"
    assert j.page.url == o.a + "/confirmation?order=42&status=paid"
    assert await j.arrived(HOST_A) == aid
    assert await j.page.text_content("#order") == "Thank you for order 42."
    await j.cookie_check(o.a, aid)
    assert [s.form.get("ajs_aid") for s in j.sites.seen[HOST_PSP].paths("/pay")] == [None, aid]
    j.assert_one_id(aid, {HOST_A})
    j.assert_healthy()


async def test_sign_in_round_trip_with_upstream_redirect_to_another_domain(
    journey: Journey,
) -> None:
    """5. A → sign-in on C (behind the gateway) → C's upstream answers 302 to B: the gateway
    decorates that Location, and B gets the id."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)

    await j.follow("#sign-in")
    assert j.page.url == o.c + "/login?" + urlencode({"return_to": o.b + "/account?welcome=1"})
    assert await j.arrived(HOST_C) == aid
    await j.cookie_check(o.c, aid)

    chain = await j.follow("#login-go")
    assert [(h.method, h.url.split("?")[0], h.status) for h in chain] == [
        ("POST", o.c + "/login", 302),
        ("GET", o.b + "/account", 302),
        ("GET", o.b + "/account", 200),
    ]
    assert query_of(chain[0].location or "") == {"welcome": "1", "ajs_aid": aid}
    assert j.page.url == o.b + "/account?welcome=1"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B, HOST_C})
    j.assert_healthy()


async def test_app_deep_link_id_is_adopted(journey: Journey) -> None:
    """6. App to web: a deep link with the app's id opens in a fresh profile; the web adopts
    the app's id, here an upper-case UUID as iOS makes them, and carries it on."""
    j, o = journey, journey.origins
    app_id = str(uuid.uuid4()).upper()
    await j.goto(o.b + "/product/7?" + urlencode({"utm_source": "app", "ajs_aid": app_id}))
    assert j.page.url == o.b + "/product/7?utm_source=app"
    assert await j.arrived(HOST_B) == app_id
    await j.cookie_check(o.b, app_id)

    await j.follow("#to-a")
    assert await j.arrived(HOST_A) == app_id
    await j.cookie_check(o.a, app_id)
    j.assert_one_id(app_id, {HOST_A, HOST_B})
    j.assert_healthy()


async def test_link_created_by_page_javascript_is_decorated_at_click_time(
    journey: Journey,
) -> None:
    """7. A cross-domain link that page JavaScript adds after load (the HTML rewriter never
    saw it) carries the id when clicked."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/dynamic")
    aid = await j.arrived(HOST_A)
    await j.page.wait_for_selector("#late")
    assert await j.page.get_attribute("#late", "href") == o.b + "/from-js?via=script"

    chain = await j.follow("#late")
    assert query_of(chain[0].url) == {"via": "script", "ajs_aid": aid}
    assert j.page.url == o.b + "/from-js?via=script"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/from-js?via=script"]
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


async def test_get_form_to_another_domain(journey: Journey) -> None:
    """8a. A GET form to B: the id travels as a hidden input, B's URL ends up clean."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/forms")
    aid = await j.arrived(HOST_A)

    chain = await j.follow("#search-go")
    assert query_of(chain[0].url) == {"q": "red shoes", "ajs_aid": aid}
    assert j.page.url == o.b + "/search?q=red+shoes"
    assert await j.arrived(HOST_B) == aid
    assert await j.page.text_content("#q") == "red shoes"
    await j.cookie_check(o.b, aid)
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/search?q=red+shoes"]
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


async def test_post_form_to_another_domain(journey: Journey) -> None:
    """8b. A POST form to B: the id travels in the action's query; B's upstream gets the form
    unchanged and answers Post/Redirect/Get, so the address bar ends up clean."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/forms")
    aid = await j.arrived(HOST_A)

    chain = await j.follow("#subscribe-go")
    assert [(h.method, h.status) for h in chain] == [("POST", 303), ("GET", 200)]
    assert query_of(chain[0].url) == {"ajs_aid": aid}
    assert j.page.url == o.b + "/subscribed"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    posts = [s for s in j.sites.seen[HOST_B].requests if s.method == "POST"]
    assert [(s.path_qs, s.form) for s in posts] == [
        ("/subscribe", {"email": "visitor@example.test"})
    ]
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


MALICIOUS = {
    "script": "<script>alert(1)</script>",
    "quotes": "\"'><img src=x onerror=alert(2)>",
    "long": "a" * 1024,
}


async def _assert_nothing_injected(j: Journey, payload: str) -> None:
    content = await j.page.content()
    for fragment in ("alert(", "onerror", payload[:64]):
        assert fragment not in content, f"{fragment!r} made it into {j.page.url}"
    assert await j.page.evaluate("document.querySelectorAll('img, svg').length") == 0


@pytest.mark.parametrize("payload", MALICIOUS.values(), ids=MALICIOUS.keys())
@pytest.mark.parametrize("profile", ["fresh", "returning"])
async def test_malicious_ajs_aid_in_the_url_is_refused(
    journey: Journey, payload: str, profile: str
) -> None:
    """10. A URL with a malicious ``ajs_aid``: no markup from it, no dialog, no console
    error; the visitor gets a fresh id or keeps theirs, and the URL is cleaned."""
    j, o = journey, journey.origins
    kept = str(uuid.uuid4())
    if profile == "returning":
        await j.context.add_cookies(
            [{"name": "ajs_anonymous_id", "value": kept, "domain": ".pay-b.test", "path": "/"}]
        )
    await j.goto(o.b + "/welcome?" + urlencode({"from": "ad", "ajs_aid": payload}))
    assert j.page.url == o.b + "/welcome?from=ad"
    aid = await j.arrived(HOST_B)
    if profile == "returning":
        assert aid == kept
    else:
        assert UUID4.fullmatch(aid), f"expected a freshly minted id, got {aid!r}"
    await _assert_nothing_injected(j, payload)
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_B})
    j.assert_healthy()


async def test_tampered_ajs_aid_in_a_link_is_replaced(journey: Journey) -> None:
    """10. A link on A's page already carrying a malicious ``ajs_aid``: the visitor's own id
    replaces it, so B gets A's id and nothing from the link's value."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/promo")
    aid = await j.arrived(HOST_A)
    await _assert_nothing_injected(j, TAMPERED_AID)

    chain = await j.follow("#tampered")
    assert query_of(chain[0].url) == {"from": "promo", "ajs_aid": aid}
    assert await j.arrived(HOST_B) == aid
    await _assert_nothing_injected(j, TAMPERED_AID)
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()
