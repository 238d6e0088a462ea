"""12. Identity that survives real browsers, in headless Chromium, through the real gateway, with
the real analytics.js: the server-only copy of the id, consent, prefetch-safe links and the
rescue of undecorated arrivals (and what Chromium's bounce-tracking mitigation makes of it).

This module runs its own gateway process: it overrides the session ``gateway`` fixture of
conftest.py with one whose configuration is the usual one (same sites, same stand-in) except:

- B (checkout.pay-b.test) is a ``token`` target with single-use tokens, and has ``rescue: true``;
- a consent manager's cookie is configured (``OptanonConsent``, granted by its performance
  group ``C0002:1``), and C (auth.id-c.test) requires it (``sites[].consent.required``).

GPC is honoured (the default). Journeys:

12.1 the readable cookie and localStorage are cleared (as Safari's caps do): the id comes back;
12.2 ``analytics.reset()`` on A: the new id wins over the server-only copy and goes to B;
12.3 GPC: no id, no cookie, no decoration, no analytics.js; arriving identity still removed;
12.4 the consent cookie on C: denied, then granted;
12.5 a page that prefetches its links (``<link rel=prefetch>``) before the click on a single-use
     token link: the click still carries the id;
12.6 a navigation made by page JavaScript from A to B (undecorated): B gets A's id through the
     rescue round trip;
12.7 Chromium's bounce-tracking mitigation (third-party cookies blocked, short grace period):
     the rescue chain is no bounce, a chain through a third site is, and that site loses its
     cookies.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.rescue import GUARD_COOKIE, RESCUE_PATH
from tests.conftest import GatewayProcess, spawn_gateway

from .conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    Journey,
    Sites,
    gateway_config,
    query_of,
    skip_unless_ready,
)
from .segment_stand_in import StandIn
from .sites import HOST_A, HOST_B, HOST_C

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Request

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SHADOW = "ajs_gw_aid"
CONSENT = {"name": "OptanonConsent", "granted": "groups=[^&]*C0002:1"}
GRANTED = "isGpcEnabled=0&groups=C0001%3A1%2CC0002%3A1"
DENIED = "isGpcEnabled=0&groups=C0001%3A1%2CC0002%3A0"


def identity_config(sites: Sites, stand_in: StandIn) -> str:
    config = yaml.safe_load(gateway_config(sites, stand_in))
    for site in config["sites"]:
        if site["host"] == HOST_B:
            site["rescue"] = True
        if site["host"] == HOST_C:
            site["consent"] = {"required": True}
    config["cross_domains"] = [
        {"host": host, "strategy": "token"} if host == HOST_B else host
        for host in config["cross_domains"]
    ]
    config["tokens"] = {"ttl_seconds": 300, "single_use": True}
    config["consent"] = {"cookie": CONSENT}
    return yaml.safe_dump(config, sort_keys=False)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    sites: Sites, stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """Overrides conftest's ``gateway`` for this module (see the module docstring)."""
    path = tmp_path_factory.mktemp("e2e-browser-identity") / "domains.yaml"
    path.write_text(identity_config(sites, stand_in))
    process = await asyncio.to_thread(spawn_gateway, path)
    previous = sites.origins.gateway_port
    sites.origins.gateway_port = process.port
    yield process
    sites.origins.gateway_port = previous
    await asyncio.to_thread(process.stop)


# --- helpers ------------------------------------------------------------------------------


async def cookies_named(j: Journey, origin: str, name: str) -> list[dict[str, Any]]:
    return [c for c in await j.context.cookies(origin) if c["name"] == name]


async def shadow_of(j: Journey, origin: str) -> str | None:
    """The server-only copy the browser holds for ``origin``, checked to be HttpOnly."""
    (found,) = await cookies_named(j, origin, SHADOW) or [None]
    if found is None:
        return None
    assert found["httpOnly"], found
    return str(found["value"])


async def metric(j: Journey, name: str, **labels: str) -> float:
    """One sample from the gateway's /metrics (0 when it is not there)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{j.gateway.admin_port}/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def record_requests(j: Journey) -> list[Request]:
    seen: list[Request] = []

    def on_request(request: Request) -> None:
        seen.append(request)

    j.context.on("request", on_request)
    return seen


async def consent_cookie(j: Journey, domain: str, value: str) -> None:
    await j.context.add_cookies(
        [{"name": "OptanonConsent", "value": value, "domain": domain, "path": "/"}]
    )


# --- 12.1 and 12.2: the server-only copy ---------------------------------------------------


async def test_the_id_survives_cleared_script_storage(journey: Journey) -> None:
    """12.1 Safari deletes what scripts wrote (the readable cookie after 7 days, localStorage):
    the gateway's HttpOnly copy brings the id back, and every event carries it."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    assert UUID4.fullmatch(aid)
    await j.cookie_check(o.a, aid)
    assert await shadow_of(j, o.a) == aid
    assert SHADOW not in await j.page.evaluate("document.cookie")

    await j.context.clear_cookies(name="ajs_anonymous_id")
    await j.page.evaluate("localStorage.clear()")
    assert await j.cookie_id(o.a) is None
    j.stand_in.reset()

    await j.goto(o.a + "/checkout")
    assert await j.arrived(HOST_A) == aid
    await j.cookie_check(o.a, aid)
    assert await j.local_storage_id() == aid
    j.assert_one_id(aid, {HOST_A})
    assert await metric(j, "gateway_identity_source_total", site=HOST_A, source="shadow") >= 1
    j.assert_healthy()


async def test_an_id_the_page_resets_wins_and_goes_to_the_other_domain(journey: Journey) -> None:
    """12.2 analytics.reset() on A: the readable cookie holds the new id at once (the
    bootstrap asks analytics.js for it), the server-only copy follows it on the next request
    instead of bringing the old one back, and B gets the new id."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    old = await j.arrived(HOST_A)
    assert await shadow_of(j, o.a) == old

    await j.page.evaluate("analytics.reset()")
    # Nothing asked analytics.js for an id, yet the readable cookie holds a new one already.
    new = await j.cookie_id(o.a)
    assert new is not None and new != old and UUID4.fullmatch(new), new
    assert await j.page.evaluate("analytics.user().anonymousId()") == new
    j.stand_in.reset()

    # At once, without any event in between: the new id is the one the gateway sees.
    await j.page.reload(wait_until="load")
    assert await j.arrived(HOST_A) == new
    assert await shadow_of(j, o.a) == new
    await j.cookie_check(o.a, new)

    await j.follow("#to-b")
    assert await j.arrived(HOST_B) == new
    await j.cookie_check(o.b, new)
    assert await shadow_of(j, o.b) == new
    j.assert_one_id(new, {HOST_A, HOST_B})
    j.assert_healthy()


# --- 12.3 and 12.4: consent ------------------------------------------------------------------


async def test_global_privacy_control_means_no_identity(journey: Journey) -> None:
    """12.3 A visitor whose browser sends Sec-GPC: 1 gets no id, no identity cookie and no
    decorated link, and no analytics.js from the gateway; identity arriving in a URL is
    removed all the same, without a cookie."""
    j, o = journey, journey.origins
    await j.context.set_extra_http_headers({"Sec-GPC": "1"})
    requests = record_requests(j)
    await j.goto(o.a + "/")
    assert await j.page.text_content("h1") == "Shop A"
    assert await j.page.get_attribute("#to-b", "href") == o.b + "/welcome?from=a"
    assert await j.page.evaluate("typeof window.analytics") == "undefined"
    assert await j.context.cookies() == []

    carried = str(uuid.uuid4())
    response = await j.page.goto(o.b + f"/product/7?ajs_aid={carried}", wait_until="load")
    assert response is not None
    redirect = await response.request.redirected_from.response()  # type: ignore[union-attr]
    assert redirect is not None and redirect.status == 302
    assert "set-cookie" not in await redirect.all_headers()
    assert j.page.url == o.b + "/product/7"
    assert await j.context.cookies() == []

    # Following a link (the bootstrap decorates nothing either).
    await j.goto(o.a + "/dynamic")
    await j.page.wait_for_selector("#late")
    await j.follow("#late")
    assert j.page.url == o.b + "/from-js?via=script"
    assert await j.context.cookies() == []
    assert not [r.url for r in requests if urlsplit(r.url).hostname not in (HOST_A, HOST_B)]
    assert j.stand_in.events == []
    assert await metric(j, "gateway_consent_refused_total", site=HOST_A, reason="gpc") >= 2
    j.assert_healthy()


@pytest.mark.parametrize("answer", ["denied", "granted"])
async def test_a_consent_managers_cookie_decides_where_consent_is_required(
    journey: Journey, answer: str
) -> None:
    """12.4 C requires consent: with the consent manager's cookie saying no, nothing; saying
    yes, an id that C's sign-in hands on to B."""
    j, o = journey, journey.origins
    await consent_cookie(j, ".id-c.test", DENIED if answer == "denied" else GRANTED)
    await j.goto(o.c + "/login?" + "return_to=" + quote(o.b + "/account", safe=""))
    if answer == "denied":
        assert await j.page.evaluate("typeof window.analytics") == "undefined"
        names = {c["name"] for c in await j.context.cookies(o.c)}
        assert names == {"OptanonConsent"}
        assert j.stand_in.events == []
        reason = "denied"
        assert await metric(j, "gateway_consent_refused_total", site=HOST_C, reason=reason) >= 1
    else:
        aid = await j.arrived(HOST_C)
        await j.cookie_check(o.c, aid)
        assert await shadow_of(j, o.c) == aid
        await j.follow("#login-go")
        assert await j.arrived(HOST_B) == aid
        j.assert_one_id(aid, {HOST_B, HOST_C})
    j.assert_healthy()


# --- 12.5: prefetch ------------------------------------------------------------------------


async def test_a_prefetched_single_use_token_link_still_carries_the_id(journey: Journey) -> None:
    """12.5 A's page prefetches its link to B, decorated with a single-use token, before the
    visitor clicks: the prefetch is refused (and consumes nothing), the click carries the id."""
    j, o = journey, journey.origins
    prefetches: list[Request] = []

    def on_request(request: Request) -> None:
        if urlsplit(request.url).hostname == HOST_B and "ajs_token" in request.url:
            prefetches.append(request)

    j.context.on("request", on_request)
    before = await metric(j, "gateway_speculative_requests_total", site=HOST_B, kind="prefetch")
    await j.goto(o.a + "/prefetching")
    aid = await j.arrived(HOST_A)
    href = await j.page.get_attribute("#to-b", "href") or ""
    assert query_of(href).keys() == {"from", "ajs_token"}, href
    # The browser prefetches the decorated link, announcing it.
    await j.page.wait_for_function(
        "() => document.querySelector('link[rel=prefetch]') !== null", timeout=TIMEOUT_MS
    )
    for _ in range(100):
        if prefetches and await prefetches[0].response() is not None:
            break
        await asyncio.sleep(0.05)
    assert prefetches, "the browser did not prefetch the link"
    headers = await prefetches[0].all_headers()
    assert headers.get("sec-purpose") == "prefetch", headers
    prefetched = await prefetches[0].response()
    assert prefetched is not None and prefetched.status == 503
    after = await metric(j, "gateway_speculative_requests_total", site=HOST_B, kind="prefetch")
    assert after == before + 1
    assert j.sites.seen[HOST_B].requests == []

    chain = await j.follow("#to-b")
    assert [(h.method, h.status) for h in chain] == [("GET", 302), ("GET", 200)], chain
    assert chain[0].url == href
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    # The refused prefetch is the browser's only complaint.
    j.console_errors[:] = [e for e in j.console_errors if "503" not in e]
    j.assert_healthy()


# --- 12.6 and 12.7: rescue -----------------------------------------------------------------


async def test_a_navigation_made_by_page_javascript_keeps_the_id(journey: Journey) -> None:
    """12.6 A's script sends the visitor to B with location.href (nothing to decorate): B
    sends the visitor through A's rescue endpoint once, comes back with a token for B, and
    the page on B carries A's id."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/js-nav")
    aid = await j.arrived(HOST_A)

    chain = await j.follow("#go")
    target = o.b + "/from-js?via=location"
    assert [(h.method, h.status) for h in chain] == [("GET", 302)] * 3 + [("GET", 200)], chain
    assert chain[0].url == target
    assert chain[0].location == f"{o.a}{RESCUE_PATH}?back={quote(target, safe='')}"
    via = urlsplit(chain[1].url)
    assert (via.hostname, via.path) == (HOST_A, RESCUE_PATH)
    back = query_of(chain[2].url)
    assert back.keys() == {"via", "ajs_token", "ajs_rescued"}, chain[2]
    assert aid not in chain[2].url
    assert j.page.url == target
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    assert await cookies_named(j, o.b, GUARD_COOKIE)
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/from-js?via=location"]
    j.assert_one_id(aid, {HOST_A, HOST_B})
    assert await metric(j, "gateway_rescues_total", site=HOST_B, outcome="rescued") >= 1
    assert await metric(j, "gateway_identity_source_total", site=HOST_B, source="rescue") >= 1
    j.assert_healthy()


async def _bounce_flows(context: BrowserContext, j: Journey) -> tuple[list[str], list[str]]:
    """In ``context``: the rescue (A → B → A's endpoint → B) and a control chain through a
    third site, C's redirect service, which the gateway gives a cookie (A → C → B). Returns
    the URLs each ended on."""
    o = j.origins
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    ends = []
    for start, go in (
        (o.a + "/js-nav", "#go"),
        (o.a + "/", None),
    ):
        await page.goto(start, wait_until="load")
        await page.wait_for_function("() => window.analytics && window.analytics.initialized")
        async with page.expect_navigation(wait_until="load"):
            if go is not None:
                await page.click(go)
            else:
                hub = o.c + "/go?to=" + quote(o.b + "/welcome?from=hub", safe="")
                await page.evaluate("url => { location.href = url }", hub)
        ends.append(page.url)
    return ends, [o.b + "/from-js?via=location", o.b + "/welcome?from=hub"]


async def test_chromium_sees_no_bounce_in_a_rescue_and_one_through_a_third_site(
    journey: Journey, browser: Browser, tmp_path: Path
) -> None:
    """12.7 With third-party cookies blocked, Chromium's bounce-tracking mitigation deletes the
    storage of a site a navigation only bounced through. It never counts the navigation's
    initial and final sites: the rescue (initial A, final B, through B and A) is no bounce, so
    A and B keep their cookies; the control through C, a third site, is one, and C loses its
    cookies. The rescue runs first: when Chromium clears C, any bounce it had recorded for A or
    B is past its grace period too, and would have been cleared with it."""
    j, o = journey, journey.origins
    profile = tmp_path / "profile"
    context = await browser.browser_type.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=[
            *CHROMIUM_ARGS,
            "--test-third-party-cookie-phaseout",
            "--enable-features=DIPS:grace_period/1s/timer_delay/1s",
        ],
        headless=True,
    )
    try:
        # C requires consent: the visitor gave it there (so the gateway gives C a cookie when
        # the visitor passes through).
        await context.add_cookies(
            [{"name": "OptanonConsent", "value": GRANTED, "domain": ".id-c.test", "path": "/"}]
        )
        ends, expected = await _bounce_flows(context, j)
        assert ends == expected
        before = {c["domain"]: c["name"] for c in await context.cookies()}
        assert any(
            d.endswith("id-c.test") and n == "ajs_anonymous_id"
            for d, n in ((c["domain"], c["name"]) for c in await context.cookies())
        ), before
        # Chromium's timer deletes the bounce tracker's storage after the grace period.
        for _ in range(100):
            domains = {c["domain"] for c in await context.cookies()}
            if not any(d.endswith("id-c.test") for d in domains):
                break
            await asyncio.sleep(0.2)
        domains = {c["domain"] for c in await context.cookies()}
        assert not any(d.endswith("id-c.test") for d in domains), domains
        assert any(d.endswith("shop-a.test") for d in domains), domains
        assert any(d.endswith("pay-b.test") for d in domains), domains
        assert await context.cookies(o.b) and await context.cookies(o.a)
    finally:
        await context.close()
