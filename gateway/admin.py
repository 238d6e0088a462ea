"""The admin listener: liveness, readiness and Prometheus metrics, on a port of its own so that
it is never reachable through the sites."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .proxy import ProxyState
from .responses import drop_server_header

STATE_KEY = web.AppKey("state", ProxyState)
# A coroutine returning the token store's health, e.g. {"state": "up"}; set by app.py.
StoreCheck = Callable[[], Awaitable[dict[str, Any]]]
STORE_CHECK_KEY = web.AppKey[StoreCheck]("store_check")


async def healthz(request: web.Request) -> web.Response:
    """200 while the process is alive and its event loop answers."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 once the config is loaded and the proxy accepts; 503 while draining.

    Dependencies are reported but do not make the gateway unready: a down token store only
    disables token decoration, and the sites must stay up.
    """
    state = request.app[STATE_KEY]
    store = await request.app[STORE_CHECK_KEY]()
    body = {
        "status": "draining" if state.draining else "ready",
        "config": state.config.path,
        "sites": len(state.config.sites),
        "in_flight": state.in_flight,
        "dependencies": {"store": store},
    }
    return web.json_response(body, status=503 if state.draining else 200)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[STATE_KEY].metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def make_admin_app(state: ProxyState, store_check: StoreCheck) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(drop_server_header)
    app[STATE_KEY] = state
    app[STORE_CHECK_KEY] = store_check
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
