"""`make demo` shows the value, and keeps working.

The browser tests run the demo command as a person would, open its start page in headless
Chromium (as tests/e2e does), and walk the journey from the shop to the checkout twice: through
the gateway, where the Segment stand-in's results page must say "1 visitor across 2 domains",
and without it, where it must say "2 visitors". They take screenshots of the start page, the
sites and the results page and check them: the PNG is there and not blank, the verdict box in
the picture has the verdict's colour, and the page the picture shows states the verdict. A
control run with a gateway that does not carry the id across shows that the check can fail.

``DEMO_SHOTS=<dir>`` also keeps the screenshots there.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from gateway.demo.results import Event, Walk, hue, summarise
from gateway.demo.sites import (
    CHECKOUT_DIRECT_HOST,
    CHECKOUT_HOST,
    SHOP_DIRECT_HOST,
    SHOP_HOST,
)

from .conftest import REPO
from .e2e.conftest import CHROMIUM, prerequisites, unavailable

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

DEMO_HOSTS = (SHOP_HOST, CHECKOUT_HOST, SHOP_DIRECT_HOST, CHECKOUT_DIRECT_HOST, "localhost")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The demo's names go to loopback, anything else nowhere: the demo must be offline.
    "--host-resolver-rules="
    + ", ".join([f"MAP {host} 127.0.0.1" for host in DEMO_HOSTS] + ["MAP * ~NOTFOUND"]),
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000
# The verdict boxes' backgrounds (gateway/demo/pages.py): green for one visitor everywhere,
# amber for a person counted twice.
GREEN = (0xDC, 0xFC, 0xE7)
AMBER = (0xFE, 0xF3, 0xC7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_config(tmp_path: Path, cross_domains: str | None = None, gateway_port: int = 0) -> Path:
    """config/demo.yaml with the gateway and its admin on ``gateway_port`` and port 0 (0: chosen
    as they bind) and the demo's own servers, the sites and the Segment stand-in, on free ports.
    Those cannot be 0: the config names them in upstream URLs. ``cross_domains`` replaces that
    list (a gateway that carries no id, for the control)."""
    text = (REPO / "config" / "demo.yaml").read_text()
    ports = {"8080": str(gateway_port), "9901": "0"}
    ports |= {p: str(_free_port()) for p in ("8001", "8002", "8003")}
    # In one pass, so that a port put in cannot be taken for one still to replace.
    text = re.sub(r"\b(8080|9901|8001|8002|8003)\b", lambda m: ports[m.group(1)], text)
    if cross_domains is not None:
        text = re.sub(r"cross_domains:\n(  - .*\n)+", f"cross_domains:\n{cross_domains}", text)
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    out: Path
    urls: dict[str, str]

    def text(self) -> str:
        return self.out.read_text()


async def _start_demo(tmp_path: Path, extra: tuple[str, ...], cross_domains: str | None) -> Demo:
    """The demo once it has printed the URLs to open. The ports picked for its own servers
    were free when picked but are not held, so another process may bind one first: a demo that
    stops on a taken port is started again on new ones."""
    attempts = 5
    for attempt in range(1, attempts + 1):
        config = _demo_config(tmp_path, cross_domains)
        out = tmp_path / "demo.out"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "demo", "--config", str(config), *extra],
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
            )
        demo = Demo(proc, out, {})
        deadline = time.monotonic() + 30
        while "Ctrl-C stops the demo" not in demo.text():
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"the demo did not start within 30 s: {demo.text()}")
            await asyncio.sleep(0.05)
        else:
            return demo
        if attempt == attempts or "already in use" not in demo.text():
            raise AssertionError(f"the demo exited with {proc.returncode}: {demo.text()}")
    raise AssertionError("unreachable")


@asynccontextmanager
async def run_demo(
    tmp_path: Path, *extra: str, cross_domains: str | None = None
) -> AsyncIterator[Demo]:
    """``python -m gateway demo`` as `make demo` runs it, on free ports; yields once it has
    printed the URLs to open, and stops it with Ctrl-C (SIGINT) afterwards."""
    demo = await _start_demo(tmp_path, extra, cross_domains)
    try:
        text = demo.text()
        for key, label in (
            ("start", "Start here:"),
            ("with", "the shop through the gateway:"),
            ("without", "the shop without the gateway:"),
            ("results", "what Segment received:"),
        ):
            found = re.search(re.escape(label) + r"\s+(http://\S+)", text)
            assert found, f"the demo did not print {label!r}: {text}"
            demo.urls[key] = found.group(1)
        yield demo
    finally:
        demo.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(demo.proc.wait, 15)
        except subprocess.TimeoutExpired:
            demo.proc.kill()
            demo.proc.wait()
    assert demo.proc.returncode == 0, demo.text()


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


# --- without a browser ------------------------------------------------------------------


def test_verdicts_count_visitors_per_walk() -> None:
    walks = [
        Walk("with-gateway", "Through the gateway", ("a.test", "b.test")),
        Walk("without-gateway", "Without the gateway", ("a2.test", "b2.test")),
    ]

    def event(aid: str | None, host: str) -> Event:
        return Event("page", aid, f"http://{host}:1/x?y=1", host, 0.0)

    empty = summarise([], walks)
    assert [s.verdict for s in empty] == ["No visitors yet"] * 2
    assert {s.tone for s in empty} == {"waiting"}
    events = [
        event("one", "a.test"),
        event("one", "b.test"),
        event("one", "a.test"),
        event("first", "a2.test"),
        event("second", "b2.test"),
        event(None, "a2.test"),  # no id: not a visitor
        event("other", "elsewhere.test"),  # not part of either walk
    ]
    with_gw, without = summarise(events, walks)
    assert with_gw.verdict == "1 visitor across 2 domains"
    assert with_gw.tone == "ok"
    assert [v.hosts for v in with_gw.visitors] == [("a.test", "b.test")]
    assert len(with_gw.visitors[0].events) == 3
    assert without.verdict == "2 visitors across 2 domains"
    assert without.tone == "split"
    assert "minted its own anonymousId" in without.explanation
    half = summarise([event("one", "a.test")], walks)[0]
    assert (half.verdict, half.tone) == ("1 visitor on 1 domain so far", "waiting")
    assert half.visitors[0].events[0].path == "/x?y=1"


def test_events_are_read_as_analytics_js_sends_them() -> None:
    body = {
        "type": "page",
        "anonymousId": "abc",
        "context": {"page": {"url": "http://www.shop.localhost:8080/cart?x=1"}},
    }
    event = Event.from_payload(body, "http://ignored.test", 1.0)
    assert (event.type, event.anonymous_id, event.host) == ("page", "abc", "www.shop.localhost")
    # No page URL: attributed to the Origin the browser sent it from.
    bare = Event.from_payload({"type": "track", "event": "Paid"}, "http://b.test:1", 2.0)
    assert (bare.host, bare.anonymous_id, bare.name) == ("b.test", None, "Paid")
    assert 0 <= hue("f3b2") < 360 and hue("f3b2") == hue("f3b2") != hue("f3b3")


async def test_demo_carries_the_id_across_domains(tmp_path: Path) -> None:
    """Over plain HTTP (no browser needed): the gateway mints an id on the shop, decorates the
    link to the checkout, and the checkout's clean-up redirect stores the same id; the sites
    without the gateway carry Segment's snippet and link to each other directly; the start
    page explains and shows nothing broken."""
    async with run_demo(tmp_path, "--direct-shop-port", "0", "--direct-checkout-port", "0") as demo:
        port = _port(demo.urls["with"])
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            shop = {"Host": f"{SHOP_HOST}:{port}"}
            async with session.get(base + "/", headers=shop) as resp:
                page = await resp.text()
                cookie = resp.headers["Set-Cookie"]
            minted = re.match(r"ajs_anonymous_id=([0-9a-f-]{36});", cookie)
            assert minted, cookie
            visitor = minted.group(1)
            assert "Domain=shop.localhost" in cookie
            link = re.search(r'id="to-checkout" href="([^"]+)"', page)
            assert link is not None
            href = link.group(1).replace("&amp;", "&")
            assert href.endswith(f"ajs_aid={visitor}")
            assert "<script>(function(w,d,c){" in page  # the bootstrap
            assert "SNIPPET_VERSION" not in page  # behind the gateway: no analytics code
            checkout = {"Host": f"{CHECKOUT_HOST}:{port}"}
            path = href.split(f":{port}", 1)[1]
            async with session.get(base + path, headers=checkout, allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "/cart?item=teapot&qty=1"
                assert f"ajs_anonymous_id={visitor};" in resp.headers["Set-Cookie"]
                assert "Domain=pay.localhost" in resp.headers["Set-Cookie"]

            async with session.get(f"http://127.0.0.1:{_port(demo.urls['without'])}/") as resp:
                page = await resp.text()
                assert "Set-Cookie" not in resp.headers
            assert "SNIPPET_VERSION" in page and "(function(w,d,c){" not in page
            assert re.search(rf'href="http://{CHECKOUT_DIRECT_HOST}:\d+/cart\?', page), page

            hub = f"http://127.0.0.1:{_port(demo.urls['start'])}"
            async with session.get(hub + "/") as resp:
                start = await resp.text()
            assert "(none)" not in start
            assert demo.urls["with"] in start and demo.urls["without"] in start
            async with session.get(hub + "/results") as resp:
                assert "Visitors: No visitors yet" in await resp.text()
    assert "Traceback" not in demo.text()


@pytest.mark.parametrize("busy", ["gateway", "direct"])
def test_a_busy_port_is_one_line_not_a_traceback(tmp_path: Path, busy: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = _demo_config(tmp_path, gateway_port=port if busy == "gateway" else 0)
        direct = str(port) if busy == "direct" else "0"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--config",
                str(config),
                "--direct-shop-port",
                "0",
                "--direct-checkout-port",
                direct,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    if busy == "gateway":
        expected = f"demo: port {port} (the gateway) on 127.0.0.1 is already in use; "
        assert lines[0].startswith(expected), lines
        assert "choose another in" in lines[0] and str(config) in lines[0]
    else:
        assert "(the checkout without the gateway)" in lines[0], lines
        assert "--direct-checkout-port" in lines[0], lines


# --- in a browser -----------------------------------------------------------------------


def _browser_missing() -> str | None:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no browser at {CHROMIUM}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("no playwright Python package")
    return ", ".join(missing) or None


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    problem = _browser_missing()
    if problem:
        unavailable(problem)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


# Decodes a PNG with the browser's own decoder and measures it: size, how much of it differs
# from its most common colour ("ink"), and that colour.
_MEASURE = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], {type: "image/png"}));
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const counts = new Map();
  for (let i = 0; i < data.length; i += 4) {
    const key = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  let top = 0, topCount = 0;
  for (const [key, count] of counts) if (count > topCount) { top = key; topCount = count; }
  const pixels = data.length / 4;
  return {width: bitmap.width, height: bitmap.height, colours: counts.size,
          ink: 1 - topCount / pixels, top: [top >> 16, (top >> 8) & 255, top & 255]};
}"""


@dataclass
class Shots:
    """Screenshots of one run, measured by a page of their own."""

    dir: Path
    meter: Page

    async def take(self, page: Page, name: str, selector: str | None = None) -> dict[str, Any]:
        path = self.dir / f"{name}.png"
        if selector is None:
            await page.screenshot(path=str(path), full_page=True)
        else:
            await page.locator(selector).screenshot(path=str(path))
        keep = os.environ.get("DEMO_SHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        stats: dict[str, Any] = await self.meter.evaluate(_MEASURE, base64.b64encode(data).decode())
        return stats


def _assert_not_blank(stats: dict[str, Any], name: str) -> None:
    assert stats["width"] >= VIEWPORT["width"] and stats["height"] >= 300, (name, stats)
    # Text, buttons and cards cover a fair part of a real page; a blank or error page does not.
    assert stats["colours"] > 50 and stats["ink"] > 0.05, f"{name} looks blank: {stats}"


def _near(colour: list[int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(colour, expected, strict=True))


async def _badge(page: Page) -> tuple[str, str]:
    """The anonymousId the demo strip shows once analytics.js is running, and its colour."""
    badge = page.locator("#demo-id[data-id]")
    await badge.wait_for()
    aid = await badge.get_attribute("data-id")
    assert aid, page.url
    colour = await badge.evaluate("e => getComputedStyle(e).backgroundColor")
    return aid, str(colour)


async def _walk(page: Page, shots: Shots, start: str, button: str, name: str) -> list[str]:
    """From the start page: open the shop, go to the checkout, open the results page; returns
    the ids the demo strip showed on the shop and on the checkout."""
    await page.goto(start)
    async with page.expect_navigation(wait_until="load"):
        await page.click(button)
    shop_id, shop_colour = await _badge(page)
    await shots.take(page, f"{name}-1-shop")
    async with page.expect_navigation(wait_until="load"):
        await page.click("#to-checkout")
    assert "/cart?item=teapot&qty=1" in page.url and "ajs_" not in page.url, page.url
    checkout_id, checkout_colour = await _badge(page)
    await shots.take(page, f"{name}-2-checkout")
    if shop_id == checkout_id:  # (two ids may share a colour: it is a hue out of 360)
        assert shop_colour == checkout_colour, (shop_colour, checkout_colour)
    async with page.expect_navigation(wait_until="load"):
        await page.click("#demo-results")
    return [shop_id, checkout_id]


async def _verdict(page: Page, walk: str) -> tuple[str, list[str]]:
    """The verdict the results page states for ``walk`` once events from both domains are in,
    and the anonymousIds it lists."""
    await page.wait_for_function(
        f"() => document.querySelector('#{walk}')?.dataset.domains === '2'", timeout=TIMEOUT_MS
    )
    verdict = await page.locator(f"#{walk} .verdict").inner_text()
    badges = page.locator(f"#{walk} .visitor .badge")
    ids = [str(await b.get_attribute("title")) for b in await badges.all()]
    return verdict.strip(), ids


@pytest.mark.parametrize("library", ["shim", "npm"])
async def test_one_visitor_through_the_gateway_two_without(tmp_path: Path, library: str) -> None:
    """The whole demo as a person walks it: the start page, both walks, the results page."""
    if library == "npm":
        problem = prerequisites()  # npm ci in tests/e2e, as the browser journeys do
        if problem:
            unavailable(problem)
    shots_dir = tmp_path / "shots"
    shots_dir.mkdir()
    async with chromium() as browser:
        meter = await browser.new_page()
        shots = Shots(shots_dir, meter)
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        async with run_demo(
            tmp_path,
            "--analytics-js",
            library,
            "--direct-shop-port",
            "0",
            "--direct-checkout-port",
            "0",
        ) as demo:
            # The first page: what to do, and nothing that looks broken.
            await page.goto(demo.urls["start"])
            start = await page.locator("main").inner_text()
            for text in (
                "Without the gateway",
                "Through the gateway",
                "Expect 2 visitors",
                "Expect 1 visitor across 2 domains",
            ):
                assert text in start, start
            assert "(none)" not in start and "error" not in start.lower()
            library_line = "real @segment/analytics-next" if library == "npm" else "small shim"
            assert library_line in start
            _assert_not_blank(await shots.take(page, f"{library}-0-start"), "start page")

            ids = await _walk(page, shots, demo.urls["start"], "#open-with", f"{library}-with")
            assert ids[0] == ids[1], f"the gateway did not carry the id: {ids}"
            verdict, listed = await _verdict(page, "with-gateway")
            assert verdict == "Visitors: 1 visitor across 2 domains", verdict
            assert listed == [ids[0]]

            ids = await _walk(
                page, shots, demo.urls["start"], "#open-without", f"{library}-without"
            )
            assert ids[0] != ids[1], f"without the gateway, one id on both domains: {ids}"
            verdict, listed = await _verdict(page, "without-gateway")
            assert verdict == "Visitors: 2 visitors across 2 domains", verdict
            assert listed == ids
            # The first walk's verdict still stands next to it.
            assert (await _verdict(page, "with-gateway"))[0].endswith("1 visitor across 2 domains")

            results = await shots.take(page, f"{library}-3-results")
            _assert_not_blank(results, "results page")
            with_box = await shots.take(page, f"{library}-3-results-with", "#with-gateway .verdict")
            without_box = await shots.take(
                page, f"{library}-3-results-without", "#without-gateway .verdict"
            )
            assert _near(with_box["top"], GREEN), with_box
            assert _near(without_box["top"], AMBER), without_box
        assert not errors, errors


async def test_the_check_fails_when_the_gateway_does_not_carry_the_id(tmp_path: Path) -> None:
    """Control: a gateway whose links to the checkout carry no id (the checkout is not a
    cross-domain) leaves Segment with two visitors, and the results page says so."""
    async with chromium() as browser:
        shots = Shots(tmp_path, await browser.new_page())
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        async with run_demo(
            tmp_path,
            "--analytics-js",
            "shim",
            "--direct-shop-port",
            "0",
            "--direct-checkout-port",
            "0",
            cross_domains=f"  - {SHOP_HOST}\n",
        ) as demo:
            ids = await _walk(page, shots, demo.urls["start"], "#open-with", "control")
            assert ids[0] != ids[1]
            verdict, _ = await _verdict(page, "with-gateway")
            assert verdict == "Visitors: 2 visitors across 2 domains", verdict
