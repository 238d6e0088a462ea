"""``python -m gateway demo``: the demo sites, a stand-in for Segment's CDN, and the gateway in
front of them, all on loopback, until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import sys
from urllib.parse import urlsplit

from aiohttp import web

from ..app import Gateway, Overrides
from ..config import ConfigError, load_config
from .sites import CHECKOUT_HOST, SHOP_HOST, checkout_app, shop_app

# The demo runs offline, so the library the bootstrap loads comes from here: it replays the
# queue the bootstrap built and shows the id it was given. The real analytics.js runs in the
# browser tests (tests/e2e).
_STAND_IN = b"""(function () {
  var q = window.analytics || [], id = null;
  for (var i = 0; i < q.length; i++) if (q[i][0] === "setAnonymousId") id = q[i][1];
  var note = document.createElement("p");
  note.id = "analytics-stand-in";
  note.textContent = "analytics.js stand-in loaded; setAnonymousId was queued with: " + id;
  document.body.appendChild(note);
})();
"""


def _stand_in_app() -> web.Application:
    async def library(request: web.Request) -> web.Response:
        return web.Response(body=_STAND_IN, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/analytics.js/v1/{key}/analytics.min.js", library)
    return app


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _main(config_path: str) -> int:
    config = load_config(config_path)
    upstreams = {site.host: urlsplit(site.upstream) for site in config.sites}
    runners = []
    for host, app in ((SHOP_HOST, shop_app()), (CHECKOUT_HOST, checkout_app())):
        parts = upstreams[host]
        runners.append(await _start(app, parts.hostname or "127.0.0.1", parts.port or 80))
    cdn = urlsplit(config.analytics.cdn_url)
    runners.append(await _start(_stand_in_app(), cdn.hostname or "127.0.0.1", cdn.port or 80))
    gateway = Gateway(config, config_path, Overrides())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.request_stop)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    await gateway.start()
    port = gateway.bound_port
    print(
        f"""
Demo running. Open in a browser on this machine:

    http://{SHOP_HOST}:{port}/

1. The shop page shows the anonymous id the gateway minted for you (server and browser agree
   after the first page).
2. Click "Go to checkout": you land on http://{CHECKOUT_HOST}:{port}/cart?item=teapot&qty=1,
   a different registrable domain, with the same id, and the address bar has no ajs_aid.
3. Try the search form and the Pay button: the id follows through GET forms and redirects.

Metrics: http://{config.admin.host}:{gateway.bound_admin_port}/metrics  Ctrl-C stops the demo.
""",
        flush=True,
    )
    await gateway.wait_stopped()
    await gateway.drain_and_close()
    for runner in runners:
        await runner.cleanup()
    return 0


def run_demo(config_path: str) -> int:
    try:
        return asyncio.run(_main(config_path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"{exc} (run the demo from the repository root)", file=sys.stderr)
        return 1
