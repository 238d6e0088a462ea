"""9. Journeys to targets that must never see the raw id in a URL: ``strategy: token`` and
``strategy: signed``, in headless Chromium, through the real gateway, with the real
analytics.js.

This module runs its own gateway process: it overrides the session ``gateway`` fixture of
conftest.py with one whose configuration is the usual one (same sites, same stand-in) except
that B (checkout.pay-b.test) is a ``token`` target and C (auth.id-c.test) a ``signed`` target.
Two profiles of it, chosen per journey with ``indirect`` parametrization:

- ``standard``: tokens live 300 s, signatures 600 s; links on a page stay as the HTML rewriter
  made them for the length of a journey (fresh_for = 270 s).
- ``fresh``: single-use tokens with a TTL of 31 s, so the bootstrap's fresh_for is 1 s: any
  click a second after the page loaded goes through ``/_ajs_gateway/link``.

The shared upstream sites build their absolute links from ``sites.origins.gateway_port``; the
fixture points that at its own gateway for the module and restores it afterwards.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml

from gateway.keys import generate_key
from gateway.links import FRESH_LINK_PATH
from gateway.strategies import SigningKeys, sign_params
from tests.conftest import GatewayProcess, spawn_gateway

from .conftest import Journey, Sites, gateway_config, query_of, skip_unless_ready
from .segment_stand_in import StandIn
from .sites import HOST_A, HOST_B, HOST_C

if TYPE_CHECKING:
    from playwright.async_api import Request

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# Every parameter that can carry identity, whatever the strategy.
ALL_IDENTITY_PARAMS = frozenset({"ajs_aid", "ajs_uid", "ajs_token", "ajs_exp", "ajs_sig"})

# One key per test session, handed to the gateway in its environment as production does.
SIGNING_KEY = generate_key()
KEYS = SigningKeys.parse(SIGNING_KEY)
LIFETIME = 600

PROFILES: dict[str, dict[str, object]] = {
    "standard": {"ttl_seconds": 300, "single_use": False},
    "fresh": {"ttl_seconds": 31, "single_use": True},
}
STANDARD = pytest.mark.parametrize("gateway", ["standard"], indirect=True)
FRESH = pytest.mark.parametrize("gateway", ["fresh"], indirect=True)


def strategies_config(sites: Sites, stand_in: StandIn, profile: str) -> str:
    """conftest's configuration with B as a token target and C as a signed target."""
    config = yaml.safe_load(gateway_config(sites, stand_in))
    strategy = {HOST_B: "token", HOST_C: "signed"}
    config["cross_domains"] = [
        {"host": host, "strategy": strategy[host]} if host in strategy else host
        for host in config["cross_domains"]
    ]
    assert set(strategy) <= {c["host"] for c in config["cross_domains"] if isinstance(c, dict)}
    config["tokens"] = PROFILES[profile]
    config["signing"] = {"keys": "${GATEWAY_SIGNING_KEYS}", "lifetime_seconds": LIFETIME}
    return yaml.safe_dump(config, sort_keys=False)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    request: pytest.FixtureRequest,
    sites: Sites,
    stand_in: StandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayProcess]:
    """Overrides conftest's ``gateway`` for this module (see the module docstring)."""
    profile = str(request.param)
    path = tmp_path_factory.mktemp(f"e2e-{profile}") / "domains.yaml"
    path.write_text(strategies_config(sites, stand_in, profile))
    process = await asyncio.to_thread(
        spawn_gateway, path, env={"GATEWAY_SIGNING_KEYS": SIGNING_KEY}
    )
    previous = sites.origins.gateway_port
    sites.origins.gateway_port = process.port
    yield process
    sites.origins.gateway_port = previous
    await asyncio.to_thread(process.stop)


# --- helpers ------------------------------------------------------------------------------


def record_urls(j: Journey) -> list[str]:
    """Every URL the browser requests from now on, in any tab of the journey's profile."""
    urls: list[str] = []

    def on_request(request: Request) -> None:
        urls.append(request.url)

    j.context.on("request", on_request)
    return urls


def assert_not_in_urls(aid: str, urls: list[str], host: str | None = None) -> None:
    """``aid`` is in no URL the browser requested from ``host`` (of which there were some), or
    from anywhere when ``host`` is None."""
    scope = urls if host is None else [u for u in urls if urlsplit(u).hostname == host]
    assert scope, f"the browser requested nothing from {host}: {urls}"
    leaked = [u for u in scope if aid in u]
    assert not leaked, f"the raw id {aid} was in URLs the browser requested: {leaked}"


def assert_events_clean(j: Journey) -> None:
    """No event reached Segment from a page whose URL carried identity parameters."""
    for event in j.stand_in.events:
        assert_no_identity_in(event.page_url)


def assert_no_identity_in(url: str) -> None:
    names = {name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    assert not names & ALL_IDENTITY_PARAMS, f"identity parameters in {url}"


def with_params(url: str, params: list[tuple[str, str]]) -> str:
    """``url`` with its identity parameters replaced by ``params``."""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in ALL_IDENTITY_PARAMS
    ]
    return urlunsplit(parts._replace(query=urlencode(query + params)))


async def refused_count(gateway: GatewayProcess, form: str, reason: str) -> float:
    """The gateway's ``gateway_identity_refused`` counter for ``form`` and ``reason``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gateway.admin_port}/metrics") as response,
    ):
        text = await response.text()
    wanted = f'gateway_identity_refused_total{{form="{form}",reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    return 0.0


async def exchange_outside_the_browser(gateway: GatewayProcess, link: str) -> str | None:
    """GET ``link`` from the test (not the browser) without following the redirect; the
    ``ajs_anonymous_id`` the gateway set in exchange, if any. Asserts the clean-up 302."""
    parts = urlsplit(link)
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(
            f"http://127.0.0.1:{gateway.port}{parts.path}?{parts.query}",
            headers={"Host": parts.netloc},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 302, f"{link}: {response.status}"
        assert_no_identity_in(response.headers["Location"])
        for cookie in response.headers.getall("Set-Cookie", ()):
            name, _, rest = cookie.partition("=")
            if name == "ajs_anonymous_id":
                return rest.split(";", 1)[0].strip('"')
    return None


# --- the journeys ---------------------------------------------------------------------------


@STANDARD
async def test_token_target_gets_the_id_without_ever_seeing_it(journey: Journey) -> None:
    """9.1 First visit on A (minted id), click to B, a token target: A's link carries an opaque
    token and no id; B exchanges it and reports A's id; no URL the browser requested carried
    the raw id."""
    j, o = journey, journey.origins
    urls = record_urls(j)
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    assert UUID4.fullmatch(aid), f"minted id is not a UUID v4: {aid!r}"
    href = await j.page.get_attribute("#to-b", "href") or ""
    assert aid not in href, href
    link = query_of(href)
    assert link.keys() == {"from", "ajs_token"}, f"link to B: {href}"
    token = link["ajs_token"]

    chain = await j.follow("#to-b")
    assert [(h.method, h.status) for h in chain] == [("GET", 302), ("GET", 200)], chain
    assert query_of(chain[0].url) == {"from": "a", "ajs_token": token}
    assert chain[0].location == "/welcome?from=a"
    assert j.page.url == o.b + "/welcome?from=a"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    await j.cookie_check(o.a, aid)
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/welcome?from=a"]
    assert_not_in_urls(aid, urls, HOST_B)
    assert_not_in_urls(aid, urls)
    assert_events_clean(j)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


@STANDARD
async def test_signed_target_gets_the_id_with_a_valid_signature(journey: Journey) -> None:
    """9.2 First visit on A, click to C, a signed target: A's link carries the id, its expiry
    and an HMAC for C made with the fleet's key; C verifies it and reports A's id. Then C's
    sign-in answers 302 to B, a token target: the gateway puts a token on that redirect, and B
    gets the id without it ever being in a URL to B."""
    j, o = journey, journey.origins
    urls = record_urls(j)
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    href = await j.page.get_attribute("#sign-in", "href") or ""
    link = query_of(href)
    return_to = o.b + "/account?welcome=1"
    assert link.keys() == {"return_to", "ajs_aid", "ajs_exp", "ajs_sig"}, f"link to C: {href}"
    assert (link["return_to"], link["ajs_aid"]) == (return_to, aid)
    expires = int(link["ajs_exp"])
    assert abs(expires - (time.time() + LIFETIME)) < 30, f"expiry {expires}: {href}"
    assert link["ajs_sig"].startswith("v1."), href
    # The signature is the one the fleet's key makes for C, and only C: a link for B differs.
    signed_for = {
        host: dict(
            sign_params(
                aid=aid, uid=None, target_host=host, expires=expires, keys=KEYS, user_agent=None
            )
        )["ajs_sig"]
        for host in (HOST_C, HOST_B)
    }
    assert link["ajs_sig"] == signed_for[HOST_C] != signed_for[HOST_B]

    chain = await j.follow("#sign-in")
    assert [(h.method, h.status) for h in chain] == [("GET", 302), ("GET", 200)], chain
    assert query_of(chain[0].url) == link
    clean = "/login?" + urlencode({"return_to": return_to})
    assert chain[0].location == clean
    assert j.page.url == o.c + clean
    assert await j.arrived(HOST_C) == aid
    await j.cookie_check(o.c, aid)
    await j.cookie_check(o.a, aid)
    assert [query_of(s.path_qs) for s in j.sites.seen[HOST_C].requests] == [
        {"return_to": return_to}
    ]
    # The id was in exactly one URL: the signed link to C.
    assert [u for u in urls if aid in u] == [chain[0].url]

    chain = await j.follow("#login-go")
    assert [(h.method, h.status) for h in chain] == [("POST", 302), ("GET", 302), ("GET", 200)]
    redirect = query_of(chain[0].location or "")
    assert redirect.keys() == {"welcome", "ajs_token"}, chain[0]
    assert chain[1].url == chain[0].location
    assert j.page.url == return_to
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    assert_not_in_urls(aid, urls, HOST_B)
    assert_events_clean(j)
    j.assert_one_id(aid, {HOST_A, HOST_B, HOST_C})
    j.assert_healthy()


@STANDARD
async def test_get_form_to_a_token_target(journey: Journey) -> None:
    """9.1b Journey 8a for a token target: a GET form's action query is replaced by the form
    data, so the token travels as a hidden input; B gets the id, its URL ends up clean."""
    j, o = journey, journey.origins
    urls = record_urls(j)
    await j.goto(o.a + "/forms")
    aid = await j.arrived(HOST_A)
    token = await j.page.get_attribute("#search input[name=ajs_token]", "value")
    assert token, "no hidden ajs_token input in the GET form to B"
    assert await j.page.locator("#search input[name=ajs_aid]").count() == 0

    chain = await j.follow("#search-go")
    assert query_of(chain[0].url) == {"q": "red shoes", "ajs_token": token}
    assert j.page.url == o.b + "/search?q=red+shoes"
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/search?q=red+shoes"]
    assert_not_in_urls(aid, urls, HOST_B)
    assert_not_in_urls(aid, urls)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


@STANDARD
@pytest.mark.parametrize("damage", ["expired", "forged"])
async def test_signed_link_past_its_lifetime_or_forged_carries_no_identity(
    journey: Journey, damage: str
) -> None:
    """9.3 A's link to C carries a correctly signed expiry already past ("expired", as after
    the page sat open beyond the lifetime), or a signature for A's id next to another id
    ("forged"): C refuses it, gives the visitor a fresh id of its own, cleans the address bar,
    and the page runs without errors. The same link properly signed and still valid is then
    adopted, so the refusal was about the expiry or forgery, not the key."""
    j, o = journey, journey.origins
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    href = await j.page.get_attribute("#sign-in", "href") or ""
    assert "ajs_sig" in query_of(href), href

    now = int(time.time())
    if damage == "expired":
        params = sign_params(
            aid=aid, uid=None, target_host=HOST_C, expires=now - 5, keys=KEYS, user_agent=None
        )
        reason = "expired"
    else:
        other = str(uuid.uuid4())
        params = [
            ("ajs_aid", other) if name == "ajs_aid" else (name, value)
            for name, value in parse_qsl(urlsplit(href).query)
            if name in ALL_IDENTITY_PARAMS
        ]
        reason = "bad_signature"
    stale = with_params(href, params)
    await j.page.evaluate("href => document.getElementById('sign-in').href = href", stale)
    refused_before = await refused_count(j.gateway, "signed", reason)

    chain = await j.follow("#sign-in")
    assert query_of(chain[0].url) == query_of(stale), "the click changed the link"
    clean = o.c + "/login?" + urlencode({"return_to": o.b + "/account?welcome=1"})
    assert j.page.url == clean
    fresh = await j.arrived(HOST_C)
    assert fresh != aid
    assert UUID4.fullmatch(fresh), f"expected a freshly minted id on C, got {fresh!r}"
    if damage == "forged":
        assert fresh != other
    await j.cookie_check(o.c, fresh)
    assert await refused_count(j.gateway, "signed", reason) == refused_before + 1
    assert [query_of(s.path_qs) for s in j.sites.seen[HOST_C].requests] == [query_of(clean)]
    by_host: dict[str, set[str | None]] = {}
    for event in j.stand_in.events:
        by_host.setdefault(event.host, set()).add(event.anonymous_id)
    assert by_host == {HOST_A: {aid}, HOST_C: {fresh}}, f"ids in events by host: {by_host}"
    j.assert_healthy()

    # Control: the same link with a valid signature and expiry is adopted, replacing C's id.
    valid = sign_params(
        aid=aid, uid=None, target_host=HOST_C, expires=now + 60, keys=KEYS, user_agent=None
    )
    await j.goto(with_params(href, valid))
    assert j.page.url == clean
    assert await j.analytics_id() == aid
    await j.cookie_check(o.c, aid)
    j.assert_healthy()


@FRESH
async def test_link_clicked_after_its_token_is_gone_gets_a_fresh_one(journey: Journey) -> None:
    """9.4 The page on A stays open past fresh_for (1 s here) and its link's token is no longer
    good (single-use, consumed from outside the browser): the click goes through A's
    ``/_ajs_gateway/link``, which mints a new token, and B still gets A's id."""
    j, o = journey, journey.origins
    urls = record_urls(j)
    await j.goto(o.a + "/")
    loaded = time.monotonic()
    aid = await j.arrived(HOST_A)
    href = await j.page.get_attribute("#to-b", "href") or ""
    link = query_of(href)
    assert link.keys() == {"from", "ajs_token"}, f"link to B: {href}"

    # The page's token works exactly once: spend it, and check it is spent.
    assert await exchange_outside_the_browser(j.gateway, href) == aid
    assert await exchange_outside_the_browser(j.gateway, href) is None
    await asyncio.sleep(max(0.0, loaded + 1.5 - time.monotonic()))

    chain = await j.follow("#to-b")
    target = o.b + "/welcome?from=a"
    assert [(h.method, h.status) for h in chain] == [("GET", 302)] * 2 + [("GET", 200)], chain
    via = urlsplit(chain[0].url)
    assert (via.hostname, via.path) == (HOST_A, FRESH_LINK_PATH), chain[0]
    assert query_of(chain[0].url) == {"to": target}
    assert urlsplit(chain[1].url).path == "/welcome"
    renewed = query_of(chain[1].url)
    assert renewed.keys() == {"from", "ajs_token"} and renewed["from"] == "a", chain[1]
    assert renewed["ajs_token"] != link["ajs_token"]
    assert j.page.url == target
    assert await j.arrived(HOST_B) == aid
    await j.cookie_check(o.b, aid)
    await j.cookie_check(o.a, aid)
    assert [u for u in urls if urlsplit(u).path == FRESH_LINK_PATH] == [chain[0].url]
    assert [s.path_qs for s in j.sites.seen[HOST_B].requests] == ["/welcome?from=a"]
    assert_not_in_urls(aid, urls, HOST_B)
    assert_not_in_urls(aid, urls)
    assert_events_clean(j)
    j.assert_one_id(aid, {HOST_A, HOST_B})
    j.assert_healthy()


@STANDARD
@pytest.mark.parametrize("strategy", ["token", "signed"])
async def test_link_added_by_page_javascript_to_a_protected_target(
    journey: Journey, strategy: str
) -> None:
    """9.5 Journey 7 for token and signed targets: a cross-domain link that page JavaScript
    adds after load (the HTML rewriter never saw it), clicked right away, still brings A's id
    to the target, and never as a bare ``ajs_aid`` to the token target."""
    j, o = journey, journey.origins
    urls = record_urls(j)
    await j.goto(o.a + "/dynamic")
    aid = await j.arrived(HOST_A)
    await j.page.wait_for_selector("#late")
    if strategy == "token":
        host, origin, late = HOST_B, o.b, o.b + "/from-js?via=script"
    else:
        host, origin, late = HOST_C, o.c, o.c + "/login?return_to=x"
        await j.page.evaluate("href => document.getElementById('late').href = href", late)
    assert await j.page.get_attribute("#late", "href") == late

    await j.follow("#late")
    assert j.page.url == late
    assert await j.arrived(host) == aid
    await j.cookie_check(origin, aid)
    if strategy == "token":
        assert_not_in_urls(aid, urls, HOST_B)
    assert_events_clean(j)
    j.assert_one_id(aid, {HOST_A, host})
    j.assert_healthy()
