"""`make demo` keeps working: the demo command starts the sites (behind the gateway and
without it), the Segment stand-in and the gateway; a visitor's id crosses from the shop to the
checkout domain through the gateway; a busy port is one line, not a traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.demo.results import Event, Walk, hue, summarise
from gateway.demo.sites import CHECKOUT_DIRECT_HOST, CHECKOUT_HOST, SHOP_HOST

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_config(tmp_path: Path, cross_domains: str | None = None) -> tuple[Path, int]:
    """config/demo.yaml with every port moved to a free one, so the test can run anywhere;
    ``cross_domains`` replaces that list (a gateway that carries no id, for the control)."""
    text = (REPO / "config" / "demo.yaml").read_text()
    for port in ("8080", "9901", "8001", "8002", "8003"):
        text = text.replace(port, str(_free_port()))
    if cross_domains is not None:
        text = re.sub(r"cross_domains:\n(  - .*\n)+", f"cross_domains:\n{cross_domains}", text)
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    gateway_port = int(re.search(r"server:\n  host: 127.0.0.1\n  port: (\d+)", text).group(1))  # type: ignore[union-attr]
    return path, gateway_port


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    out: Path
    urls: dict[str, str]

    def text(self) -> str:
        return self.out.read_text()


@asynccontextmanager
async def run_demo(tmp_path: Path, *extra: str, config: Path | None = None) -> AsyncIterator[Demo]:
    """``python -m gateway demo`` as `make demo` runs it, on free ports; yields once it has
    printed the URLs to open, and stops it with Ctrl-C (SIGINT) afterwards."""
    if config is None:
        config, _ = _demo_config(tmp_path)
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
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops the demo" not in demo.text():
            assert proc.poll() is None, f"the demo exited: {demo.text()}"
            assert time.monotonic() < deadline, f"the demo did not start: {demo.text()}"
            await asyncio.sleep(0.05)
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
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, demo.text()


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
    config, port = _demo_config(tmp_path)
    async with run_demo(
        tmp_path, "--direct-shop-port", "0", "--direct-checkout-port", "0", config=config
    ) as demo:
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

            direct = demo.urls["without"]
            direct_port = direct.rsplit(":", 1)[1].rstrip("/")
            async with session.get(f"http://127.0.0.1:{direct_port}/") as resp:
                page = await resp.text()
                assert "Set-Cookie" not in resp.headers
            assert "SNIPPET_VERSION" in page and "(function(w,d,c){" not in page
            assert re.search(rf'href="http://{CHECKOUT_DIRECT_HOST}:\d+/cart\?', page), page

            hub_port = demo.urls["start"].rsplit(":", 1)[1].rstrip("/")
            async with session.get(f"http://127.0.0.1:{hub_port}/") as resp:
                start = await resp.text()
            assert "(none)" not in start
            assert demo.urls["with"] in start and demo.urls["without"] in start
            async with session.get(f"http://127.0.0.1:{hub_port}/results") as resp:
                assert "Visitors: No visitors yet" in await resp.text()
    assert "Traceback" not in demo.text()


@pytest.mark.parametrize("busy", ["gateway", "direct"])
def test_a_busy_port_is_one_line_not_a_traceback(tmp_path: Path, busy: str) -> None:
    config, port = _demo_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0 if busy == "direct" else port))
        holder.listen()
        direct = str(holder.getsockname()[1]) if busy == "direct" else "0"
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
