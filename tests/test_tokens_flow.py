"""Token and signed identity on the wire: the real gateway in-process, a real redis-server.

Site A (www.example.com) serves a page linking to a token target (pay.example-pay.com), a
signed target (sso.example-id.com) and a query target (shop.example-query.com); every target
is also a site behind the same gateway, so a link from A can be followed to B and its identity
exchanged there. Covered: what each strategy puts in links, one token per page view in Redis
with its TTL, the exchange and its refusals (unknown, expired, malformed, replayed, store
stalled or down), signatures and their refusals, site ``accept`` lists, the freshness endpoint
and the open redirects it must refuse, and the refresh plan in the bootstrap (also run in node).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from yarl import URL

from gateway.store import CircuitBreakerStore, TokenStore
from gateway.strategies import SigningKeys, TokenRecord, new_token, sign_params
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server

from .conftest import RunningGateway, StartGateway, StartUpstream
from .js_harness import needs_node, run_harness

WWW = "www.example.com"
PAY = "pay.example-pay.com"
SSO = "sso.example-id.com"
SHOP = "shop.example-query.com"
AID = "5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f"
UID = "user-42"
VISITOR = f"ajs_anonymous_id={AID}; ajs_user_id={UID}"
KEY_NEW = "kN7qW2xZ9pL4vR8tY6uB3mC5dF1gH0jS"
KEY_OLD = "oA1sD2fG3hJ4kL5zX6cV7bN8mQ9wE0rT"
KEY_OTHER = "zY9xW8vU7tS6rQ5pO4nM3lK2jI1hG0fE"
KEYS_ENV = {"GATEWAY_SIGNING_KEYS": f"{KEY_NEW},{KEY_OLD}"}
PREFIX = "flow:"
TTL = 120
# The store timeout the tests' gateways run with.
STORE_TIMEOUT_MS = 500
LINK = "/_ajs_gateway/link"

PAGE = f"""<!doctype html><html><head><title>A</title></head><body>
<a id="pay1" href="https://{PAY}/checkout?cart=1">pay</a>
<a id="pay2" href="https://{PAY}/help">help</a>
<a id="sso" href="https://{SSO}/login?next=%2Fhome">sso</a>
<a id="shop" href="https://{SHOP}/">shop</a>
<form action="https://{PAY}/search" method="get"><input name="q" value="x"></form>
</body></html>
""".encode()
ORIGINAL = {
    "pay1": f"https://{PAY}/checkout?cart=1",
    "pay2": f"https://{PAY}/help",
    "sso": f"https://{SSO}/login?next=%2Fhome",
    "shop": f"https://{SHOP}/",
}


# --- Set-up ---------------------------------------------------------------------------------------


def gateway_yaml(
    upstream: str,
    redis_url: str,
    *,
    accept: dict[str, str] | None = None,
    cross: str | None = None,
    tokens: str = f"{{ttl_seconds: {TTL}}}",
    signing: str = "{keys: '${GATEWAY_SIGNING_KEYS}'}",
    timeout_ms: int = STORE_TIMEOUT_MS,
    store: str = "",
) -> str:
    """Every site on the one upstream; ``accept`` maps a host to its ``accept`` list text."""
    accept = accept or {}
    lines = ["sites:"]
    for host in (WWW, PAY, SSO, SHOP):
        opts = f", accept: {accept[host]}" if host in accept else ""
        lines.append(f"  - {{host: {host}, upstream: '{upstream}'{opts}}}")
    lines.append(
        cross
        or (
            "cross_domains:\n"
            f"  - {{host: {PAY}, strategy: token}}\n"
            f"  - {{host: {SSO}, strategy: signed}}\n"
            f"  - {SHOP}"
        )
    )
    lines += [
        f"store: {{url: '{redis_url}', timeout_ms: {timeout_ms}, key_prefix: '{PREFIX}'{store}}}",
        f"tokens: {tokens}",
        f"signing: {signing}",
        "analytics: {write_key: wk_test, cdn_url: 'http://127.0.0.1:9'}",
    ]
    return "\n".join(lines) + "\n"


def upstream_app() -> web.Application:
    """The page with the cross-domain links at ``/``; a short text reply anywhere else."""

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/":
            return web.Response(body=PAGE, content_type="text/html", charset="utf-8")
        if request.path.startswith("/go/"):
            to = {"pay": ORIGINAL["pay1"], "sso": ORIGINAL["sso"], "shop": ORIGINAL["shop"]}
            raise web.HTTPFound(to[request.path[4:]])
        return web.Response(text=f"{request.host} {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


Launch = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client on the private Redis, to look behind the gateway's back."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def launch(
    start_upstream: StartUpstream, start_gateway: StartGateway, redis_server: RedisServer
) -> Launch:
    upstream: list[str] = []

    async def launch(env: dict[str, str] | None = None, **options: Any) -> RunningGateway:
        if not upstream:
            upstream.append(await start_upstream(upstream_app()))
        text = gateway_yaml(upstream[0], redis_server.url, **options)
        return await start_gateway(text, env=KEYS_ENV if env is None else env)

    return launch


# --- The client -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for header in self.headers.getall("Set-Cookie", ()):
            name, _, value = header.partition(";")[0].partition("=")
            out[name] = value
        return out


async def fetch(
    gw: RunningGateway,
    target: str,
    *,
    host: str = WWW,
    method: str = "GET",
    cookie: str | None = None,
    user_agent: str = "TestBrowser/1.0",
) -> Reply:
    """One request with the target sent exactly as written."""
    headers: CIMultiDict[str] = CIMultiDict([("Host", host), ("User-Agent", user_agent)])
    if cookie is not None:
        headers["Cookie"] = cookie
    url = URL(gw.url + target, encoded=True)
    async with gw.session.request(method, url, headers=headers, allow_redirects=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


_ANCHOR = re.compile(rb'<a id="(\w+)" href="([^"]*)"')


@dataclass
class Page:
    reply: Reply
    links: dict[str, str]

    @property
    def text(self) -> str:
        return self.reply.body.decode()


async def page_a(gw: RunningGateway, cookie: str | None = VISITOR, **kw: Any) -> Page:
    reply = await fetch(gw, "/", cookie=cookie, **kw)
    assert reply.status == 200, reply
    links = {m[1].decode(): html.unescape(m[2].decode()) for m in _ANCHOR.finditer(reply.body)}
    assert links.keys() == ORIGINAL.keys()
    return Page(reply, links)


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


async def follow(gw: RunningGateway, url: str, **kw: Any) -> Reply:
    """Request an absolute link's path and query from the gateway, as the site it names."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return await fetch(gw, target, host=parts.hostname or "", **kw)


def assert_handed_over(reply: Reply, location: str, uid: str | None = UID) -> None:
    """The clean-up 302 of an accepted arrival: identity in cookies, none in the Location."""
    assert reply.status == 302
    assert reply.location == location
    expected = {"ajs_anonymous_id": AID} | ({"ajs_user_id": uid} if uid else {})
    assert reply.cookies() == expected


def assert_refused(reply: Reply, location: str) -> None:
    """The clean-up 302 of a refused arrival: the parameters go, no identity is kept."""
    assert reply.status == 302
    assert reply.location == location
    assert reply.headers.getall("Set-Cookie", []) == []


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def metrics(gw: RunningGateway) -> Samples:
    async with gw.session.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def refused(found: Samples, form: str, reason: str) -> float:
    return sample(found, "gateway_identity_refused_total", form=form, reason=reason)


def store_errors(found: Samples, operation: str) -> float:
    return sample(found, "gateway_store_errors_total", operation=operation)


async def readyz_store(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with gw.session.get(gw.admin_url + "/readyz") as resp:
        body = await resp.json()
        return resp.status, body["dependencies"]["store"]


async def token_keys(raw: Redis) -> list[bytes]:
    return sorted([k async for k in raw.scan_iter(match=f"{PREFIX}*")])


def token_of(url: str) -> str:
    (token,) = query(url)["ajs_token"]
    return token


# --- Token target: links, the store, the exchange --------------------------------------------


async def test_token_links_carry_one_page_token_and_no_raw_id(launch: Launch, raw: Redis) -> None:
    gw = await launch()
    before = time.time()
    page = await page_a(gw)
    links = page.links
    token = token_of(links["pay1"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", token)
    # Both token links: the original URL plus the one page token, no id in any form.
    assert links["pay1"] == f"{ORIGINAL['pay1']}&ajs_token={token}"
    assert links["pay2"] == f"{ORIGINAL['pay2']}?ajs_token={token}"
    for name in ("pay1", "pay2"):
        assert AID not in links[name] and UID not in links[name]
        assert not {"ajs_aid", "ajs_uid", "ajs_sig", "ajs_exp"} & query(links[name]).keys()
    # The query target on the same page still gets the raw ids, the signed one ids + signature.
    assert links["shop"] == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"
    sso = query(links["sso"])
    assert sso.keys() == {"next", "ajs_aid", "ajs_uid", "ajs_exp", "ajs_sig"}
    assert (sso["ajs_aid"], sso["ajs_uid"]) == ([AID], [UID])

    # Exactly one record for the page view, under the prefix, with the configured TTL.
    key = f"{PREFIX}t:{token}".encode()
    assert await token_keys(raw) == [key]
    ttl = await raw.ttl(key)
    assert TTL - 5 <= ttl <= TTL
    stored = await raw.get(key)
    assert stored is not None
    record = TokenRecord.from_bytes(stored)
    assert record is not None
    assert (record.anonymous_id, record.user_id, record.source_host) == (AID, UID, WWW)
    assert before - 1 <= record.issued_at <= time.time() + 1
    found = await metrics(gw)
    # Two links and the GET form.
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 3
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=SHOP) == 1

    # A second page view mints a second token.
    again = await page_a(gw)
    assert token_of(again.links["pay1"]) != token
    assert len(await token_keys(raw)) == 2

    # Following the link to B: the clean-up 302 keeps the other parameters and sets the ids.
    reply = await follow(gw, links["pay1"])
    assert_handed_over(reply, "/checkout?cart=1")
    # Not single-use: the same token works again (another tab), and stays in the store.
    assert_handed_over(await follow(gw, links["pay2"]), "/help")
    assert await raw.exists(key) == 1
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=PAY, source="url") == 2


async def test_token_without_user_id(launch: Launch) -> None:
    gw = await launch()
    page = await page_a(gw, cookie=f"ajs_anonymous_id={AID}")
    assert_handed_over(await follow(gw, page.links["pay2"]), "/help", uid=None)


async def test_token_refusals_unknown_expired_malformed(launch: Launch, raw: Redis) -> None:
    gw = await launch()
    record = TokenRecord(AID, UID, time.time(), WWW).to_bytes()
    # Control: a record written straight to Redis in the store's format is exchanged, so the
    # expiry case below fails for its expiry and nothing else.
    good = new_token()
    await raw.set(f"{PREFIX}t:{good}", record, ex=60)
    assert_handed_over(await fetch(gw, f"/x?ajs_token={good}", host=PAY), "/x")

    expired = new_token()
    await raw.set(f"{PREFIX}t:{expired}", record, px=100)
    await asyncio.sleep(0.3)
    assert await raw.exists(f"{PREFIX}t:{expired}") == 0
    assert_refused(await fetch(gw, f"/x?a=1&ajs_token={expired}", host=PAY), "/x?a=1")
    assert_refused(await fetch(gw, f"/x?ajs_token={new_token()}&b=2", host=PAY), "/x?b=2")
    found = await metrics(gw)
    assert refused(found, "token", "unknown_or_expired") == 2

    # Junk never reaches Redis as a key: too short, too long, characters outside base64url.
    commands_before = await _calls(raw, "get")
    for junk in ("short", "A" * 65, "abc%2Fdef" + "A" * 20, "A" * 21 + "*", ""):
        assert_refused(await fetch(gw, f"/x?ajs_token={junk}", host=PAY), "/x")
    assert await _calls(raw, "get") == commands_before
    found = await metrics(gw)
    assert refused(found, "token", "malformed") == 5
    assert refused(found, "token", "unknown_or_expired") == 2
    # Something else's value under our key is an unknown token, not an error.
    odd = new_token()
    await raw.set(f"{PREFIX}t:{odd}", b'{"a": 1}', ex=60)
    assert_refused(await fetch(gw, f"/x?ajs_token={odd}", host=PAY), "/x")
    assert refused(await metrics(gw), "token", "unknown_or_expired") == 3


async def _calls(raw: Redis, command: str) -> int:
    stats = await raw.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


async def test_f9_token_is_exchanged_only_at_its_target(launch: Launch, raw: Redis) -> None:
    """F9 of the security review: a token minted on a page of WWW for the token target PAY was
    exchanged by every site that accepts tokens (the reviewer's tok.py)."""
    gw = await launch(accept={SSO: "[signed, token]"})
    page = await page_a(gw)
    token = token_of(page.links["pay1"])
    for host in (SHOP, WWW, SSO):
        assert_refused(await fetch(gw, f"/landing?ajs_token={token}", host=host), "/landing")
    found = await metrics(gw)
    assert refused(found, "token", "wrong_target") == 3
    for host in (SHOP, WWW, SSO):
        assert sample(found, "gateway_identity_source_total", site=host, source="rejected") == 1
    # At its target the token still works (not single-use: nothing above spent it).
    assert_handed_over(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    (key,) = await token_keys(raw)
    stored = TokenRecord.from_bytes(await raw.get(key) or b"")
    assert stored is not None and stored.targets == (PAY,) and stored.user_agent_hash is None


async def test_f9_single_use_token_refused_elsewhere_is_spent(launch: Launch) -> None:
    """A token that turns up at the wrong site has leaked: taking it there spends it."""
    gw = await launch(tokens=f"{{ttl_seconds: {TTL}, single_use: true}}")
    page = await page_a(gw)
    token = token_of(page.links["pay1"])
    assert_refused(await fetch(gw, f"/x?ajs_token={token}", host=SHOP), "/x")
    assert_refused(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    found = await metrics(gw)
    assert refused(found, "token", "wrong_target") == 1
    assert refused(found, "token", "unknown_or_expired") == 1


async def test_f9_token_bound_to_the_browser(launch: Launch, raw: Redis) -> None:
    """With ``signing.bind_user_agent`` a token, like a signed link, works only in the browser
    whose page it came from."""
    gw = await launch(signing="{keys: '${GATEWAY_SIGNING_KEYS}', bind_user_agent: true}")
    page = await page_a(gw, user_agent="Browser-A/1")
    link = page.links["pay1"]
    assert_refused(await follow(gw, link, user_agent="Browser-B/1"), "/checkout?cart=1")
    assert_handed_over(await follow(gw, link, user_agent="Browser-A/1"), "/checkout?cart=1")
    # The wrong site stays the wrong site in the right browser.
    token = token_of(link)
    assert_refused(
        await fetch(gw, f"/p?ajs_token={token}", host=SHOP, user_agent="Browser-A/1"), "/p"
    )
    # A record from a gateway that did not bind it is refused where binding is required.
    legacy = new_token()
    await raw.set(f"{PREFIX}t:{legacy}", TokenRecord(AID, UID, time.time(), WWW).to_bytes(), ex=60)
    assert_refused(await fetch(gw, f"/p?ajs_token={legacy}", host=PAY), "/p")
    found = await metrics(gw)
    assert refused(found, "token", "wrong_browser") == 2
    assert refused(found, "token", "wrong_target") == 1
    # The record holds a hash of the User-Agent, not the string.
    stored = await raw.get(f"{PREFIX}t:{token}") or b""
    record = TokenRecord.from_bytes(stored)
    assert record is not None and record.user_agent_hash is not None
    assert b"Browser-A" not in stored


async def test_redirect_and_fresh_tokens_are_bound_to_their_one_target(
    launch: Launch, raw: Redis
) -> None:
    """A page's token is bound to every token target it may link; a token minted for one
    redirect or freshness hop only to the target it goes to."""
    gw = await launch(
        cross=f"cross_domains:\n  - {{host: {PAY}, strategy: token}}\n"
        f"  - {{host: {SSO}, strategy: token}}\n"
    )
    page = await page_a(gw)
    page_token = token_of(page.links["pay1"])
    assert token_of(page.links["sso"]) == page_token
    record = TokenRecord.from_bytes(await raw.get(f"{PREFIX}t:{page_token}") or b"")
    assert record is not None and record.targets == (PAY, SSO)
    assert_handed_over(await fetch(gw, f"/p?ajs_token={page_token}", host=SSO), "/p")

    redirect = (await fetch(gw, "/go/pay", cookie=VISITOR)).location or ""
    fresh_hop = (await fetch(gw, fresh(ORIGINAL["pay2"]), cookie=VISITOR)).location or ""
    for location, cleaned in ((redirect, "/checkout?cart=1"), (fresh_hop, "/help")):
        token = token_of(location)
        record = TokenRecord.from_bytes(await raw.get(f"{PREFIX}t:{token}") or b"")
        assert record is not None and record.targets == (PAY,)
        assert_refused(await fetch(gw, f"/p?ajs_token={token}", host=SSO), "/p")
        assert_handed_over(await follow(gw, location), cleaned)
    assert refused(await metrics(gw), "token", "wrong_target") == 2


async def test_refused_token_keeps_the_visitors_own_cookie(launch: Launch) -> None:
    gw = await launch()
    reply = await fetch(
        gw, f"/x?ajs_token={new_token()}", host=PAY, cookie="ajs_anonymous_id=someone-else"
    )
    assert_refused(reply, "/x")


async def test_single_use_token_is_exchanged_once(launch: Launch, raw: Redis) -> None:
    gw = await launch(tokens=f"{{ttl_seconds: {TTL}, single_use: true}}")
    page = await page_a(gw)
    token = token_of(page.links["pay1"])
    assert_handed_over(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    assert await token_keys(raw) == []
    # The replay (or the page's other link with the same token) gets no identity.
    assert_refused(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    assert_refused(await follow(gw, page.links["pay2"]), "/help")
    found = await metrics(gw)
    assert refused(found, "token", "unknown_or_expired") == 2
    assert await _calls(raw, "getdel") == 3
    assert len(token) == 32


async def test_stalled_store_never_falls_back_to_raw_ids(
    launch: Launch, redis_server: RedisServer
) -> None:
    gw = await launch()
    minted = await page_a(gw)
    redis_server.pause()
    try:
        # The page waits for one put, cut off by the store timeout: not for as long as the
        # store stalls (here, for ever). The cap is 10x the timeout, generous for busy cores.
        async with asyncio.timeout(10 * STORE_TIMEOUT_MS / 1000):
            page = await page_a(gw)
        # No token: the token links are left exactly as the upstream wrote them.
        assert page.links["pay1"] == ORIGINAL["pay1"]
        assert page.links["pay2"] == ORIGINAL["pay2"]
        # The other strategies do not need the store.
        assert page.links["shop"] == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"
        assert "ajs_sig" in query(page.links["sso"])
        # A token minted before the stall cannot be exchanged now.
        assert_refused(await follow(gw, minted.links["pay1"]), "/checkout?cart=1")
        found = await metrics(gw)
        assert store_errors(found, "put") == 1
        assert store_errors(found, "take") == 1
        assert refused(found, "token", "store_unavailable") == 1
        assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 3
    finally:
        redis_server.resume()
    # The stall over, the old token and new pages work again.
    assert_handed_over(await follow(gw, minted.links["pay1"]), "/checkout?cart=1")
    page = await page_a(gw)
    assert_handed_over(await follow(gw, page.links["pay2"]), "/help")


async def test_store_down_then_back_without_restarting_the_gateway(
    launch: Launch, redis_server: RedisServer
) -> None:
    gw = await launch()
    status, store = await readyz_store(gw)
    assert (status, store["state"]) == (200, "up")
    minted = await page_a(gw)
    redis_server.kill()

    page = await page_a(gw)
    assert page.links["pay1"] == ORIGINAL["pay1"]
    assert page.links["pay2"] == ORIGINAL["pay2"]
    assert page.links["shop"] == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"
    assert AID not in page.links["pay1"]
    assert_refused(await follow(gw, minted.links["pay1"]), "/checkout?cart=1")
    status, store = await readyz_store(gw)
    assert (status, store["state"], store["kind"]) == (200, "down", "redis")
    assert store["error"]
    found = await metrics(gw)
    assert store_errors(found, "put") == 1
    assert store_errors(found, "take") == 1
    assert store_errors(found, "health") == 1
    assert refused(found, "token", "store_unavailable") == 1

    redis_server.start()
    status, store = await readyz_store(gw)
    assert (status, store["state"]) == (200, "up")
    # The very first page after the restart gets a token (the pool reconnects by itself).
    page = await page_a(gw)
    assert "ajs_token" in query(page.links["pay1"])
    assert_handed_over(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    # Tokens of before the crash died with it (no persistence): refused, not an error.
    assert_refused(await follow(gw, minted.links["pay1"]), "/checkout?cart=1")
    found = await metrics(gw)
    assert store_errors(found, "put") == 1
    assert refused(found, "token", "unknown_or_expired") == 1


class CountingStore:
    """Passes every call on to ``inner`` and counts them."""

    def __init__(self, inner: TokenStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        self.calls += 1
        await self.inner.put(token, record, ttl)

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        self.calls += 1
        return await self.inner.take(token, single_use=single_use)

    async def health(self) -> dict[str, object]:
        return await self.inner.health()

    async def close(self) -> None:
        await self.inner.close()


async def test_circuit_breaker_skips_a_hung_store_then_closes_when_it_is_back(
    launch: Launch, redis_server: RedisServer
) -> None:
    """Finding #9 of the newcomer's review: a hung Redis added its timeout to every page. After
    three timeouts in a row the circuit opens and pages no longer call the store at all; after
    the cool-down one page probes it, and once Redis is back tokens are minted again. The
    breaker's clock is held still, so the cool-down passes only when the test says so."""
    gw = await launch(timeout_ms=200, store=", circuit_failures: 3, circuit_cooldown: 30")
    store = gw.gateway.state.store
    assert isinstance(store, CircuitBreakerStore)
    counted = CountingStore(store.inner)
    store.inner = counted
    now = [0.0]
    store.clock = lambda: now[0]
    minted = await page_a(gw)
    assert "ajs_token" in query(minted.links["pay1"])
    redis_server.pause()
    try:
        for _ in range(3):
            page = await page_a(gw)
            assert page.links["pay1"] == ORIGINAL["pay1"]
        assert (store.state, counted.calls) == ("open", 4)
        (opened,) = [line for line in gw.log if line["event"] == "store_circuit"]
        assert opened["state"] == "open" and opened["store"] == "redis"
        assert (opened["failures"], opened["cooldown"]) == (3, 30)
        assert "no answer within 200 ms" in opened["error"]
        found = await metrics(gw)
        assert sample(found, "gateway_store_circuit_open", store="redis") == 1
        assert store_errors(found, "put") == 3

        # Open: pages with token targets are served without the store being called (so
        # without its timeout), token links left as written, the other strategies unharmed.
        for _ in range(5):
            page = await page_a(gw)
            assert page.links["pay1"] == ORIGINAL["pay1"]
            assert page.links["shop"] == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"
            assert "ajs_sig" in query(page.links["sso"])
        # An arriving token is refused as with a store that is down, also without a call.
        assert_refused(await follow(gw, minted.links["pay1"]), "/checkout?cart=1")
        assert (store.state, counted.calls) == ("open", 4)
        found = await metrics(gw)
        assert refused(found, "token", "store_unavailable") == 1
        # /readyz asks Redis itself (still paused: down) and shows the breaker's state.
        status, health = await readyz_store(gw)
        assert (status, health["state"], health["circuit"]) == (200, "down", "open")
    finally:
        redis_server.resume()
    # Redis answers again, but the circuit stays open until the cool-down has passed...
    now[0] += 29.9
    page = await page_a(gw)
    assert page.links["pay1"] == ORIGINAL["pay1"]
    assert (store.state, counted.calls) == ("open", 4)
    # ...then the next page probes the store, which answers: closed, and a token is minted.
    now[0] += 0.1
    page = await page_a(gw)
    assert (store.state, counted.calls) == ("closed", 5)
    assert_handed_over(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    states = [line["state"] for line in gw.log if line["event"] == "store_circuit"]
    assert states == ["open", "half_open", "closed"]
    found = await metrics(gw)
    assert sample(found, "gateway_store_circuit_open", store="redis") == 0
    status, health = await readyz_store(gw)
    assert (health["state"], health["circuit"]) == ("up", "closed")


async def test_get_form_to_token_target_gets_the_token_as_hidden_input(launch: Launch) -> None:
    gw = await launch()
    page = await page_a(gw)
    token = token_of(page.links["pay1"])
    form = re.search(r"<form .*?</form>", page.text)
    assert form is not None
    assert form.group(0) == (
        f'<form action="https://{PAY}/search" method="get">'
        f'<input type="hidden" name="ajs_token" value="{token}"><input name="q" value="x"></form>'
    )


async def test_upstream_redirect_to_targets(launch: Launch, redis_server: RedisServer) -> None:
    """A Location to the token target carries a token (minted for that redirect), never ids."""
    gw = await launch()
    reply = await fetch(gw, "/go/pay", cookie=VISITOR)
    assert reply.status == 302
    location = reply.location or ""
    assert location == f"{ORIGINAL['pay1']}&ajs_token={token_of(location)}"
    assert_handed_over(await follow(gw, location), "/checkout?cart=1")
    reply = await fetch(gw, "/go/sso", cookie=VISITOR)
    assert set(query(reply.location or "")) == {"next", "ajs_aid", "ajs_uid", "ajs_exp", "ajs_sig"}
    redis_server.kill()
    reply = await fetch(gw, "/go/pay", cookie=VISITOR)
    assert (reply.status, reply.location) == (302, ORIGINAL["pay1"])
    assert store_errors(await metrics(gw), "put") == 1
    reply = await fetch(gw, "/go/shop", cookie=VISITOR)
    assert reply.location == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"


async def test_only_token_targets_cost_a_store_write(launch: Launch, raw: Redis) -> None:
    gw = await launch()
    reply = await fetch(gw, "/go/shop", cookie=VISITOR)
    assert reply.location == f"{ORIGINAL['shop']}?ajs_aid={AID}&ajs_uid={UID}"
    reply = await fetch(gw, "/go/sso", cookie=VISITOR)
    assert "ajs_sig=" in (reply.location or "")
    reply = await fetch(gw, fresh(ORIGINAL["sso"]), cookie=VISITOR)
    assert reply.status == 302 and "ajs_sig=" in (reply.location or "")
    assert await token_keys(raw) == []


async def test_post_with_token_is_forwarded_clean_and_keeps_the_ids(launch: Launch) -> None:
    gw = await launch()
    page = await page_a(gw)
    token = token_of(page.links["pay1"])
    reply = await fetch(gw, f"/submit?x=1&ajs_token={token}", host=PAY, method="POST")
    assert reply.status == 200
    assert reply.body == f"{PAY} /submit?x=1".encode()
    assert reply.cookies() == {"ajs_anonymous_id": AID, "ajs_user_id": UID}


async def test_odd_user_id_survives_token_and_signature(launch: Launch) -> None:
    uid = "jane doe+1@example.com&x=y/é"
    cookie = f"ajs_anonymous_id={AID}; ajs_user_id={quote(uid, safe='')}"
    gw = await launch()
    page = await page_a(gw, cookie=cookie)
    for name in ("pay1", "sso"):
        reply = await follow(gw, page.links[name])
        assert reply.status == 302
        cookies = reply.cookies()
        assert cookies.keys() == {"ajs_anonymous_id", "ajs_user_id"}
        assert (cookies["ajs_anonymous_id"], unquote(cookies["ajs_user_id"])) == (AID, uid)


async def test_record_with_an_id_our_rules_refuse(launch: Launch, raw: Redis) -> None:
    gw = await launch()
    token = new_token()
    bad = TokenRecord("not an id <script>", None, time.time(), WWW).to_bytes()
    await raw.set(f"{PREFIX}t:{token}", bad, ex=60)
    assert_refused(await fetch(gw, f"/x?ajs_token={token}", host=PAY), "/x")
    assert refused(await metrics(gw), "token", "invalid") == 1


async def test_concurrent_exchanges_of_a_single_use_token(launch: Launch) -> None:
    gw = await launch(tokens=f"{{ttl_seconds: {TTL}, single_use: true}}")
    link = (await page_a(gw)).links["pay2"]
    replies = await asyncio.gather(*(follow(gw, link) for _ in range(8)))
    assert sorted(len(r.cookies()) for r in replies) == [0] * 7 + [2]
    assert all(r.status == 302 and r.location == "/help" for r in replies)


# --- Signed target ----------------------------------------------------------------------------


def signed_query(
    *,
    host: str = SSO,
    key: str = KEY_NEW,
    expires: int | None = None,
    user_agent: str | None = None,
    uid: str | None = UID,
) -> str:
    keys = SigningKeys((key.encode(),))
    params = sign_params(
        aid=AID,
        uid=uid,
        target_host=host,
        expires=int(time.time()) + 300 if expires is None else expires,
        keys=keys,
        user_agent=user_agent,
    )
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in params)


async def test_signed_links_verify_at_the_target(launch: Launch) -> None:
    gw = await launch()
    start = int(time.time())
    page = await page_a(gw)
    link = page.links["sso"]
    params = query(link)
    exp = int(params["ajs_exp"][0])
    assert start + 600 <= exp <= int(time.time()) + 600
    # Signed with the first key only: sign_params with KEY_NEW reproduces the signature.
    again = sign_params(
        aid=AID,
        uid=UID,
        target_host=SSO,
        expires=exp,
        keys=SigningKeys((KEY_NEW.encode(),)),
        user_agent=None,
    )
    assert link == f"{ORIGINAL['sso']}&" + "&".join(f"{k}={v}" for k, v in again)
    assert params["ajs_sig"][0].startswith("v1.")
    assert_handed_over(await follow(gw, link), "/login?next=%2Fhome")
    # Rotation: a link signed with the old key, which stays in the list, still verifies.
    assert_handed_over(await fetch(gw, f"/p?{signed_query(key=KEY_OLD)}", host=SSO), "/p")
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=SSO, source="url") == 2
    assert sum(v for (n, _), v in found.items() if n == "gateway_identity_refused_total") == 0


def _tamper(name: str, value: str) -> Callable[[str], str]:
    def edit(q: str) -> str:
        return re.sub(rf"(^|&){name}=[^&]*", rf"\g<1>{name}={value}", q, count=1)

    return edit


@pytest.mark.parametrize(
    ("case", "make", "host", "reason"),
    [
        ("tampered aid", lambda: _tamper("ajs_aid", "attacker-id")(signed_query()), SSO, "bad"),
        ("tampered uid", lambda: _tamper("ajs_uid", "admin")(signed_query()), SSO, "bad"),
        (
            "tampered exp",
            lambda: _tamper("ajs_exp", str(int(time.time()) + 400))(signed_query()),
            SSO,
            "bad",
        ),
        ("uid dropped", lambda: re.sub(r"ajs_uid=[^&]*&", "", signed_query()), SSO, "bad"),
        ("signed for another host", lambda: signed_query(host=SHOP), SSO, "bad"),
        ("sso link presented at pay", lambda: signed_query(host=SSO), PAY, "bad"),
        ("unknown key", lambda: signed_query(key=KEY_OTHER), SSO, "bad"),
        ("expired", lambda: signed_query(expires=int(time.time()) - 5), SSO, "expired"),
        (
            "expiry beyond any lifetime",
            lambda: signed_query(expires=int(time.time()) + 3600),
            SSO,
            "malformed",
        ),
        ("no exp", lambda: re.sub(r"&ajs_exp=[^&]*", "", signed_query()), SSO, "malformed"),
        ("sig mangled", lambda: signed_query()[:-2], SSO, "malformed"),
        ("bound to another browser", lambda: signed_query(user_agent="Other/2.0"), SSO, "bad"),
    ],
)
async def test_signed_refusals(
    launch: Launch, case: str, make: Callable[[], str], host: str, reason: str
) -> None:
    gw = await launch()
    assert_refused(await fetch(gw, f"/p?q=1&{make()}", host=host), "/p?q=1")
    expected = "bad_signature" if reason == "bad" else reason
    found = await metrics(gw)
    assert refused(found, "signed", expected) == 1, case
    assert sum(v for (n, _), v in found.items() if n == "gateway_identity_refused_total") == 1


async def test_signed_with_a_key_the_verifier_lacks(launch: Launch) -> None:
    """A fleet member that only has another key refuses what the others sign."""
    signer = await launch()
    verifier = await launch(env={"GATEWAY_SIGNING_KEYS": KEY_OTHER})
    link = (await page_a(signer)).links["sso"]
    assert_refused(await follow(verifier, link), "/login?next=%2Fhome")
    assert refused(await metrics(verifier), "signed", "bad_signature") == 1
    # After the old key is retired, links signed with it are refused too.
    retired = await launch(env={"GATEWAY_SIGNING_KEYS": KEY_NEW})
    assert_refused(await fetch(retired, f"/p?{signed_query(key=KEY_OLD)}", host=SSO), "/p")
    assert_handed_over(await follow(retired, link), "/login?next=%2Fhome")


async def test_user_agent_bound_links(launch: Launch) -> None:
    gw = await launch(signing="{keys: '${GATEWAY_SIGNING_KEYS}', bind_user_agent: true}")
    link = (await page_a(gw, user_agent="Browser-A/1")).links["sso"]
    assert query(link)["ajs_sig"][0].startswith("v1ua.")
    assert_refused(await follow(gw, link, user_agent="Browser-B/1"), "/login?next=%2Fhome")
    assert_handed_over(await follow(gw, link, user_agent="Browser-A/1"), "/login?next=%2Fhome")
    # With binding required, an unbound link is refused even though its MAC is right.
    assert_refused(await fetch(gw, f"/p?{signed_query()}", host=SSO), "/p")
    assert refused(await metrics(gw), "signed", "bad_signature") == 2


async def test_signed_arrival_at_a_gateway_without_keys(launch: Launch) -> None:
    """A gateway with no signed target and no keys cannot verify: ``no_keys``, no identity."""
    gw = await launch(signing="{lifetime_seconds: 600}", cross=f"cross_domains: [{SHOP}]")
    assert_refused(await fetch(gw, f"/p?{signed_query()}", host=SSO), "/p")
    assert refused(await metrics(gw), "signed", "no_keys") == 1


# --- accept lists -------------------------------------------------------------------------------


async def test_accept_lists(launch: Launch) -> None:
    gw = await launch(accept={SSO: "[signed]", PAY: "[token]"})
    # sso trusts only signatures: a bare id is refused, a signed one accepted.
    assert_refused(await fetch(gw, f"/p?ajs_aid={AID}&ajs_uid={UID}", host=SSO), "/p")
    assert_handed_over(await fetch(gw, f"/p?{signed_query()}", host=SSO), "/p")
    # pay trusts only tokens: a valid signature for pay is refused, the page token accepted.
    assert_refused(await fetch(gw, f"/p?{signed_query(host=PAY)}", host=PAY), "/p")
    assert_refused(await fetch(gw, f"/p?ajs_aid={AID}", host=PAY), "/p")
    page = await page_a(gw)
    assert_handed_over(await follow(gw, page.links["pay1"]), "/checkout?cart=1")
    found = await metrics(gw)
    assert refused(found, "query", "not_accepted") == 2
    assert refused(found, "signed", "not_accepted") == 1
    assert refused(found, "token", "not_accepted") == 0
    # The default list still takes all three forms.
    assert_handed_over(await fetch(gw, f"/p?ajs_aid={AID}&ajs_uid={UID}", host=SHOP), "/p")


# --- The freshness endpoint -----------------------------------------------------------------------


def fresh(to: str) -> str:
    return f"{LINK}?to={quote(to, safe='')}"


async def test_fresh_token_after_the_page_token_is_gone(launch: Launch, raw: Redis) -> None:
    gw = await launch()
    page = await page_a(gw)
    old = token_of(page.links["pay1"])
    await raw.delete(f"{PREFIX}t:{old}")
    assert_refused(await follow(gw, page.links["pay1"]), "/checkout?cart=1")

    reply = await fetch(gw, fresh(ORIGINAL["pay1"]), cookie=VISITOR)
    assert reply.status == 302
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers.getall("Set-Cookie", []) == []
    location = reply.location
    assert location is not None
    token = token_of(location)
    assert token != old
    assert location == f"{ORIGINAL['pay1']}&ajs_token={token}"
    assert await raw.exists(f"{PREFIX}t:{token}") == 1
    assert_handed_over(await follow(gw, location), "/checkout?cart=1")
    # HEAD works like GET (link prefetchers).
    head = await fetch(gw, fresh(ORIGINAL["pay2"]), method="HEAD", cookie=VISITOR)
    assert head.status == 302 and "ajs_token=" in (head.location or "")


async def test_fresh_signature(launch: Launch) -> None:
    gw = await launch()
    start = int(time.time())
    reply = await fetch(gw, fresh(ORIGINAL["sso"]), cookie=VISITOR)
    assert reply.status == 302
    location = reply.location
    assert location is not None and location.startswith(ORIGINAL["sso"] + "&ajs_aid=")
    assert start + 600 <= int(query(location)["ajs_exp"][0]) <= int(time.time()) + 600
    assert_handed_over(await follow(gw, location), "/login?next=%2Fhome")


async def test_fresh_link_replaces_stale_identity_in_to(launch: Launch) -> None:
    """A ``to`` that still carries old identity parameters gets them replaced, not doubled."""
    gw = await launch()
    stale = f"https://{SSO}/login?ajs_aid=old&ajs_exp=1&ajs_sig=v1.x&z=1"
    reply = await fetch(gw, fresh(stale), cookie=VISITOR)
    assert reply.status == 302 and reply.location is not None
    params = query(reply.location)
    assert params["ajs_aid"] == [AID] and params["z"] == ["1"]
    assert len(params["ajs_sig"]) == 1 and len(params["ajs_exp"]) == 1
    assert_handed_over(await follow(gw, reply.location), "/login?z=1")


async def test_fresh_link_without_cookie_redirects_bare(launch: Launch, raw: Redis) -> None:
    """No known visitor: no token is minted for a fresh id the page never had; the redirect
    goes to the configured target as given, with nothing added and no cookie set."""
    gw = await launch()
    for to in (ORIGINAL["pay1"], ORIGINAL["sso"]):
        reply = await fetch(gw, fresh(to))
        assert reply.status == 302
        assert reply.location == to
        assert reply.headers.getall("Set-Cookie", []) == []
    assert await token_keys(raw) == []


async def test_fresh_link_with_store_down_redirects_bare(
    launch: Launch, redis_server: RedisServer
) -> None:
    gw = await launch()
    redis_server.kill()
    reply = await fetch(gw, fresh(ORIGINAL["pay1"]), cookie=VISITOR)
    assert reply.status == 302
    assert reply.location == ORIGINAL["pay1"]
    assert store_errors(await metrics(gw), "put") == 1


# ``to`` values the endpoint must refuse: each would send the visitor somewhere other than a
# configured token or signed target (or is ambiguous between parsers).
OPEN_REDIRECTS = [
    f"https://{WWW}/",
    f"https://{WWW}/{PAY}",
    "https://evil.example/",
    f"https://{PAY}.evil.net/",
    "https://evilpay.example-pay.com/",
    f"https://{SHOP}/",
    "javascript:alert(1)",
    f"javascript://{PAY}/%0aalert(1)",
    "//evil.example",
    f"//{PAY}/",
    f"/{PAY}/",
    f"https://{PAY}@evil.example/",
    f"https://{PAY}:443@evil.example/",
    f"https://evil.example\\@{PAY}/",
    f"https:\\\\evil.example\\{PAY}",
    f"https://{PAY}\\@evil.example/",
    f"https://evil.example#@{PAY}/",
    f"https://evil.example?@{PAY}/",
    f"https://{PAY}\r\nSet-Cookie: x=1",
    f"https://{PAY}/\nx",
    f"https://evil.example\t.{PAY}/",
    f" https://{PAY}/",
    f"ftp://{PAY}/",
    f"data:text/html,<a href=https://{PAY}/>",
    "https://[::1]/",
    "https://127.0.0.1/",
    "",
]


@pytest.mark.parametrize("cookie", [VISITOR, None], ids=["visitor", "no-cookie"])
async def test_fresh_link_refuses_open_redirects(launch: Launch, cookie: str | None) -> None:
    gw = await launch()
    for to in OPEN_REDIRECTS:
        reply = await fetch(gw, fresh(to), cookie=cookie)
        assert reply.status == 400, to
        assert "Location" not in reply.headers, to
        assert reply.headers["Cache-Control"] == "no-store"
    # Also spelled without percent-encoding where the request line allows it, a missing or
    # empty ``to``, and a POST of a good one.
    for target in (
        f"{LINK}?to=https://evil.example/",
        f"{LINK}?to=https://{PAY}%40evil.example/",
        f"{LINK}?to=https://evil.example%5C@{PAY}/",
        f"{LINK}?to=https://{PAY}%0d%0aLocation:%20https://evil.example/",
        f"{LINK}?to=",
        f"{LINK}?next={quote(ORIGINAL['pay1'], safe='')}",
        LINK,
    ):
        reply = await fetch(gw, target, cookie=cookie)
        assert reply.status == 400, target
        assert "Location" not in reply.headers
    post = await fetch(gw, fresh(ORIGINAL["pay1"]), method="POST", cookie=cookie)
    assert post.status == 400 and "Location" not in post.headers


async def test_fresh_link_odd_but_safe_targets(launch: Launch) -> None:
    """What the endpoint does redirect to always lands on the configured host."""
    gw = await launch()
    cases = {
        # percent-encoded text stays text in the path: no header split, same host
        f"https://{PAY}/%0d%0aSet-Cookie:x=1": f"https://{PAY}/%0d%0aSet-Cookie:x=1",
        f"https://{PAY}/@evil.example/": f"https://{PAY}/@evil.example/",
        f"HTTPS://{PAY.upper()}/x": f"HTTPS://{PAY.upper()}/x",
        f"http://{PAY}:8443/x": f"http://{PAY}:8443/x",
    }
    for to, prefix in cases.items():
        reply = await fetch(gw, fresh(to), cookie=VISITOR)
        assert reply.status == 302, to
        location = reply.location or ""
        assert location.startswith(prefix + ("&" if "?" in prefix else "?") + "ajs_token="), to
        assert urlsplit(location).hostname == PAY
    # ``to`` given twice: the first one counts.
    target = f"{fresh(ORIGINAL['pay2'])}&to={quote('https://evil.example/', safe='')}"
    reply = await fetch(gw, target, cookie=VISITOR)
    assert reply.status == 302 and urlsplit(reply.location or "").hostname == PAY


async def test_fresh_link_path_is_only_the_exact_endpoint(launch: Launch) -> None:
    """Neighbouring paths are the site's own and are proxied."""
    gw = await launch()
    for target in (f"{LINK}x?to=a", f"{LINK}/?to=a", f"{LINK}.html"):
        reply = await fetch(gw, target)
        assert reply.status == 200, target
        assert reply.body.decode().startswith(f"{WWW} /_ajs_gateway/link"), target


# --- The bootstrap ----------------------------------------------------------------------------

_CONFIG = re.compile(r"\}\)\(window,document,(\{.*\})\)</script>", re.DOTALL)
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def bootstrap_config(page: Page) -> dict[str, Any]:
    found = _CONFIG.search(page.text)
    assert found, page.text[:400]
    config: dict[str, Any] = json.loads(found.group(1))
    return config


async def test_bootstrap_refresh_plan_and_raw_id_targets(launch: Launch) -> None:
    gw = await launch()
    config = bootstrap_config(await page_a(gw))
    assert config["t"] == [SHOP]
    assert config["r"] == {
        "e": LINK,
        "t": [PAY, SSO],
        "x": TTL - 30,
        "q": ["ajs_aid", "ajs_uid", "ajs_token", "ajs_sig", "ajs_exp"],
        "c": ["ajs_token", "ajs_sig"],
    }
    assert config["a"] == AID and config["u"] == UID
    # Without protected targets there is no plan.
    plain = await launch(cross=f"cross_domains: [{SHOP}]")
    assert bootstrap_config(await page_a(plain))["r"] is None
    # The signature lifetime counts when it is the shorter one.
    short = await launch(signing="{keys: '${GATEWAY_SIGNING_KEYS}', lifetime_seconds: 60}")
    assert bootstrap_config(await page_a(short))["r"]["x"] == 30


def run_bootstrap(script: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    result = run_harness(script, f"https://{WWW}/", steps)
    assert result["errors"] == []
    return result


LATER = "Date.prototype.getTime=function(){return 4e12}"


@needs_node
async def test_bootstrap_in_node_refreshes_through_the_gateway(launch: Launch) -> None:
    """The injected script, run in node: fresh clicks leave token and signed links alone (no
    raw id is added), stale ones go through the endpoint, which the gateway then honours."""
    gw = await launch()
    page = await page_a(gw)
    (script,) = _SCRIPT.findall(page.text)
    links = page.links
    steps: list[dict[str, Any]] = [
        {"do": "bootstrap"},
        {"do": "click", "href": links["pay1"]},
        {"do": "click", "href": links["sso"]},
        {"do": "click", "href": f"https://{PAY}/added-by-js"},
        {"do": "click", "href": f"https://{SHOP}/added-by-js"},
        {"do": "exec", "code": LATER},
        {"do": "click", "href": links["pay1"]},
        {"do": "click", "href": links["sso"]},
        {"do": "click", "href": links["shop"]},
    ]
    out = run_bootstrap(script, steps)
    hrefs = [r["href"] for r in out["results"]]
    assert hrefs[0] == links["pay1"]
    assert hrefs[1] == links["sso"]
    # A token link page JavaScript made has no token: it goes via the gateway even when fresh.
    assert hrefs[2] == fresh(f"https://{PAY}/added-by-js")
    assert hrefs[3] == f"https://{SHOP}/added-by-js?ajs_aid={AID}&ajs_uid={UID}"
    assert hrefs[4] == fresh(ORIGINAL["pay1"])
    assert hrefs[5] == fresh(ORIGINAL["sso"])
    assert hrefs[6] == links["shop"]
    # The rerouted click, followed through the gateway, ends at B with the visitor's ids.
    for href, clean in ((hrefs[4], "/checkout?cart=1"), (hrefs[5], "/login?next=%2Fhome")):
        reply = await fetch(gw, href, cookie=VISITOR)
        assert reply.status == 302
        assert_handed_over(await follow(gw, reply.location or ""), clean)


WILDCARD_OVERLAP = (
    "cross_domains:\n"
    f"  - {{host: {PAY}, strategy: token}}\n"
    f"  - {{host: {SSO}, strategy: signed}}\n"
    "  - '*.example-pay.com'\n"
    f"  - {SHOP}"
)


async def test_wildcard_query_target_behind_a_token_host_server_side(launch: Launch) -> None:
    """The first matching cross-domain wins on the server: pay stays token-only."""
    gw = await launch(cross=WILDCARD_OVERLAP)
    page = await page_a(gw)
    assert "ajs_token" in query(page.links["pay1"])
    assert AID not in page.links["pay1"]


@needs_node
async def test_wildcard_query_target_behind_a_token_host_click_time(launch: Launch) -> None:
    gw = await launch(cross=WILDCARD_OVERLAP)
    page = await page_a(gw)
    (script,) = _SCRIPT.findall(page.text)
    out = run_bootstrap(
        script,
        [
            {"do": "bootstrap"},
            {"do": "click", "href": page.links["pay1"]},
            {"do": "click", "href": f"https://{PAY}/added-by-js"},
            {"do": "click", "href": "https://other.example-pay.com/"},
        ],
    )
    hrefs = [r["href"] for r in out["results"]]
    assert hrefs[2] == f"https://other.example-pay.com/?ajs_aid={AID}&ajs_uid={UID}"
    assert hrefs[:2] == [page.links["pay1"], fresh(f"https://{PAY}/added-by-js")]


# --- Internationalized hosts (F6 of the security review) -----------------------------------------

SHOP_TEST = "www.shop.test"
GROSS = "pay.grossbank.test"
# pay.großbank.test as browsers send it: another registrable domain than pay.grossbank.test,
# which IDNA 2003 (the gateway's old reading) took it for.
GROSS_SZ = "pay.xn--grobank-2va.test"
IDN_PAGE = """<!doctype html><html><head><title>IDN</title></head><body>
<a id="sz" href="https://pay.großbank.test/checkout">a</a>
<a id="sz_pct" href="https://pay.gro%C3%9Fbank.test/checkout">b</a>
<a id="sz_puny" href="https://pay.xn--grobank-2va.test/checkout">c</a>
<a id="ss" href="https://PAY.GROSSBANK.TEST/checkout">d</a>
<a id="sigma" href="https://ς.wild.test/">e</a>
</body></html>
""".encode()
IDN_REDIRECTS = {
    "/go/sz": "https://pay.gro%C3%9Fbank.test/checkout",
    "/go/sz-raw": "https://pay.großbank.test/checkout",
    "/go/ss": f"https://{GROSS}/checkout",
}


async def launch_idn(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    redis_server: RedisServer,
    pay_host: str = GROSS,
) -> RunningGateway:
    """The reviewer's gw2.yaml: a token target with "ss" in a label, a signed wildcard."""

    async def handler(request: web.Request) -> web.Response:
        if request.path in IDN_REDIRECTS:
            return web.Response(status=302, headers={"Location": IDN_REDIRECTS[request.path]})
        if request.path == "/":
            return web.Response(body=IDN_PAGE, content_type="text/html", charset="utf-8")
        return web.Response(text=f"{request.host} {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    upstream = await start_upstream(app)
    text = f"""
    sites:
      - {{host: {SHOP_TEST}, upstream: '{upstream}'}}
      - {{host: '{pay_host}', upstream: '{upstream}'}}
      - {{host: '*.wild.test', upstream: '{upstream}'}}
    cross_domains:
      - {{host: '{pay_host}', strategy: token}}
      - {{host: '*.wild.test', strategy: signed}}
    store: {{url: '{redis_server.url}', key_prefix: '{PREFIX}', timeout_ms: {STORE_TIMEOUT_MS}}}
    signing: {{keys: '${{GATEWAY_SIGNING_KEYS}}'}}
    analytics: {{write_key: wk_test, cdn_url: 'http://127.0.0.1:9'}}
    """
    return await start_gateway(text, env=KEYS_ENV)


IdnLaunch = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def idn(
    start_upstream: StartUpstream, start_gateway: StartGateway, redis_server: RedisServer
) -> IdnLaunch:
    async def launch(pay_host: str = GROSS) -> RunningGateway:
        return await launch_idn(start_upstream, start_gateway, redis_server, pay_host)

    return launch


async def test_f6_fresh_link_refuses_the_idna2003_lookalike(idn: IdnLaunch, raw: Redis) -> None:
    """The reviewer's reproducer: a percent-encoded ß in ``to`` made the freshness endpoint
    mint a token for pay.grossbank.test and send it to pay.großbank.test."""
    gw = await idn()
    victim = "ajs_anonymous_id=victim-aid-42; ajs_user_id=alice%40example.com"
    for to in (
        "https%3A%2F%2Fpay.gro%25C3%259Fbank.test%2Fcheckout",  # the reproducer, byte for byte
        quote("https://pay.gro%c3%9fbank.test./checkout", safe=""),
        quote("https://pay.großbank.test/checkout", safe=""),
        quote(f"https://{GROSS_SZ}/checkout", safe=""),
    ):
        reply = await fetch(gw, f"{LINK}?to={to}", host=SHOP_TEST, cookie=victim)
        assert reply.status == 400, to
        assert "Location" not in reply.headers, to
    assert await token_keys(raw) == []
    # The configured target itself still gets its fresh token, which works there.
    reply = await fetch(gw, fresh(f"https://{GROSS}/checkout"), host=SHOP_TEST, cookie=victim)
    assert reply.status == 302
    location = reply.location or ""
    assert location == f"https://{GROSS}/checkout?ajs_token={token_of(location)}"
    arrival = await fetch(gw, f"/checkout?ajs_token={token_of(location)}", host=GROSS)
    assert arrival.status == 302
    assert arrival.cookies()["ajs_anonymous_id"] == "victim-aid-42"


async def test_f6_links_and_redirects_to_the_lookalike_carry_nothing(
    idn: IdnLaunch, raw: Redis
) -> None:
    gw = await idn()
    reply = await fetch(gw, "/", host=SHOP_TEST, cookie=VISITOR)
    assert reply.status == 200
    links = {m[1].decode(): html.unescape(m[2].decode()) for m in _ANCHOR.finditer(reply.body)}
    for name in ("sz", "sz_pct", "sz_puny"):
        assert "ajs_" not in links[name], links[name]
    token = token_of(links["ss"])
    assert links["ss"] == f"https://PAY.GROSSBANK.TEST/checkout?ajs_token={token}"
    # ς.wild.test is xn--3xa.wild.test to the browser (IDNA 2003 said xn--4xa, σ): the
    # signature must be for the host the browser arrives at, or the hand-off fails there.
    sigma = urlsplit(links["sigma"])
    assert_handed_over(await fetch(gw, f"/?{sigma.query}", host="xn--3xa.wild.test"), "/")
    # Upstream redirects: decorated only for the configured host.
    for path in ("/go/sz", "/go/sz-raw"):
        reply = await fetch(gw, path, host=SHOP_TEST, cookie=VISITOR)
        assert (reply.status, reply.location) == (302, IDN_REDIRECTS[path]), path
    reply = await fetch(gw, "/go/ss", host=SHOP_TEST, cookie=VISITOR)
    location = reply.location or ""
    assert location == f"https://{GROSS}/checkout?ajs_token={token_of(location)}"
    assert len(await token_keys(raw)) == 2  # the page's token and the redirect's


async def test_idn_target_written_in_unicode(idn: IdnLaunch) -> None:
    """A target configured as pay.großbank.test is the host browsers send for it."""
    gw = await idn(pay_host="pay.großbank.test")
    for to in ("https://pay.gro%C3%9Fbank.test/checkout", f"https://{GROSS_SZ}/checkout"):
        reply = await fetch(gw, fresh(to), host=SHOP_TEST, cookie=VISITOR)
        assert reply.status == 302, to
        location = reply.location or ""
        assert location == f"{to}?ajs_token={token_of(location)}"
        arrival = await fetch(gw, f"/checkout?ajs_token={token_of(location)}", host=GROSS_SZ)
        assert_handed_over(arrival, "/checkout")
    reply = await fetch(gw, fresh(f"https://{GROSS}/checkout"), host=SHOP_TEST, cookie=VISITOR)
    assert reply.status == 400
    page = await fetch(gw, "/", host=SHOP_TEST, cookie=VISITOR)
    links = {m[1].decode(): html.unescape(m[2].decode()) for m in _ANCHOR.finditer(page.body)}
    assert {name for name, href in links.items() if "ajs_token=" in href} == {
        "sz",
        "sz_pct",
        "sz_puny",
    }
