"""First-party delivery through the real gateway, against a stand-in CDN and tracking API
(real aiohttp servers on loopback): caching, the settings rewrite, the write key, body bounds,
failures, and the visitor's address."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from gateway import firstparty, relay
from gateway.asset_cache import AssetCache
from gateway.firstparty import MAX_API_BODY, Fetched, default_path

from .conftest import RunningGateway, StartGateway, StartUpstream, refused_port

KEY = "wk_relay"
PREFIX = default_path(KEY)
LIBRARY = b"/* analytics.js */ " + b"window.x = 1;\n" * 500
HOST = "www.example.com"


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Segment:
    """The stand-in's recordings and knobs."""

    seen: list[Seen] = field(default_factory=list)
    api_status: int = 200
    delay: float = 0.0

    def paths(self, prefix: str = "") -> list[str]:
        return [s.path for s in self.seen if s.path.startswith(prefix)]


def segment_app(segment: Segment) -> web.Application:
    """Segment's CDN and API in one: the library, a bundle, settings, and the tracking API."""

    async def record(request: web.Request) -> Seen:
        seen = Seen(request.method, request.path, dict(request.headers), await request.read())
        segment.seen.append(seen)
        if segment.delay:
            await asyncio.sleep(segment.delay)
        return seen

    async def library(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=LIBRARY, content_type="application/javascript")

    async def bundle(request: web.Request) -> web.Response:
        await record(request)
        if request.match_info["name"] == "missing.js":
            raise web.HTTPNotFound()
        return web.Response(text="/* chunk */", content_type="application/javascript")

    async def settings(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(
            {
                "integrations": {"Segment.io": {"apiKey": KEY, "apiHost": "api.segment.io/v1"}},
                "metrics": {"sampleRate": 0.1, "host": "api.segment.io/v1"},
                "remotePlugins": [
                    {"url": f"http://{request.host}/next-integrations/actions/x/abc.js"}
                ],
            }
        )

    async def api(request: web.Request) -> web.Response:
        await record(request)
        headers = {"Retry-After": "7"} if segment.api_status == 429 else None
        return web.json_response({"success": True}, status=segment.api_status, headers=headers)

    app = web.Application()
    app.router.add_get(f"/analytics.js/v1/{KEY}/analytics.min.js", library)
    app.router.add_get("/analytics-next/bundles/{name}", bundle)
    app.router.add_get(f"/v1/projects/{KEY}/settings", settings)
    app.router.add_post("/v1/{endpoint}", api)
    return app


def site_app() -> web.Application:
    """The legacy site: a page, and an echo of every other path."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><html><head><title>t</title></head><body>hi</body></html>",
            content_type="text/html",
        )

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"site:{request.path}")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def config(site: str, segment: str, extra: str = "", site_extra: str = "") -> str:
    return f"""
    sites:
      - host: {HOST}
        upstream: {site}
        {site_extra}
    analytics:
      write_key: {KEY}
      cdn_url: {segment}
      api_url: {segment}
      first_party: true
    {extra}
    """


@pytest.fixture
async def running(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> tuple[RunningGateway, Segment]:
    segment = Segment()
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    return await start_gateway(config(site, cdn)), segment


EVENT = {"type": "track", "event": "Clicked", "anonymousId": "aid-1", "writeKey": KEY}


async def post(gw: RunningGateway, endpoint: str, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return gw.request(
        "POST",
        f"{PREFIX}/v1/{endpoint}",
        data=data,
        headers={"Content-Type": "text/plain", **headers},
    )


# --- assets and their cache -----------------------------------------------------------------------


async def test_library_is_served_first_party_and_then_from_the_cache(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    for accept in ("gzip, deflate, br", None):
        headers = {"Accept-Encoding": accept} if accept else {"Accept-Encoding": "identity"}
        async with gw.request("GET", f"{PREFIX}/lib.js", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/javascript")
            assert resp.headers["Cache-Control"] == "public, max-age=300"
            assert resp.headers["Vary"] == "Accept-Encoding"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.read()
            if accept:
                assert resp.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(body)
            else:
                assert "Content-Encoding" not in resp.headers
            assert body == LIBRARY
    assert segment.paths() == [f"/analytics.js/v1/{KEY}/analytics.min.js"]
    # The CDN is asked for nothing of the visitor's.
    assert "Cookie" not in segment.seen[0].headers
    async with gw.request("HEAD", f"{PREFIX}/lib.js", headers={"Accept-Encoding": ""}) as resp:
        assert resp.status == 200 and await resp.read() == b""
        assert int(resp.headers["Content-Length"]) == len(LIBRARY)
    assert len(segment.seen) == 1


async def test_cached_assets_expire_and_the_cache_is_bounded(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    now = [0.0]
    state = gw.gateway.state
    state.assets = AssetCache(
        max_entries=2, max_bytes=10**6, failure_ttl=5, size=Fetched.size.fget, clock=lambda: now[0]
    )  # type: ignore[arg-type]

    async def get(path: str) -> int:
        async with gw.request("GET", PREFIX + path) as resp:
            await resp.read()
            return resp.status

    assert await get("/lib.js") == 200
    now[0] += 299
    assert await get("/lib.js") == 200
    assert len(segment.seen) == 1
    now[0] += 2  # past the library's 300 s
    assert await get("/lib.js") == 200
    assert len(segment.seen) == 2
    # Two entries at most: two bundles push the library out.
    assert await get("/analytics-next/bundles/a.js") == 200
    assert await get("/analytics-next/bundles/b.js") == 200
    assert await get("/lib.js") == 200
    assert segment.paths().count(f"/analytics.js/v1/{KEY}/analytics.min.js") == 3
    assert state.assets.stats().entries == 2


async def test_a_missing_bundle_is_a_404_remembered_seconds_only(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    for _ in range(3):
        async with gw.request("GET", f"{PREFIX}/analytics-next/bundles/missing.js") as resp:
            assert resp.status == 404
            assert resp.headers["Cache-Control"] == "no-store"
    assert len(segment.seen) == 1


async def test_settings_are_rewritten_to_this_origin(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    async with gw.request(
        "GET", f"{PREFIX}/v1/projects/{KEY}/settings", host=f"{HOST}:8443"
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=60"
        data = json.loads(await resp.read())
    segment_io = data["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == f"{HOST}:8443{PREFIX}/v1"
    assert segment_io["protocol"] == "http"
    assert data["metrics"] == {"sampleRate": 0, "host": f"{HOST}:8443{PREFIX}/v1"}
    assert data["remotePlugins"][0]["url"] == (
        f"http://{HOST}:8443{PREFIX}/next-integrations/actions/x/abc.js"
    )
    # One fetch serves every origin: the rewrite is per request, the CDN's answer is shared.
    async with gw.request("GET", f"{PREFIX}/v1/projects/{KEY}/settings") as resp:
        data = json.loads(await resp.read())
    assert data["integrations"]["Segment.io"]["apiHost"] == f"{HOST}{PREFIX}/v1"
    assert segment.paths() == [f"/v1/projects/{KEY}/settings"]


async def test_a_trusted_front_proxy_says_the_page_was_https(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    segment = Segment()
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    gw = await start_gateway(config(site, cdn, extra="proxy: {trusted_proxies: [127.0.0.1/32]}"))
    async with gw.request(
        "GET", f"{PREFIX}/v1/projects/{KEY}/settings", headers={"X-Forwarded-Proto": "https"}
    ) as resp:
        data = json.loads(await resp.read())
    assert data["integrations"]["Segment.io"]["protocol"] == "https"
    assert data["metrics"]["sampleRate"] == 0.1


# --- only the configured write key ----------------------------------------------------------------


async def test_only_the_configured_write_key(running: tuple[RunningGateway, Segment]) -> None:
    gw, segment = running
    async with gw.request("GET", f"{PREFIX}/v1/projects/someone_else/settings") as resp:
        assert resp.status == 403
    async with await post(gw, "t", {**EVENT, "writeKey": "someone_else"}) as resp:
        assert resp.status == 403
    async with await post(gw, "t", {**EVENT, "writeKey": KEY}, Authorization=basic("x")) as resp:
        assert resp.status == 403
    no_key = {k: v for k, v in EVENT.items() if k != "writeKey"}
    async with await post(gw, "p", no_key) as resp:
        assert resp.status == 403
    async with await post(gw, "batch", {"batch": [{**EVENT, "writeKey": "other"}]}) as resp:
        assert resp.status == 403
    assert segment.seen == [], "nothing reached Segment"


async def test_body_bound(running: tuple[RunningGateway, Segment]) -> None:
    gw, segment = running
    big = json.dumps({**EVENT, "pad": "x" * MAX_API_BODY}).encode()
    async with await post(gw, "t", big) as resp:
        assert resp.status == 413

    async def chunks() -> Any:
        for _ in range(MAX_API_BODY // 65536 + 2):
            yield b"x" * 65536

    async with gw.request(
        "POST", f"{PREFIX}/v1/batch", data=chunks(), headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 413
    assert segment.seen == []


async def test_an_oversized_asset_is_not_served(
    running: tuple[RunningGateway, Segment], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = running
    monkeypatch.setattr(relay, "MAX_ASSET_BYTES", len(LIBRARY) - 1)
    async with gw.request("GET", f"{PREFIX}/lib.js") as resp:
        assert resp.status == 502
    assert gw.gateway.state.assets.stats().entries == 0


async def test_methods_and_paths_that_are_not_served(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    async with gw.request("GET", f"{PREFIX}/v1/t") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
    async with gw.request("OPTIONS", f"{PREFIX}/v1/t") as resp:
        assert resp.status == 405
    async with gw.request("POST", f"{PREFIX}/lib.js") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
    # Anything else under the prefix is the site's, as before.
    for path in (f"{PREFIX}/robots.txt", f"{PREFIX}/analytics-next/bundles/../x.js"):
        async with gw.request("GET", path) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("site:")
    assert segment.seen == []


# --- the tracking API -----------------------------------------------------------------------------


async def test_events_are_relayed_with_the_visitor_address(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    segment = Segment()
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    gw = await start_gateway(config(site, cdn, extra="proxy: {trusted_proxies: [127.0.0.1/32]}"))
    body = json.dumps(EVENT, separators=(",", ":")).encode()
    async with await post(
        gw,
        "t",
        body,
        Authorization=basic(KEY),
        Cookie="ajs_anonymous_id=aid-1; session=secret",
        Referer=f"http://{HOST}/page",
        **{"X-Forwarded-For": "198.51.100.9, 203.0.113.7", "User-Agent": "Browser/1.0"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert json.loads(await resp.read()) == {"success": True}
    (seen,) = segment.seen
    assert (seen.method, seen.path) == ("POST", "/v1/t")
    assert seen.body == body, "the body goes to Segment byte for byte"
    assert seen.headers["X-Forwarded-For"] == "203.0.113.7"
    assert seen.headers["Authorization"] == basic(KEY)
    assert seen.headers["User-Agent"] == "Browser/1.0"
    assert seen.headers["Content-Type"] == "text/plain"
    for name in ("Cookie", "Referer", "Origin"):
        assert name not in seen.headers


async def test_without_a_trusted_proxy_the_peer_is_the_visitor(
    running: tuple[RunningGateway, Segment],
) -> None:
    gw, segment = running
    async with await post(
        gw,
        "batch",
        {"writeKey": KEY, "batch": [EVENT, EVENT]},
        **{"X-Forwarded-For": "198.51.100.9"},
    ) as resp:
        assert resp.status == 200
    assert segment.seen[0].headers["X-Forwarded-For"] == "127.0.0.1"


async def test_segment_answers_are_passed_on(running: tuple[RunningGateway, Segment]) -> None:
    gw, segment = running
    segment.api_status = 429
    async with await post(gw, "t", EVENT) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"


# --- failures are fast and never delay the page ---------------------------------------------------


async def test_cdn_and_api_down_give_a_fast_502(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    site = await start_upstream(site_app())
    with refused_port() as port:
        gw = await start_gateway(config(site, f"http://127.0.0.1:{port}"))
        started = time.monotonic()
        async with gw.request("GET", f"{PREFIX}/lib.js") as resp:
            assert resp.status == 502
            assert resp.headers["Cache-Control"] == "no-store"
        async with await post(gw, "t", EVENT) as resp:
            assert resp.status == 502
        assert time.monotonic() - started < 2
        # The page does not depend on the CDN: served, with the first-party bootstrap.
        async with gw.request("GET", "/") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert f'"f":"{PREFIX}"' in page
    events = [line for line in gw.log if line.get("event") == "firstparty_error"]
    assert {e["resource"] for e in events} == {"library", "api"}
    assert not [line for line in gw.log if line.get("event") == "upstream_error"]


async def test_a_silent_cdn_is_a_504_and_the_page_is_not_delayed(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "RELAY_TIMEOUT", 0.5)
    segment = Segment(delay=5)
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    gw = await start_gateway(config(site, cdn))

    async def library() -> int:
        async with gw.request("GET", f"{PREFIX}/lib.js") as resp:
            return resp.status

    pending = asyncio.ensure_future(library())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    async with gw.request("GET", "/") as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 0.3, "the page waited for the CDN"
    assert await pending == 504


# --- configuration --------------------------------------------------------------------------------


async def test_off_on_a_site_its_paths_are_the_site_s(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    segment = Segment()
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    gw = await start_gateway(config(site, cdn, site_extra="first_party: false"))
    async with gw.request("GET", f"{PREFIX}/lib.js") as resp:
        assert await resp.text() == f"site:{PREFIX}/lib.js"
    async with gw.request("GET", "/") as resp:
        page = await resp.text()
    assert '"f":null' in page and "/analytics.js/v1/" in page
    assert segment.seen == []


async def test_a_site_path_of_its_own(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    segment = Segment()
    cdn = await start_upstream(segment_app(segment))
    site = await start_upstream(site_app())
    gw = await start_gateway(config(site, cdn, site_extra="first_party: {path: /_/shop}"))
    async with gw.request("GET", "/_/shop/lib.js") as resp:
        assert resp.status == 200 and await resp.read()
    async with gw.request("GET", f"{PREFIX}/lib.js") as resp:
        assert await resp.text() == f"site:{PREFIX}/lib.js"


async def test_the_consent_hook_decides_for_the_bootstrap_and_every_path(
    running: tuple[RunningGateway, Segment], monkeypatch: pytest.MonkeyPatch
) -> None:
    """firstparty.delivery_allowed is the one place the consent rules plug in: when it says
    no, the page loads analytics.js as without first-party delivery, and every first-party
    path, the API included, is a 403 that reaches nothing."""
    gw, segment = running
    asked: list[str | None] = []

    def allowed(headers: Any, site: Any) -> bool:
        asked.append(headers.get("Sec-GPC"))
        return headers.get("Sec-GPC") != "1"

    monkeypatch.setattr(firstparty, "delivery_allowed", allowed)
    gpc = {"Sec-GPC": "1"}
    async with gw.request("GET", "/", headers=gpc) as resp:
        page = await resp.text()
    assert '"f":null' in page
    async with gw.request("GET", f"{PREFIX}/lib.js", headers=gpc) as resp:
        assert resp.status == 403
    async with await post(gw, "t", EVENT, **gpc) as resp:
        assert resp.status == 403
    assert segment.seen == []
    async with gw.request("GET", "/") as resp:
        assert f'"f":"{PREFIX}"' in await resp.text()
    assert asked == ["1", "1", "1", None]
