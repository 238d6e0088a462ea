"""Site modes (``sites[].mode``) on the wire: the real gateway in-process, a real upstream.

``observe``: the visitor gets the upstream's bytes and headers as a plain proxy passes them,
the upstream the request as sent (identity parameters included), and what identity would
have done is counted in the ``gateway_observed_*`` twins, which a reload to ``active`` then
matches with what it does. ``off``: a plain proxy that counts nothing. A reload (what SIGHUP
runs) switches a site's mode for the requests that start after it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from bs4 import BeautifulSoup
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway, Overrides
from gateway.config import load_config
from gateway.store import CircuitBreakerStore, MemoryStore

from .conftest import StartUpstream, _LogSink, bomb
from .test_events_flow import Collector
from .test_events_flow import collector as collector

WWW = "www.example.com"
LEGACY = "legacy.example.com"
PLAIN = "plain.example.com"
CHECKOUT = "checkout.example-pay.com"
AID = "5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f"
VISITOR = f"ajs_anonymous_id={AID}"
NAVIGATION = {"Accept": "text/html"}

# Links to a query target, a token target (LEGACY) and a site of the fleet (WWW); on LEGACY
# the last two are cross-domain, on WWW the first two.
PAGE = f"""<!doctype html><html><head><title>legacy</title></head><body>
<a href="https://{CHECKOUT}/cart">checkout</a>
<a href="https://{LEGACY}/account">account</a>
<a href="https://{WWW}/">home</a>
</body></html>
""".encode()
BIG_LINKS = 5000
BIG = (
    b"<!doctype html><html><head></head><body>"
    + b"".join(
        b'<p><a href="https://%s/item/%d">item</a></p>' % (CHECKOUT.encode(), i)
        for i in range(BIG_LINKS)
    )
    + b"</body></html>"
)


def config_text(
    upstream: str, modes: dict[str, str], *, single_use: bool = False, events: str = ""
) -> str:
    sites = "\n".join(
        f"  - {{host: {host}, upstream: '{upstream}', mode: {modes.get(host, 'active')}}}"
        for host in (WWW, LEGACY, PLAIN)
    )
    return f"""\
sites:
{sites}
cross_domains:
  - {WWW}
  - {{host: {LEGACY}, strategy: token}}
  - {CHECKOUT}
analytics: {{write_key: wk_test, cdn_url: 'http://127.0.0.1:9', first_party: {{path: /_/fp}}}}
tokens: {{single_use: {str(single_use).lower()}}}
proxy: {{max_decoded_html: 65536}}
server: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
{events}"""


# --- The upstream ------------------------------------------------------------------------------


@dataclass
class Upstream:
    """What reached the upstream: each request's target and headers."""

    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    # Set while a request for /slow waits; the test releases it.
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    slow_release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.raw_path, dict(request.headers)))
            await request.read()
            path = request.path
            if path in ("/", "/slow"):
                if path == "/slow":
                    self.slow_started.set()
                    await self.slow_release.wait()
                return web.Response(
                    body=PAGE,
                    headers={
                        "Content-Type": "text/html; charset=utf-8",
                        "Cache-Control": "public, max-age=60",
                        "ETag": '"v1"',
                    },
                )
            if path == "/ws":
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                await ws.send_str(request.raw_path)
                await ws.close()
                return ws
            if path == "/go":
                raise web.HTTPFound(f"https://{CHECKOUT}/pay?step=1")
            if path == "/gz":
                return web.Response(
                    body=gzip.compress(PAGE),
                    headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
                )
            if path in ("/big", "/bomb"):
                # Streamed: no Content-Length, chunked.
                response = web.StreamResponse(headers={"Content-Type": "text/html"})
                body = BIG
                if path == "/bomb":
                    response.headers["Content-Encoding"] = "gzip"
                    body = bomb("gzip", 4 << 20)
                response.enable_chunked_encoding()
                await response.prepare(request)
                for at in range(0, len(body), 16384):
                    await response.write(body[at : at + 16384])
                await response.write_eof()
                return response
            return web.json_response({"path": request.raw_path, "body": "upstream"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        return app


# --- The gateway -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Running:
    gateway: Gateway
    path: Path
    upstream_url: str
    upstream: Upstream
    session: aiohttp.ClientSession
    log: list[dict[str, Any]]
    # config_text's other options, kept across reloads.
    options: dict[str, Any]

    async def get(
        self,
        target: str,
        host: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        url = f"http://127.0.0.1:{self.gateway.bound_port}{target}"
        async with self.session.request(
            method,
            url,
            headers={"Host": host, **(headers or {})},
            data=data,
            allow_redirects=False,
        ) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def direct(self, target: str, headers: dict[str, str] | None = None) -> Reply:
        """The same request straight to the upstream, no gateway."""
        async with self.session.get(
            self.upstream_url + target, headers=headers or {}, allow_redirects=False
        ) as resp:
            reply = Reply(resp.status, resp.headers, await resp.read())
        self.upstream.seen.pop()
        return reply

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        admin = f"http://127.0.0.1:{self.gateway.bound_admin_port}"
        async with self.session.get(admin + "/metrics") as resp:
            text = await resp.text()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def reload(self, modes: dict[str, str]) -> None:
        self.path.write_text(config_text(self.upstream_url, modes, **self.options))
        assert self.gateway.reload() is True

    def requests(self, event: str = "request") -> list[dict[str, Any]]:
        return [line for line in self.log if line.get("event") == event]


Launch = Callable[..., Awaitable[Running]]


@pytest.fixture
async def launch(tmp_path: Path, start_upstream: StartUpstream) -> AsyncIterator[Launch]:
    started: list[Running] = []

    async def launch(modes: dict[str, str], **options: Any) -> Running:
        upstream = Upstream()
        url = await start_upstream(upstream.app())
        path = tmp_path / "gw.yaml"
        path.write_text(config_text(url, modes, **options))
        gateway = Gateway(load_config(path), str(path), Overrides())
        log: list[dict[str, Any]] = []
        gateway.state.log = _LogSink(log)  # type: ignore[assignment]
        await gateway.start()
        session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        running = Running(gateway, path, url, upstream, session, log, options)
        started.append(running)
        return running

    yield launch
    for running in started:
        await running.session.close()
        await running.gateway.drain_and_close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def identity_samples(
    found: Samples, site: str, *, observed: bool
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The non-zero identity counts of ``site``, in the active or the observed series, under
    the active names (so that the two can be compared)."""
    out = {}
    for (name, labels), value in found.items():
        if dict(labels).get("site") != site or not value or not name.endswith("_total"):
            continue
        if observed and name.startswith("gateway_observed_"):
            out[("gateway_" + name.removeprefix("gateway_observed_"), labels)] = value
        elif not observed and name in _ACTIVE_IDENTITY:
            out[(name, labels)] = value
    return out


_ACTIVE_IDENTITY = {
    "gateway_identity_source_total",
    "gateway_links_decorated_total",
    "gateway_html_rewritten_total",
    "gateway_rewrite_failures_total",
    "gateway_html_skipped_total",
    "gateway_cross_domain_arrivals_total",
    "gateway_identity_actions_total",
}


def counted(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def tokens_in(running: Running) -> int:
    store = running.gateway.state.store
    assert isinstance(store, CircuitBreakerStore)
    assert isinstance(store.inner, MemoryStore)
    return len(store.inner)


# --- observe --------------------------------------------------------------------------------------


async def test_observe_sends_the_upstreams_answer_and_counts_what_identity_would_do(
    launch: Launch,
) -> None:
    gw = await launch({LEGACY: "observe"})
    direct = await gw.direct("/")
    # A new visitor: active would mint an id, set its cookie, decorate two links (one with a
    # token) and inject the bootstrap.
    reply = await gw.get("/", LEGACY, headers=NAVIGATION)
    assert reply.status == 200
    assert reply.body == direct.body == PAGE
    for name in ("Content-Type", "Content-Length", "Cache-Control", "ETag"):
        assert reply.headers[name] == direct.headers[name]
    for name in ("Set-Cookie", "Vary"):
        assert name not in reply.headers
    # No token was minted for it: observing writes nothing to the store.
    assert tokens_in(gw) == 0

    found = await gw.metrics()
    assert identity_samples(found, LEGACY, observed=False) == {}
    observed = "gateway_observed_"
    assert counted(found, observed + "identity_source_total", site=LEGACY, source="minted") == 1
    for target in (CHECKOUT, WWW):
        assert counted(found, observed + "links_decorated_total", site=LEGACY, target=target) == 1
    assert counted(found, observed + "html_rewritten_total", site=LEGACY) == 1
    for action in ("set_cookie", "bootstrap"):
        assert counted(found, observed + "identity_actions_total", site=LEGACY, action=action) == 1
    (line,) = gw.requests()
    assert (line["mode"], line["identity"], line["decorated"]) == ("observe", "minted", 2)

    # Going active, the same request gets what was counted, and counts the same numbers.
    gw.reload({LEGACY: "active"})
    reply = await gw.get("/", LEGACY, headers=NAVIGATION)
    assert reply.body != PAGE
    assert reply.headers["Cache-Control"].startswith("private")
    assert "ajs_anonymous_id=" in reply.headers["Set-Cookie"]
    assert tokens_in(gw) == 1
    found = await gw.metrics()
    assert identity_samples(found, LEGACY, observed=False) == identity_samples(
        found, LEGACY, observed=True
    )
    assert "mode" not in gw.requests()[-1]


async def test_observe_forwards_identity_parameters_and_redirects_nothing(
    launch: Launch,
) -> None:
    gw = await launch({LEGACY: "observe"})
    target = f"/account?x=1&ajs_aid={AID}"
    # Active answers the clean-up redirect itself, with the cookie...
    reply = await gw.get(target, WWW, headers=NAVIGATION)
    assert (reply.status, reply.headers["Location"]) == (302, "/account?x=1")
    # ...observed, the request goes to the upstream as sent, identity parameters and all.
    reply = await gw.get(target, LEGACY, headers=NAVIGATION)
    assert reply.status == 200 and "Set-Cookie" not in reply.headers
    assert json.loads(reply.body)["path"] == target
    # A POST too (active would take the parameters out of the forwarded URL).
    reply = await gw.get(target, LEGACY, method="POST", data=b"a=1")
    assert json.loads(reply.body)["path"] == target
    assert [(m, t) for m, t, _ in gw.upstream.seen] == [("GET", target), ("POST", target)]

    found = await gw.metrics()
    observed = "gateway_observed_identity_actions_total"
    assert counted(found, observed, site=LEGACY, action="cleanup_redirect") == 1
    # The redirect's cookie and the POST's (ids from the URL are written on any response).
    assert counted(found, observed, site=LEGACY, action="set_cookie") == 2
    assert counted(found, "gateway_observed_identity_source_total", site=LEGACY, source="url") == 2
    active = "gateway_identity_actions_total"
    assert counted(found, active, site=WWW, action="cleanup_redirect") == 1
    assert counted(found, active, site=LEGACY, action="cleanup_redirect") == 0


async def test_observe_leaves_the_request_headers_and_the_gateways_endpoint_alone(
    launch: Launch,
) -> None:
    gw = await launch({LEGACY: "observe"})
    offered = {"Accept-Encoding": "gzip, dcb, compress"}
    await gw.get("/echo", WWW, headers=offered)
    await gw.get("/echo", LEGACY, headers=offered)
    # An active site asks only for codings it can rewrite; an observed one passes the
    # visitor's choice on.
    assert [h["Accept-Encoding"] for _, _, h in gw.upstream.seen] == [
        "gzip",
        "gzip, dcb, compress",
    ]
    # The freshness endpoint and first-party delivery are the gateway's on an active site;
    # observed, they are paths of the upstream's like any other.
    link = f"/_ajs_gateway/link?to=https://{LEGACY}/"
    reply = await gw.get(link, LEGACY, headers={"Cookie": VISITOR})
    assert (reply.status, json.loads(reply.body)["path"]) == (200, link)
    seen = len(gw.upstream.seen)
    await gw.get("/_/fp/lib.js", WWW)
    assert len(gw.upstream.seen) == seen
    reply = await gw.get("/_/fp/lib.js", LEGACY)
    assert json.loads(reply.body)["path"] == "/_/fp/lib.js"


async def test_observe_counts_a_redirect_it_would_decorate(launch: Launch) -> None:
    gw = await launch({LEGACY: "observe"})
    direct = await gw.direct("/go")
    reply = await gw.get("/go", LEGACY, headers={"Cookie": VISITOR})
    assert reply.status == 302
    assert reply.headers["Location"] == direct.headers["Location"]
    found = await gw.metrics()
    assert (
        counted(found, "gateway_observed_links_decorated_total", site=LEGACY, target="redirect")
        == 1
    )
    assert gw.requests()[-1]["decorated"] == 1
    reply = await gw.get("/go", WWW, headers={"Cookie": VISITOR})
    assert f"ajs_aid={AID}" in reply.headers["Location"]


async def test_observe_passes_compressed_and_streamed_pages_byte_for_byte(
    launch: Launch,
) -> None:
    gw = await launch({LEGACY: "observe"})
    headers = {"Cookie": VISITOR, "Accept-Encoding": "gzip"}
    direct = await gw.direct("/gz", headers)
    reply = await gw.get("/gz", LEGACY, headers=headers)
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-Length"] == direct.headers["Content-Length"]
    assert reply.body == direct.body
    # Longer than the gateway reads whole: streamed as it comes, observed chunk by chunk.
    reply = await gw.get("/big", LEGACY, headers=headers)
    assert reply.body == BIG
    found = await gw.metrics()
    assert counted(found, "gateway_observed_html_rewritten_total", site=LEGACY) == 2
    assert (
        counted(found, "gateway_observed_links_decorated_total", site=LEGACY, target=CHECKOUT)
        == 1 + BIG_LINKS
    )
    assert identity_samples(found, LEGACY, observed=False) == {}


async def test_observe_never_cuts_a_page_the_rewrite_would_refuse(launch: Launch) -> None:
    """A compressed page decoding beyond proxy.max_decoded_html (a bomb): an active site cuts
    the stream, having sent part of a rewrite; an observed one sends every byte unchanged and
    counts the page as it would have been skipped."""
    gw = await launch({LEGACY: "observe"})
    headers = {"Cookie": VISITOR, "Accept-Encoding": "gzip"}
    reply = await gw.get("/bomb", LEGACY, headers=headers)
    assert reply.status == 200
    assert reply.body == bomb("gzip", 4 << 20)
    found = await gw.metrics()
    assert (
        counted(found, "gateway_observed_html_skipped_total", site=LEGACY, reason="too_large") == 1
    )
    (skipped,) = gw.requests("html_skipped")
    assert (skipped["mode"], skipped["reason"]) == ("observe", "too_large")
    with pytest.raises(aiohttp.ClientPayloadError):
        await gw.get("/bomb", WWW, headers=headers)


async def test_observe_exchanges_a_token_without_spending_it(launch: Launch) -> None:
    gw = await launch({LEGACY: "observe"}, single_use=True)
    page = await gw.get("/", WWW, headers={"Cookie": VISITOR})
    token = BeautifulSoup(page.body, "html.parser").find("a", string="account")["href"]
    target = "/account?" + token.partition("?")[2]
    assert "ajs_token=" in target
    reply = await gw.get(target, LEGACY, headers=NAVIGATION)
    assert json.loads(reply.body)["path"] == target
    found = await gw.metrics()
    assert counted(found, "gateway_observed_identity_source_total", site=LEGACY, source="url") == 1
    # Single-use, and still there: observing spent nothing. Active, it is taken once.
    gw.reload({LEGACY: "active"})
    reply = await gw.get(target, LEGACY, headers=NAVIGATION)
    assert reply.status == 302 and f"ajs_anonymous_id={AID}" in reply.headers["Set-Cookie"]
    reply = await gw.get(target, LEGACY, headers=NAVIGATION)
    assert reply.status == 302 and "Set-Cookie" not in reply.headers


async def test_observe_sends_no_hand_off_event(launch: Launch, collector: Collector) -> None:
    events = (
        "events: {enabled: true, write_key: wk_events, flush_interval: 0.05, "
        f"endpoint: '{collector.url}'}}\n"
    )
    gw = await launch({LEGACY: "observe"}, events=events)
    referred = {"Referer": f"https://{CHECKOUT}/", **NAVIGATION}
    reply = await gw.get(f"/account?ajs_aid={AID}", LEGACY, headers=referred)
    assert reply.status == 200
    reply = await gw.get(f"/account?ajs_aid={AID}", WWW, headers=referred)
    assert reply.status == 302
    # Events go in order: once the active site's is in, the observed one's would be too.
    (event,) = await collector.wait_accepted(1)
    assert event["properties"]["to_domain"] == WWW
    assert len(collector.accepted()) == 1


# --- off ------------------------------------------------------------------------------------------


async def test_off_is_a_plain_proxy_that_counts_nothing(launch: Launch) -> None:
    gw = await launch({PLAIN: "off"})
    offered = {"Accept-Encoding": "gzip, dcb", **NAVIGATION}
    reply = await gw.get("/", PLAIN, headers=offered)
    assert reply.body == PAGE and "Set-Cookie" not in reply.headers
    assert reply.headers["Cache-Control"] == "public, max-age=60"
    target = f"/account?ajs_aid={AID}"
    reply = await gw.get(target, PLAIN, headers=offered)
    assert json.loads(reply.body)["path"] == target
    link = f"/_ajs_gateway/link?to=https://{LEGACY}/"
    reply = await gw.get(link, PLAIN, headers={"Cookie": VISITOR, **offered})
    assert json.loads(reply.body)["path"] == link
    reply = await gw.get("/_/fp/lib.js", PLAIN, headers=offered)
    assert json.loads(reply.body)["path"] == "/_/fp/lib.js"
    assert {h["Accept-Encoding"] for _, _, h in gw.upstream.seen} == {"gzip, dcb"}
    found = await gw.metrics()
    assert identity_samples(found, PLAIN, observed=False) == {}
    assert identity_samples(found, PLAIN, observed=True) == {}
    requests = counted(
        found, "gateway_requests_total", site=PLAIN, method="GET", status_class="2xx"
    )
    assert requests == 4
    lines = gw.requests()
    assert [(line["mode"], line["identity"]) for line in lines] == [("off", None)] * 4


async def test_websocket_urls_keep_their_parameters_unless_active(launch: Launch) -> None:
    gw = await launch({LEGACY: "observe", PLAIN: "off"})
    target = f"/ws?room=1&ajs_aid={AID}"
    seen = {}
    for host in (WWW, LEGACY, PLAIN):
        async with gw.session.ws_connect(
            f"http://127.0.0.1:{gw.gateway.bound_port}{target}", headers={"Host": host}
        ) as ws:
            seen[host] = await ws.receive_str(timeout=5)
    assert seen == {WWW: "/ws?room=1", LEGACY: target, PLAIN: target}


# --- Switching by reload, and the status page -----------------------------------------------------


async def test_a_reload_switches_a_sites_mode_for_new_requests(launch: Launch) -> None:
    gw = await launch({LEGACY: "observe"})
    # A request under way when the reload comes keeps the mode it started with.
    slow = asyncio.ensure_future(gw.get("/slow", LEGACY, headers=NAVIGATION))
    await asyncio.wait_for(gw.upstream.slow_started.wait(), 5)
    gw.reload({LEGACY: "active"})
    assert "(observe:" not in gw.gateway.state.config.summary()
    fresh = await gw.get("/", LEGACY, headers=NAVIGATION)
    assert "Set-Cookie" in fresh.headers and fresh.body != PAGE
    gw.upstream.slow_release.set()
    reply = await slow
    assert reply.body == PAGE and "Set-Cookie" not in reply.headers
    # And off, then back to observe.
    gw.reload({LEGACY: "off"})
    assert f"(off: {LEGACY})" in gw.gateway.state.config.summary()
    reply = await gw.get("/", LEGACY, headers=NAVIGATION)
    assert reply.body == PAGE and "Set-Cookie" not in reply.headers
    gw.reload({LEGACY: "observe"})
    assert f"(observe: {LEGACY})" in gw.gateway.state.config.summary()
    reply = await gw.get(f"/?ajs_aid={AID}", LEGACY, headers=NAVIGATION)
    assert reply.status == 200
    modes = [(line["path"], line.get("mode", "active")) for line in gw.requests()]
    assert modes == [("/", "active"), ("/slow", "observe"), ("/", "off"), ("/", "observe")]


async def test_status_page_shows_the_observed_numbers(launch: Launch) -> None:
    gw = await launch({LEGACY: "observe"})
    for _ in range(2):
        await gw.get("/", LEGACY, headers=NAVIGATION)
    await gw.get("/", WWW, headers=NAVIGATION)

    def rows(page: str) -> dict[str, dict[str, str]]:
        soup = BeautifulSoup(page, "html.parser")
        heads = [th.get_text(" ", strip=True) for th in soup.select("thead tr")[-1].find_all("th")]
        out = {}
        for tr in soup.select("tbody tr"):
            cells = [c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])]
            out[cells[0]] = dict(zip(heads[1:], cells[1:], strict=True))
        return out

    page = await gw.gateway.status_page()
    table = rows(page)
    observed = f"{LEGACY} (observed: would have)"
    assert list(table) == [WWW, LEGACY, observed, PLAIN, "all sites"]
    assert (table[LEGACY]["Mode"], table[LEGACY]["Requests"]) == ("observe", "2")
    assert (table[LEGACY]["Minted"], table[LEGACY]["Decorated links"]) == ("0", "0")
    assert table[observed]["Minted"] == "2"
    assert table[observed]["Decorated links"] == "4"
    assert table[observed]["Rewritten"] == table[observed]["Bootstrap"] == "2"
    # Totals are what was done: WWW's page only.
    assert table["all sites"]["Minted"] == "1"
    text = BeautifulSoup(page, "html.parser").get_text(" ", strip=True)
    assert f"Observing 1 {LEGACY}" in text

    # Gone active, the observed row stays, for comparison, beside the real numbers.
    gw.reload({LEGACY: "active"})
    await gw.get("/", LEGACY, headers=NAVIGATION)
    table = rows(await gw.gateway.status_page())
    assert (table[LEGACY]["Mode"], table[LEGACY]["Minted"]) == ("active", "1")
    assert table[observed]["Minted"] == "2"
    assert (
        "Observing" not in BeautifulSoup(await gw.gateway.status_page(), "html.parser").get_text()
    )
    # A site never observed has no such row.
    assert f"{WWW} (observed: would have)" not in table
