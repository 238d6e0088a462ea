"""The admin status page: the numbers of a gateway that served traffic, per site, behind
admin.token like /metrics; and status.py's reading and rendering on their own."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from bs4 import BeautifulSoup
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway, Overrides
from gateway.config import load_config
from gateway.html import IMPLEMENTATION
from gateway.keys import generate_key
from gateway.metrics import Metrics
from gateway.status import ConfigVersion, render, snapshot

from .conftest import StartUpstream

WWW = "www.example.com"
PAY = "checkout.example-pay.com"
TOKEN = generate_key()
NAVIGATION = {"Accept": "text/html"}
PAGE = f'<html><head></head><body><a href="https://{PAY}/">pay</a></body></html>'


def config_text(upstream: str, token: str = "'${ADMIN_TOKEN}'") -> str:
    return f"""\
sites:
  - {{host: {WWW}, upstream: '{upstream}'}}
  - {{host: {PAY}, upstream: '{upstream}'}}
cross_domains: [{WWW}, {PAY}]
server: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0, token: {token}}}
"""


def table(html: str) -> dict[str, dict[str, str]]:
    """The Sites table as {site: {column: cell text}}."""
    soup = BeautifulSoup(html, "html.parser")
    heads = [th.get_text(" ", strip=True) for th in soup.select("thead tr")[-1].find_all("th")]
    rows = {}
    for tr in soup.select("tbody tr"):
        cells = [c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])]
        rows[cells[0]] = dict(zip(heads[1:], cells[1:], strict=True))
    return rows


async def scrape(session: aiohttp.ClientSession, admin: str) -> dict[tuple[str, Any], float]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(admin + "/metrics", headers=auth) as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def count(found: dict[tuple[str, Any], float], name: str, **labels: str) -> str:
    """A counter's value as the page writes it."""
    return f"{int(found.get((name, frozenset(labels.items())), 0)):,}"


async def test_status_page_shows_what_the_gateway_counted(
    tmp_path: Path, start_upstream: StartUpstream
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/zipped":
            headers = {"Content-Type": "text/html", "Content-Encoding": "compress"}
            return web.Response(body=b"\x1f\x9d", headers=headers)
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    upstream = await start_upstream(app)
    path = tmp_path / "gw.yaml"
    path.write_text(config_text(upstream))
    gateway = Gateway(load_config(path, env={"ADMIN_TOKEN": TOKEN}), str(path), Overrides())
    await gateway.start()
    base = f"http://127.0.0.1:{gateway.bound_port}"
    admin = f"http://127.0.0.1:{gateway.bound_admin_port}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

            async def get(target: str, host: str, **headers: str) -> int:
                async with session.get(
                    base + target, headers={"Host": host, **headers}, allow_redirects=False
                ) as resp:
                    await resp.read()
                    return resp.status

            for _ in range(3):
                assert await get("/", WWW, **NAVIGATION) == 200  # minted, one link decorated
            from_www = {"Referer": f"https://{WWW}/", **NAVIGATION}
            assert await get("/cart?ajs_aid=abc", PAY, **from_www) == 302  # carried
            assert await get("/cart?ajs_aid=%3C", PAY, **from_www) == 302  # refused, missing
            assert await get("/cart", PAY, Cookie="ajs_anonymous_id=old", **from_www) == 200
            assert await get("/zipped", WWW, Cookie="ajs_anonymous_id=abc") == 200  # skipped
            assert await get("/", "unknown.example.org") == 421

            # Behind the token, like /metrics.
            async with session.get(admin + "/status") as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(admin + "/status", headers=auth) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert resp.headers["Cache-Control"] == "no-store"
                assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
                html = await resp.text()
            found = await scrape(session, admin)
    finally:
        await gateway.drain_and_close()

    rows = table(html)
    assert list(rows) == [WWW, PAY, "all sites"]
    www, pay = rows[WWW], rows[PAY]
    # Every number is the one /metrics exposes.
    source = "gateway_identity_source_total"
    arrivals = "gateway_cross_domain_arrivals_total"
    assert www["Requests"] == "4"
    assert www["Minted"] == count(found, source, site=WWW, source="minted") == "3"
    assert www["Cookie"] == "1"
    assert www["Decorated links"] == count(
        found, "gateway_links_decorated_total", site=WWW, target=PAY
    )
    assert www["Decorated links"] == "3"
    assert www["Rewritten"] == count(found, "gateway_html_rewritten_total", site=WWW) == "3"
    assert www["Skipped, by reason"] == "unknown_coding 1"
    assert www["Fragmentation"] == "–"
    assert pay["Requests"] == "3"
    assert pay["Arrivals carried"] == count(
        found, arrivals, site=PAY, referrer=WWW, identity="carried"
    )
    assert pay["Arrivals carried"] == "1"
    assert pay["Arrivals missing"] == "2"
    assert pay["Fragmentation"] == "66.7 %"
    assert pay["Restored (URL)"] == count(found, source, site=PAY, source="url") == "1"
    assert pay["Refused"] == "1"
    assert pay["Skipped, by reason"] == "none"
    assert rows["all sites"]["Requests"] == "7"

    text = BeautifulSoup(html, "html.parser").get_text(" ", strip=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"SHA-256 {digest[:12]}" in text
    assert f"file {path}" in text
    assert "Requests for no configured site (421): 1." in text
    assert re.search(r"Fragmentation 66\.7 % 2 of 3 arrivals from sibling sites", text)
    assert "Token store up memory" in text
    assert "circuit breaker closed" in text
    assert f"rewriter {IMPLEMENTATION}" in text


async def test_status_page_follows_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text("http://127.0.0.1:9", token=TOKEN))
    gateway = Gateway(load_config(path), str(path), Overrides())
    old = gateway.config_version
    assert old.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("sites:\n  - host: broken\n    upstrem: nope\n")
    assert gateway.reload() is False
    assert gateway.config_version == old
    path.write_text(config_text("http://127.0.0.1:10", token=TOKEN))
    assert gateway.reload() is True
    assert gateway.config_version.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert gateway.config_version.sha256 != old.sha256
    assert gateway.config_version.loaded_at >= old.loaded_at
    text = BeautifulSoup(await gateway.status_page(), "html.parser").get_text(" ", strip=True)
    assert "reloads invalid 1, ok 1" in text
    assert "last load ok" in text
    await gateway.drain_and_close()


def test_render_escapes_and_flags() -> None:
    metrics = Metrics.create()
    hostile = '<script>alert("x")</script>'
    metrics.active.cross_domain_arrivals.labels("a.test", "b.test", "missing").inc(2)
    metrics.active.cross_domain_arrivals.labels("a.test", "b.test", "carried").inc(18)
    metrics.active.cross_domain_arrivals.labels("a.test", "c.test", "carried").inc(10)
    metrics.active.cross_domain_arrivals.labels("b.test", "a.test", "missing").inc(1)
    metrics.store_circuit("redis", True)
    snap = snapshot(
        metrics.registry.collect(),
        sites=["a.test", "b.test", "c.test"],
        config=ConfigVersion(path=hostile, sha256=None, loaded_at=0),
        store={"kind": "redis", "url": "redis://h:6379/0", "state": "down", "error": hostile},
        build={"version": hostile, "python": "3", "implementation": "python"},
        pid=1,
        workers=2,
        now=3600,
    )
    html = render(snap)
    assert hostile not in html and "&lt;script&gt;" in html
    soup = BeautifulSoup(html, "html.parser")
    pills = {
        tr.th.get_text(): [p["class"][1] for p in tr.select(".pill")]
        for tr in soup.select("tbody tr")
    }
    # Threshold 10 %: 2 of 30 is under it, 1 of 1 above; all sites, 3 of 31, under.
    assert pills == {"a.test": ["good"], "b.test": ["bad"], "c.test": [], "all sites": ["good"]}
    text = soup.get_text(" ", strip=True)
    assert "circuit breaker open" in text
    assert "Token store circuit open redis" in text
    assert "(not read from a file)" in text
    assert "2 workers, counts summed over all of them" in text
    assert "1970-01-01 00:00:00 UTC (60 min ago)" in text
    assert soup.find("script") is None
