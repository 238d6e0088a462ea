"""The admin status page as a person sees it: real hand-offs in Chromium through a gateway
with two workers, then a screenshot of /status (with the admin token), checked for being a
picture at all and for showing the numbers the gateway exposes on /metrics.

The journey also checks the fragmentation measure in a real browser: a decorated hand-off
A -> B and its clean-up redirect count once, as carried (the browser sends the marker cookie
on the second leg), and a returning visitor arriving at A from B without identity counts as
missing though it has a cookie on A.

``E2E_STATUS_SHOT=/path/to/file.png`` keeps a copy of the screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import generate_key
from tests.conftest import GatewayProcess, spawn_gateway

from .conftest import HOST_ADMIN, Journey, Sites, gateway_config, skip_unless_ready
from .segment_stand_in import StandIn
from .sites import HOST_A, HOST_B

skip_unless_ready()
pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_TOKEN = generate_key()
Found = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    sites: Sites, stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    """Overrides conftest's ``gateway``: two workers (the page sums over them) and an admin
    token (the page is behind it)."""
    path = tmp_path_factory.mktemp("e2e-status") / "domains.yaml"
    path.write_text(gateway_config(sites, stand_in) + "admin:\n  token: ${ADMIN_TOKEN}\n")
    process = await asyncio.to_thread(
        spawn_gateway, path, "--workers", "2", env={"ADMIN_TOKEN": ADMIN_TOKEN}
    )
    await asyncio.to_thread(process.wait_for, "started", 20, 2)
    previous = sites.origins.gateway_port
    sites.origins.gateway_port = process.port
    yield process
    sites.origins.gateway_port = previous
    await asyncio.to_thread(process.stop)


async def scrape(gateway: GatewayProcess) -> Found:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gateway.admin_port}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Found, name: str, **labels: str) -> int:
    return int(found.get((name, frozenset(labels.items())), 0))


def total(found: Found, name: str, **labels: str) -> int:
    """The sum over every series of ``name`` that has these labels."""
    want = set(labels.items())
    return int(sum(v for (n, lbl), v in found.items() if n == name and want <= lbl))


# Decodes the PNG in the page, draws it, and describes its pixels.
_PIXELS = """async (data) => {
  const img = new Image();
  img.src = 'data:image/png;base64,' + data;
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, img.width, img.height).data;
  let ink = 0; const colours = new Set();
  for (let i = 0; i < px.length; i += 4) {
    if (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200) ink++;
    if (i % 64 === 0) colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
  }
  return {width: img.width, height: img.height, ink: ink / (px.length / 4),
          colours: colours.size};
}"""


async def test_status_page_shows_the_journeys_numbers(
    journey: Journey, gateway: GatewayProcess, tmp_path: Path
) -> None:
    j, o = journey, journey.origins
    before = await scrape(gateway)

    # A visitor lands on A (minted), follows the decorated link to B: one hand-off.
    await j.goto(o.a + "/")
    aid = await j.arrived(HOST_A)
    chain = await j.follow("#to-b")
    assert chain[0].status == 302 and len(chain) == 2, chain
    assert await j.arrived(HOST_B) == aid
    # Back to A from B by a way the gateway cannot decorate (a typed-in link, say): the
    # visitor has a cookie on A, but the arrival carried no identity.
    await j.page.goto(o.a + "/", referer=o.b + "/welcome?from=a", wait_until="load")
    assert await j.arrived(HOST_A) == aid

    after = await scrape(gateway)
    arrivals = "gateway_cross_domain_arrivals_total"

    def delta(name: str, **labels: str) -> int:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(arrivals, site=HOST_B, referrer=HOST_A, identity="carried") == 1
    assert delta(arrivals, site=HOST_B, referrer=HOST_A, identity="missing") == 0
    assert delta(arrivals, site=HOST_A, referrer=HOST_B, identity="missing") == 1
    assert delta(arrivals, site=HOST_A, referrer=HOST_B, identity="carried") == 0

    # The status page, behind the admin token, in the same browser.
    page = await j.context.new_page()
    await page.set_extra_http_headers({"Authorization": f"Bearer {ADMIN_TOKEN}"})
    await page.set_viewport_size({"width": 1400, "height": 900})
    status_url = f"http://{HOST_ADMIN}:{gateway.admin_port}/status"
    response = await page.goto(status_url, wait_until="load")
    assert response is not None and response.status == 200
    shot = tmp_path / "status.png"
    await page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("E2E_STATUS_SHOT"):
        shutil.copyfile(shot, os.environ["E2E_STATUS_SHOT"])
    shown = await page.evaluate(
        """() => {
          const heads = [...document.querySelectorAll('thead tr:last-child th')]
            .map(th => th.innerText.replace(/\\s+/g, ' ').trim());
          const rows = {};
          for (const tr of document.querySelectorAll('tbody tr')) {
            const cells = [...tr.children].map(c => c.innerText.replace(/\\s+/g, ' ').trim());
            rows[cells[0]] = Object.fromEntries(heads.slice(1).map((h, i) => [h, cells[i + 1]]));
          }
          return {rows, text: document.body.innerText};
        }"""
    )
    found = await scrape(gateway)
    await page.close()

    # A picture, not a blank page: wide, with text and colour on it.
    pixels: dict[str, Any] = await j.page.evaluate(
        _PIXELS, base64.b64encode(shot.read_bytes()).decode()
    )
    assert pixels["width"] == 1400 and pixels["height"] >= 600, pixels
    assert 0.01 < pixels["ink"] < 0.5, pixels
    assert pixels["colours"] >= 8, pixels

    # The numbers shown are the ones /metrics gives.
    rows = shown["rows"]
    assert {HOST_A, HOST_B, "all sites"} <= rows.keys(), rows
    source = "gateway_identity_source_total"
    for host in (HOST_A, HOST_B):
        row = rows[host]
        expected = {
            "Requests": total(found, "gateway_requests_total", site=host),
            "Decorated links": total(found, "gateway_links_decorated_total", site=host),
            "Arrivals carried": total(found, arrivals, site=host, identity="carried"),
            "Arrivals missing": total(found, arrivals, site=host, identity="missing"),
            "Restored (URL)": value(found, source, site=host, source="url"),
            "Cookie": value(found, source, site=host, source="cookie"),
            "Minted": value(found, source, site=host, source="minted"),
            "Rewritten": value(found, "gateway_html_rewritten_total", site=host),
        }
        assert {k: row[k] for k in expected} == {k: f"{v:,}" for k, v in expected.items()}
    assert int(rows[HOST_B]["Arrivals carried"]) >= 1
    assert int(rows[HOST_A]["Arrivals missing"]) >= 1
    assert int(rows[HOST_A]["Minted"]) >= 1
    carried = total(found, arrivals, site=HOST_A, identity="carried")
    missing = total(found, arrivals, site=HOST_A, identity="missing")
    assert rows[HOST_A]["Fragmentation"] == f"{missing / (carried + missing) * 100:.1f} %"
    # innerText as rendered: card labels are upper-cased by the style sheet.
    text = " ".join(shown["text"].split()).lower()
    assert "2 workers, counts summed over all of them" in text
    assert "token store up memory" in text
    assert "last load ok" in text
