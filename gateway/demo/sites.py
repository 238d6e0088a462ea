"""Two small "legacy" sites for the demo and the tests: a shop and a separate checkout domain.

The demo serves them twice:

- **behind the gateway** (``www.shop.localhost``, ``checkout.pay.localhost``): plain HTML with
  no analytics code and ordinary links between the sites. The gateway adds analytics.js and
  carries the visitor's anonymousId across the links.
- **without the gateway** (``www.shop-direct.localhost``, ``checkout.pay-direct.localhost``):
  the same pages with Segment's snippet in the ``<head>``, the usual way to install
  analytics.js. Each domain's analytics.js keeps its own cookie, so the checkout cannot know
  the shop's visitor. These sites have host names of their own because cookies ignore the
  port: under the same names they would read the ids the gateway left behind.

Every page carries a demo strip (not part of the site) that shows the anonymousId analytics.js
uses on that page as a coloured badge: the colour is computed from the id, so the same colour
on both domains means the same visitor, without reading the id.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

SHOP_HOST = "www.shop.localhost"
CHECKOUT_HOST = "checkout.pay.localhost"
SHOP_DIRECT_HOST = "www.shop-direct.localhost"
CHECKOUT_DIRECT_HOST = "checkout.pay-direct.localhost"

# What Segment's snippet (version 5) queues until analytics.js arrives.
_SNIPPET_METHODS = (
    "trackSubmit trackClick trackLink trackForm pageview identify reset group track ready alias "
    "debug page screen once off on addSourceMiddleware addIntegrationMiddleware setAnonymousId "
    "addDestinationMiddleware register"
).split()

# Segment's snippet as a site owner pastes it into every page, shortened, and loading
# analytics.js from ``cdn`` (the demo's stand-in) instead of cdn.segment.com.
_SNIPPET = """<script>
!function(){{var a=window.analytics=window.analytics||[];if(a.initialize||a.invoked)return;
a.invoked=!0;a.methods={methods};
a.factory=function(m){{return function(){{if(window.analytics.initialized)
return window.analytics[m].apply(window.analytics,arguments);
var args=Array.prototype.slice.call(arguments);args.unshift(m);a.push(args);return a}}}};
for(var i=0;i<a.methods.length;i++){{var k=a.methods[i];a[k]=a.factory(k)}}
a.load=function(key,options){{var s=document.createElement("script");s.async=!0;
s.src=a._cdn+"/analytics.js/v1/"+key+"/analytics.min.js";
var f=document.getElementsByTagName("script")[0];f.parentNode.insertBefore(s,f);
a._loadOptions=options}};
a._writeKey={key};a._cdn={cdn};a.SNIPPET_VERSION="5.2.0";a.load({key});a.page()}}();
</script>"""


@dataclass(frozen=True)
class Variant:
    """How one pair of demo sites is served, and where its pages point."""

    label: str  # shown in the demo strip: "through the gateway" / "without the gateway"
    shop: str | None = None  # the shop's origin; None: SHOP_HOST on the port the visitor used
    checkout: str | None = None  # the checkout's origin; None: as for the shop
    snippet: str = ""  # HTML for the <head>: Segment's snippet, or nothing
    home: str | None = None  # the demo's start page, linked from the strip
    results: str | None = None  # the demo's results page, linked from the strip


BEHIND_GATEWAY = Variant("through the gateway")


def direct_variant(
    shop: str, checkout: str, write_key: str, cdn: str, home: str, results: str
) -> Variant:
    """The sites without the gateway: Segment's snippet in every page, links to each other."""
    snippet = _SNIPPET.format(
        methods=json.dumps(_SNIPPET_METHODS, separators=(",", ":")),
        key=json.dumps(write_key),
        cdn=json.dumps(cdn),
    )
    return Variant("without the gateway", shop, checkout, snippet, home, results)


# Pure CSS and JavaScript for the demo strip; the hue function is the one
# gateway/demo/results.py uses for the same badge on the results page.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{title}</title>
{snippet}
<style>
body{{font-family:system-ui,sans-serif;margin:0;color:#222}}
main{{max-width:44em;margin:1.5em auto;padding:0 1em}}
.demo{{background:#1f2937;color:#f9fafb;padding:.7em 1em;font-size:15px;line-height:1.8}}
.demo a{{color:#93c5fd}}
.demo .where{{font-weight:600}}
.badge{{display:inline-block;min-width:6.5em;padding:0 .6em;border-radius:1em;
  font:600 15px ui-monospace,monospace;color:#fff;background:#6b7280;text-align:center}}
.go{{display:inline-block;margin:.5em 0;padding:.5em 1em;background:#2563eb;color:#fff;
  border-radius:.3em;text-decoration:none;font-weight:600}}
</style>
</head>
<body>
<div class="demo" id="demo-strip">Demo · <span class="where">{label}</span> · you are on
<b>{host}</b><br>
Segment anonymousId on this page: <span class="badge" id="demo-id"
title="waiting for analytics.js">waiting…</span>
{links}
</div>
<main>
<h1>{title}</h1>
{body}
</main>
<script>
(function () {{
  // The demo strip: the anonymousId analytics.js uses here, as a badge coloured by the id.
  var badge = document.getElementById("demo-id"), tries = 0;
  function hue(id) {{
    var h = 0;
    for (var i = 0; i < id.length; i++) h = (Math.imul(h, 31) + id.charCodeAt(i)) >>> 0;
    return h % 360;
  }}
  function show() {{
    var a = window.analytics;
    if (a && a.initialized && typeof a.user === "function" && a.user().anonymousId()) {{
      var id = String(a.user().anonymousId());
      badge.textContent = id.slice(0, 8);
      badge.title = id;
      badge.setAttribute("data-id", id);
      badge.style.background = "hsl(" + hue(id) + ",65%,38%)";
    }} else if (++tries < 150) {{
      setTimeout(show, 100);
    }} else {{
      badge.textContent = "no analytics.js";
      badge.title = "analytics.js did not load on this page";
    }}
  }}
  show();
}})();
</script>
</body>
</html>
"""


def _page(request: web.Request, variant: Variant, title: str, body: str) -> web.Response:
    links = []
    if variant.results:
        links.append(
            f'<a id="demo-results" href="{_attr(variant.results)}">See what Segment received →</a>'
        )
    if variant.home:
        links.append(f'<a id="demo-home" href="{_attr(variant.home)}">Demo start</a>')
    text = _PAGE.format(
        title=html.escape(title),
        snippet=variant.snippet,
        label=html.escape(variant.label),
        host=html.escape(request.url.host or request.host),
        links=" · ".join(links),
        body=body,
    )
    return web.Response(text=text, content_type="text/html")


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _origin(request: web.Request, explicit: str | None, host: str) -> str:
    """The other site's origin: as configured, or ``host`` on the port the visitor used (the
    gateway's, when the sites are behind it)."""
    if explicit:
        return explicit
    port = request.host.rpartition(":")[2] if ":" in request.host else ""
    return f"http://{host}:{port}" if port.isdigit() else f"http://{host}"


def _host(origin: str) -> str:
    return urlsplit(origin).hostname or origin


def shop_app(variant: Variant = BEHIND_GATEWAY) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        checkout = _origin(request, variant.checkout, CHECKOUT_HOST)
        body = f"""<p>A legacy shop. Its checkout lives on another domain,
<b>{html.escape(_host(checkout))}</b>.</p>
<h2>Blue teapot</h2>
<p>A fine blue teapot. <a href="/product/teapot">Details</a></p>
<p><a class="go" id="to-checkout" href="{_attr(checkout)}/cart?item=teapot&amp;qty=1">Go to
checkout</a></p>
<form id="search" action="{_attr(checkout)}/search" method="get"><input name="q" value="teapot">
<button>Search the checkout site</button></form>"""
        return _page(request, variant, "Shop", body)

    async def product(request: web.Request) -> web.Response:
        body = '<p>A fine blue teapot.</p><p><a href="/">Back to the shop</a></p>'
        return _page(request, variant, "Teapot", body)

    async def confirmation(request: web.Request) -> web.Response:
        body = '<p>Thank you for your order.</p><p><a href="/">Back to the shop</a></p>'
        return _page(request, variant, "Order confirmed", body)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/product/teapot", product)
    app.router.add_get("/confirmation", confirmation)
    return app


def checkout_app(variant: Variant = BEHIND_GATEWAY) -> web.Application:
    async def cart(request: web.Request) -> web.Response:
        shop = _origin(request, variant.shop, SHOP_HOST)
        item = html.escape(request.query.get("item", "nothing"))
        body = f"""<p>The checkout, on a different domain from the shop.</p>
<h2>Your cart: {item}</h2>
<form id="pay" action="/pay" method="post"><button>Pay</button></form>
<p><a id="to-shop" href="{_attr(shop)}/">Back to the shop on
{html.escape(_host(shop))}</a></p>"""
        return _page(request, variant, "Checkout", body)

    async def search(request: web.Request) -> web.Response:
        q = html.escape(request.query.get("q", ""))
        return _page(request, variant, "Search results", f"<p>No results for <b>{q}</b>.</p>")

    async def pay(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound(_origin(request, variant.shop, SHOP_HOST) + "/confirmation")

    app = web.Application()
    app.router.add_get("/cart", cart)
    app.router.add_get("/search", search)
    app.router.add_post("/pay", pay)
    return app


async def start_sites(host: str, shop_port: int, checkout_port: int) -> list[web.AppRunner]:
    runners = []
    for app, port in ((shop_app(), shop_port), (checkout_app(), checkout_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    return runners


async def _serve_forever(host: str, shop_port: int, checkout_port: int) -> None:
    await start_sites(host, shop_port, checkout_port)
    print(f"demo sites: shop on {host}:{shop_port}, checkout on {host}:{checkout_port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the demo legacy sites.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--shop-port", type=int, default=8001)
    parser.add_argument("--checkout-port", type=int, default=8002)
    args = parser.parse_args()
    try:
        asyncio.run(_serve_forever(args.host, args.shop_port, args.checkout_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
