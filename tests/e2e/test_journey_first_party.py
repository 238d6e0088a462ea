"""12. First-party delivery: a visitor whose browser blocks Segment, as blockers do.

In headless Chromium, through the real gateway, with the real analytics.js: every request to
the Segment stand-in's origin (which plays both the CDN and the tracking API) is aborted in
the browser, and so is every URL matching one of the EasyPrivacy path rules for Segment's URL
shapes (``/analytics.js/v1/``, ``/analytics.min.``, ... as firstparty.BLOCKED_PATTERNS lists
them). With ``analytics.first_party: true`` the gateway serves analytics.js, its settings and
the tracking API on each site's own origin, so the visitor's page and track events still reach
the stand-in, relayed by the gateway, with the visitor's id (a trackLink event too, whose code
is a lazily loaded chunk of the library, fetched from the site like the rest); and the
stand-in sees the visitor's address in ``X-Forwarded-For``.

The gateway here stands behind a front proxy, as in production: it trusts 127.0.0.1 as a
proxy, and the browser's requests carry ``X-Forwarded-For: 203.0.113.7`` as that proxy would
add it. The stand-in, reached by the gateway from 127.0.0.1, must see 203.0.113.7: the
visitor's address, not the gateway's.

C (auth.id-c.test) keeps first-party delivery off (``first_party: false`` on the site): the
negative control, where the same blocking stops analytics.js altogether.

This module runs its own gateway process (it overrides conftest's ``gateway``); the gateway
reaches the stand-in at 127.0.0.1, since only the browser resolves the test host names.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import yaml

from gateway.firstparty import BLOCKED_PATTERNS, default_path
from tests.conftest import GatewayProcess, spawn_gateway

from .conftest import WRITE_KEY, Journey, Sites, gateway_config, skip_unless_ready
from .segment_stand_in import StandIn
from .sites import HOST_A, HOST_B, HOST_C

if TYPE_CHECKING:
    from playwright.async_api import Route

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

VISITOR_ADDRESS = "203.0.113.7"  # TEST-NET-3 (RFC 5737): never a real visitor
PREFIX = default_path(WRITE_KEY)
SEGMENT_HOSTS = ("cdn.segment-stand-in.test", "cdn.segment.com", "api.segment.io")


def first_party_config(sites: Sites, stand_in: StandIn) -> str:
    """conftest's configuration with first-party delivery on (off for C), Segment reached by
    the gateway at 127.0.0.1, and 127.0.0.1 trusted as a front proxy."""
    config = yaml.safe_load(gateway_config(sites, stand_in))
    segment = f"http://127.0.0.1:{urlsplit(stand_in.origin).port}"
    config["analytics"].update(cdn_url=segment, api_url=segment, first_party=True)
    for site in config["sites"]:
        if site["host"] == HOST_C:
            site["first_party"] = False
    config["proxy"] = {"trusted_proxies": ["127.0.0.1/32"]}
    return yaml.safe_dump(config, sort_keys=False)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    sites: Sites, stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """Overrides conftest's ``gateway`` for this module (see the module docstring)."""
    path = tmp_path_factory.mktemp("e2e-first-party") / "domains.yaml"
    path.write_text(first_party_config(sites, stand_in))
    process = await asyncio.to_thread(spawn_gateway, path)
    previous = sites.origins.gateway_port
    sites.origins.gateway_port = process.port
    yield process
    sites.origins.gateway_port = previous
    await asyncio.to_thread(process.stop)


_BLOCKED = re.compile("|".join(re.escape(p) for p in BLOCKED_PATTERNS), re.IGNORECASE)


async def block_segment(j: Journey) -> list[str]:
    """Block Segment in the browser as a content blocker does: its hosts, and every URL an
    EasyPrivacy rule for Segment's URL shapes matches. Returns the list of blocked URLs, and
    makes the browser's requests carry the front proxy's X-Forwarded-For."""
    blocked: list[str] = []

    def refused(url: str) -> bool:
        return urlsplit(url).hostname in SEGMENT_HOSTS or _BLOCKED.search(url) is not None

    async def handle(route: Route) -> None:
        blocked.append(route.request.url)
        await route.abort("blockedbyclient")

    await j.context.route(refused, handle)
    await j.context.set_extra_http_headers({"X-Forwarded-For": VISITOR_ADDRESS})
    return blocked


async def test_events_reach_segment_through_the_site_when_segment_is_blocked(
    journey: Journey,
) -> None:
    j, o = journey, journey.origins
    blocked = await block_segment(j)
    requested: list[str] = []
    j.context.on("request", lambda request: requested.append(request.url))

    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    await j.page.evaluate("analytics.track('First-party', {on: 'a'})")
    await j.stand_in.wait_for(HOST_A, "track")
    # trackLink lives in a lazily loaded chunk (auto-track): it too comes from the site.
    await j.page.evaluate("analytics.trackLink(document.getElementById('to-b'), 'To B')")
    await j.page.wait_for_function(
        f"() => performance.getEntriesByType('resource')"
        f".some(e => e.name.includes('{PREFIX}/analytics-next/bundles/auto-track'))"
    )

    await j.follow("#to-b")
    assert await j.arrived(HOST_B) == aid
    await j.page.evaluate("analytics.track('First-party', {on: 'b'})")
    await j.stand_in.wait_for(HOST_B, "track")

    j.assert_one_id(aid, {HOST_A, HOST_B})
    kinds = {(e.host, e.type) for e in j.stand_in.events}
    assert {(HOST_A, "page"), (HOST_A, "track"), (HOST_B, "page"), (HOST_B, "track")} <= kinds
    clicked = [e for e in j.stand_in.events if e.body.get("event") == "To B"]
    assert len(clicked) == 1 and clicked[0].host == HOST_A, "trackLink's event"
    addresses = {e.forwarded_for for e in j.stand_in.events}
    assert addresses == {VISITOR_ADDRESS}, f"X-Forwarded-For at the stand-in: {addresses}"
    # The library never even asked for Segment's hosts or a blocked URL shape: everything
    # came from the sites' own origins, under the prefix, with no id in any URL.
    assert blocked == [], f"the browser asked for blocked URLs: {blocked}"
    analytics = [u for u in requested if PREFIX in u]
    assert {urlsplit(u).hostname for u in analytics} == {HOST_A, HOST_B}
    assert any(u.endswith(f"{PREFIX}/lib.js") for u in analytics)
    assert any(f"{PREFIX}/v1/projects/{WRITE_KEY}/settings" in u for u in analytics)
    assert any(f"{PREFIX}/analytics-next/bundles/" in u for u in analytics), analytics
    assert any(re.search(rf"{PREFIX}/v1/[a-z]+$", u) for u in analytics), analytics
    assert not [u for u in analytics if aid in u], "the id was in a first-party URL"
    j.assert_healthy()


async def test_without_first_party_the_same_blocking_stops_analytics(journey: Journey) -> None:
    """The negative control: on C first-party delivery is off, the bootstrap loads Segment's
    URL, the blocker refuses it, and no event from C reaches the stand-in."""
    j, o = journey, journey.origins
    blocked = await block_segment(j)
    await j.goto(o.c + "/login")
    await j.page.wait_for_timeout(1500)
    assert [u for u in blocked if "/analytics.js/v1/" in u], blocked
    assert not await j.page.evaluate("!!(window.analytics && window.analytics.initialized)")
    assert [e for e in j.stand_in.events if e.host == HOST_C] == []
