"""The admin listener: liveness, readiness, Prometheus metrics, a status page for people and
links for apps, on a port of its own so that it is never reachable through the sites.

With ``admin.token`` set (deployments bind this port to every interface so that probes and the
scraper reach it):

* ``/metrics``, ``/status`` and ``POST /links`` answer only requests carrying
  ``Authorization: Bearer <token>`` (compared in constant time); anything else gets 401 with
  ``WWW-Authenticate: Bearer``. The first two name every site and the hosts that refer
  visitors, and the status page also shows the token store's address; a link carries any
  identity its caller asks for.
* ``/healthz`` and ``/readyz`` stay open, because kubelet probes and load balancers carry no
  credentials, and keep their status codes. Without the token ``/readyz`` answers only
  ``{"status": ...}``: the config path, site count, in-flight count and the token store's
  address and errors are shown to authorized callers only, and the store is not probed for
  an anonymous caller.

The token is read from the running config on every request, so a SIGHUP reload that changes
it takes effect at once.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import applinks
from .links import LinkRefused
from .responses import drop_server_header
from .state import ProxyState
from .store import StoreError

STATE_KEY = web.AppKey("state", ProxyState)
# A coroutine returning the token store's health, e.g. {"state": "up"}; set by app.py.
StoreCheck = Callable[[], Awaitable[dict[str, Any]]]
STORE_CHECK_KEY = web.AppKey[StoreCheck]("store_check")
# A coroutine returning the status page's HTML (gateway/status.py); set by app.py.
StatusPage = Callable[[], Awaitable[str]]
STATUS_PAGE_KEY = web.AppKey[StatusPage]("status_page")

_REALM = 'Bearer realm="gateway-admin"'


def _authorized(request: web.Request) -> bool:
    """True when no token is configured, or the request carries it as a Bearer credential."""
    token = request.app[STATE_KEY].config.admin.token
    if token is None:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values may hold any text; bytes keep compare_digest's constant-time path.
    given = credentials.strip().encode("utf-8", "replace")
    return hmac.compare_digest(given, token.encode("ascii"))


def _unauthorized(request: web.Request) -> web.Response:
    # RFC 6750 section 3: say that a Bearer token is wanted, and whether the one sent was wrong.
    challenge = _REALM
    if "Authorization" in request.headers:
        challenge += ', error="invalid_token"'
    return web.json_response(
        {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": challenge}
    )


async def healthz(request: web.Request) -> web.Response:
    """200 while the process is alive and its event loop answers."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 once the config is loaded and the proxy accepts; 503 while draining.

    Dependencies are reported but do not make the gateway unready: a down token store only
    disables token decoration, and the sites must stay up.
    """
    state = request.app[STATE_KEY]
    status = 503 if state.draining else 200
    summary = "draining" if state.draining else "ready"
    if not _authorized(request):
        return web.json_response({"status": summary}, status=status)
    store = await request.app[STORE_CHECK_KEY]()
    body = {
        "status": summary,
        "config": state.config.path,
        "sites": len(state.config.sites),
        "in_flight": state.in_flight,
        "dependencies": {"store": store},
    }
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized(request)
    registry = request.app[STATE_KEY].metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


_LINK_FIELDS = frozenset({"to", "anonymous_id", "user_id", "ttl"})
_LINK_SHAPE = '{"to": URL, "anonymous_id": id, "user_id": id (optional), "ttl": seconds (optional)}'


def _bad_link_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400, headers={"Cache-Control": "no-store"})


async def links(request: web.Request) -> web.Response:
    """``POST /links``: a link to a configured cross-domain carrying the identity in the JSON
    body, by the target's strategy (see gateway/applinks.py). 200 ``{url, expires_at,
    strategy}``; 400 with the reason for a bad request; 503 when the token store does not take
    a token."""
    if not _authorized(request):
        return _unauthorized(request)
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _bad_link_request(f"the body is not JSON (send {_LINK_SHAPE})")
    if not isinstance(body, dict):
        return _bad_link_request(f"the body must be a JSON object: {_LINK_SHAPE}")
    unknown = sorted(set(body) - _LINK_FIELDS)
    if unknown:
        return _bad_link_request(f"unknown field {unknown[0]!r} (send {_LINK_SHAPE})")
    to, aid, uid, ttl = (body.get(k) for k in ("to", "anonymous_id", "user_id", "ttl"))
    if not isinstance(to, str):
        return _bad_link_request(f"to must be the link's URL, a string (send {_LINK_SHAPE})")
    if not isinstance(aid, str):
        return _bad_link_request(f"anonymous_id must be a string (send {_LINK_SHAPE})")
    if uid is not None and not isinstance(uid, str):
        return _bad_link_request("user_id must be a string, or null for none")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        return _bad_link_request("ttl must be a whole number of seconds")
    now = time.time()
    try:
        plan = applinks.plan(
            state.config,
            state.index,
            to=to,
            anonymous_id=aid,
            user_id=uid,
            ttl=ttl,
            now=now,
        )
        link = await applinks.mint(plan, state.index, state.store, now=now)
    except LinkRefused as exc:
        return _bad_link_request(str(exc))
    except StoreError:
        state.metrics.store_errors.labels("put").inc()
        return web.json_response(
            {"error": "the token store did not take the token; try again"},
            status=503,
            headers={"Cache-Control": "no-store", "Retry-After": "1"},
        )
    state.metrics.links_minted.labels(link.strategy).inc()
    return web.json_response(
        {"url": link.url, "expires_at": link.expires_at, "strategy": link.strategy},
        headers={"Cache-Control": "no-store"},
    )


async def status(request: web.Request) -> web.Response:
    """The status page: per-site hand-offs, fragmentation, skipped pages, store and config."""
    if not _authorized(request):
        return _unauthorized(request)
    page = await request.app[STATUS_PAGE_KEY]()
    response = web.Response(text=page, content_type="text/html", charset="utf-8")
    # A page of counts and addresses: never cached, framed, or followed by a Referer, and
    # nothing in it may load or run (it has inline styles only).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def make_admin_app(
    state: ProxyState, store_check: StoreCheck, status_page: StatusPage
) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(drop_server_header)
    app[STATE_KEY] = state
    app[STORE_CHECK_KEY] = store_check
    app[STATUS_PAGE_KEY] = status_page
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/links", links)
    app.router.add_get("/status", status)
    return app
