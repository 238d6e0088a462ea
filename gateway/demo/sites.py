"""Two small "legacy" sites for the demo and the tests: a shop and a separate checkout domain.

They know nothing about analytics: plain HTML with ordinary links between them. Each page shows
the ``ajs_anonymous_id`` cookie twice: as the server received it, and as the browser's
JavaScript reads it, so that a person can see the gateway carry one id across the domains.
"""

from __future__ import annotations

import argparse
import asyncio
import html

from aiohttp import web

SHOP_HOST = "www.shop.localhost"
CHECKOUT_HOST = "checkout.pay.localhost"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:44em;margin:2em auto}}code{{background:#eee}}</style>
</head>
<body>
<h1>{title}</h1>
<p>This is a legacy site with no analytics code. Everything analytics-related is added by the
gateway.</p>
<p>Id the server received in the <code>ajs_anonymous_id</code> cookie:
<code id="server-id">{server_id}</code></p>
<p>Id the browser reads from <code>document.cookie</code>: <code id="browser-id">…</code></p>
<p>Address bar: <code id="address">…</code></p>
{body}
<script>
var m = document.cookie.match(/(?:^|; )ajs_anonymous_id=([^;]*)/);
document.getElementById("browser-id").textContent = m ? decodeURIComponent(m[1]) : "(none)";
document.getElementById("address").textContent = location.href;
</script>
</body>
</html>
"""


def _page(request: web.Request, title: str, body: str) -> web.Response:
    server_id = request.cookies.get("ajs_anonymous_id", "(none)")
    text = _PAGE.format(title=html.escape(title), server_id=html.escape(server_id), body=body)
    return web.Response(text=text, content_type="text/html")


def _origin(request: web.Request, host: str) -> str:
    """Links point at the other demo host on the port the visitor used (the gateway's)."""
    port = request.host.rpartition(":")[2] if ":" in request.host else ""
    return f"http://{host}:{port}" if port.isdigit() else f"http://{host}"


def shop_app() -> web.Application:
    async def index(request: web.Request) -> web.Response:
        checkout = _origin(request, CHECKOUT_HOST)
        body = f"""<h2>Products</h2>
<ul><li>Blue teapot — <a href="/product/teapot">details</a></li></ul>
<p><a id="to-checkout" href="{checkout}/cart?item=teapot&amp;qty=1">Go to checkout on
{CHECKOUT_HOST}</a></p>
<form id="search" action="{checkout}/search" method="get"><input name="q" value="teapot">
<button>Search the checkout site</button></form>"""
        return _page(request, "Shop", body)

    async def product(request: web.Request) -> web.Response:
        body = '<p>A fine blue teapot.</p><p><a href="/">Back to the shop</a></p>'
        return _page(request, "Teapot", body)

    async def confirmation(request: web.Request) -> web.Response:
        return _page(request, "Order confirmed", '<p><a href="/">Back to the shop</a></p>')

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/product/teapot", product)
    app.router.add_get("/confirmation", confirmation)
    return app


def checkout_app() -> web.Application:
    async def cart(request: web.Request) -> web.Response:
        shop = _origin(request, SHOP_HOST)
        item = html.escape(request.query.get("item", "nothing"))
        body = f"""<h2>Your cart: {item}</h2>
<form id="pay" action="/pay" method="post"><button>Pay</button></form>
<p><a id="to-shop" href="{shop}/">Back to the shop on {SHOP_HOST}</a></p>"""
        return _page(request, "Checkout", body)

    async def search(request: web.Request) -> web.Response:
        q = html.escape(request.query.get("q", ""))
        return _page(request, "Search results", f"<p>No results for <b>{q}</b>.</p>")

    async def pay(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound(_origin(request, SHOP_HOST) + "/confirmation")

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
