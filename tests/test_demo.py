"""`make demo` keeps working: the demo command starts the sites, the CDN stand-in and the
gateway, and a visitor's id crosses from the shop to the checkout domain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from gateway.demo.results import Event, Walk, hue, summarise

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_config(tmp_path: Path) -> tuple[Path, int]:
    """config/demo.yaml with every port moved to a free one, so the test can run anywhere."""
    text = (REPO / "config" / "demo.yaml").read_text()
    for port in ("8080", "9901", "8001", "8002", "8003"):
        text = text.replace(port, str(_free_port()))
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    gateway_port = int(re.search(r"server:\n  host: 127.0.0.1\n  port: (\d+)", text).group(1))  # type: ignore[union-attr]
    return path, gateway_port


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
    config, port = _demo_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        jar = aiohttp.DummyCookieJar()
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            for _ in range(100):
                try:
                    async with session.get(base + "/", headers={"Host": "x"}) as resp:
                        await resp.read()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            shop = {"Host": f"www.shop.localhost:{port}"}
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
            checkout = {"Host": f"checkout.pay.localhost:{port}"}
            path = href.split(f":{port}", 1)[1]
            async with session.get(base + path, headers=checkout, allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "/cart?item=teapot&qty=1"
                assert f"ajs_anonymous_id={visitor};" in resp.headers["Set-Cookie"]
                assert "Domain=pay.localhost" in resp.headers["Set-Cookie"]
            headers = {**checkout, "Cookie": f"ajs_anonymous_id={visitor}"}
            async with session.get(base + "/cart?item=teapot&qty=1", headers=headers) as resp:
                assert f'<code id="server-id">{visitor}</code>' in await resp.text()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "Demo running. Open in a browser" in out
