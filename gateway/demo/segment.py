"""The demo's stand-in for Segment: its CDN, its tracking API, and the demo's own pages.

- CDN: ``/analytics.js/v1/<key>/analytics.min.js``, where the gateway's bootstrap and
  Segment's snippet load analytics.js from. It serves the real ``@segment/analytics-next``
  when the browser tests have installed it (``tests/e2e/node_modules``, by ``npm ci``), with
  its lazily loaded chunks and project settings pointing the library back here; otherwise a
  small shim (``analytics-shim.js``) that sends page and track events the same way.
- Tracking API: ``POST /v1/<type>`` records every event, as Segment's API would receive it.
- ``/``: the demo's start page; ``/results``: the events grouped by anonymousId, one verdict
  per walk (through the gateway, without it).

Everything stays in memory and on loopback; nothing is sent anywhere.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .pages import Guide, results_page, start_page
from .results import Event, Walk, summarise

# Where `npm ci` in tests/e2e puts the standalone build, in a checkout of the repository.
NPM_DIST = (
    Path(__file__).resolve().parents[2] / "tests/e2e/node_modules/@segment/analytics-next/dist/umd"
)
SHIM = Path(__file__).resolve().parent / "analytics-shim.js"

# The name of a webpack chunk in dist/umd: nothing that could climb out of the directory.
_CHUNK_NAME = re.compile(r"[A-Za-z0-9_.-]+\.js")
_CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Retry-Count"
# A person clicking around makes a few dozen events; this only bounds a runaway page.
_MAX_EVENTS = 10_000


@dataclass(frozen=True)
class Library:
    """The analytics.js the stand-in serves: the npm build's directory, or the shim."""

    dist: Path | None

    @property
    def description(self) -> str:
        if self.dist is None:
            return (
                "analytics.js here is a small shim (gateway/demo/analytics-shim.js) that sends "
                "page events with the anonymousId as analytics.js does; `make test` installs "
                "the real @segment/analytics-next, which the demo then serves instead."
            )
        return (
            f"analytics.js here is the real @segment/analytics-next {_version(self.dist)}, "
            "from tests/e2e/node_modules."
        )


def _version(dist: Path) -> str:
    try:
        manifest = json.loads((dist.parent.parent / "package.json").read_text())
    except (OSError, ValueError):
        return "(version unknown)"
    return str(manifest.get("version", "(version unknown)"))


class LibraryMissing(Exception):
    """``--analytics-js npm`` was asked for, and the npm build is not installed."""


def find_library(choice: str) -> Library:
    """``npm``: the real analytics.js, which must be installed; ``shim``: the shim; ``auto``:
    the real one when installed, else the shim."""
    installed = (NPM_DIST / "standalone.js").is_file()
    if choice == "npm" and not installed:
        raise LibraryMissing(
            f"--analytics-js npm: {NPM_DIST / 'standalone.js'} is not there "
            "(run `npm ci` in tests/e2e, or `make e2e`)"
        )
    if choice == "shim" or not installed:
        return Library(None)
    return Library(NPM_DIST)


@dataclass
class StandIn:
    """The stand-in's configuration and what it received."""

    library: Library
    guide: Guide
    walks: Sequence[Walk]
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=_MAX_EVENTS))

    def settings(self, host: str, write_key: str) -> dict[str, Any]:
        return project_settings(write_key, f"{host}/v1")


STAND_IN = web.AppKey("stand_in", StandIn)


def project_settings(write_key: str, api_host: str) -> dict[str, Any]:
    """Project settings in the shape Segment's CDN serves them (only what analytics.js reads):
    the Segment.io destination pointed at ``api_host`` (``host:port/v1``) over plain HTTP, no
    other destinations, no remote metrics. Shared with the browser tests' stand-in."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": "http",
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Let the page's origin read the answer, with credentials (analytics.js's requests)."""
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response


def _js(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        content_type="application/javascript",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _library(request: web.Request) -> web.StreamResponse:
    library = request.app[STAND_IN].library
    if library.dist is not None:
        return _js((library.dist / "standalone.js").read_bytes())
    # The shim posts events back to the origin it was loaded from.
    api = json.dumps(f"http://{request.host}")
    return _js(SHIM.read_bytes().replace(b"__API__", api.encode()))


async def _chunk(request: web.Request) -> web.StreamResponse:
    dist = request.app[STAND_IN].library.dist
    name = request.match_info["name"]
    if dist is None or not _CHUNK_NAME.fullmatch(name) or not (dist / name).is_file():
        raise web.HTTPNotFound()
    return _js((dist / name).read_bytes())


async def _settings(request: web.Request) -> web.StreamResponse:
    settings = request.app[STAND_IN].settings(request.host, request.match_info["key"])
    return cors(request, web.json_response(settings))


async def _preflight(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return cors(request, response)


async def _track(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    # analytics.js sends JSON as text/plain (no preflight); parse it regardless.
    try:
        body = json.loads(await request.read())
    except ValueError:
        return cors(request, web.Response(status=400))
    if not isinstance(body, dict):
        return cors(request, web.Response(status=400))
    items = body.get("batch", []) if request.match_info["path"] == "batch" else [body]
    now = time.time()
    origin = request.headers.get("Origin")
    for item in items:
        if isinstance(item, dict):
            stand_in.events.append(Event.from_payload(item, origin, now))
    return cors(request, web.json_response({"success": True}))


async def _start(request: web.Request) -> web.StreamResponse:
    return _html(start_page(request.app[STAND_IN].guide))


async def _results(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    summaries = summarise(stand_in.events, stand_in.walks)
    return _html(results_page(summaries, "/", len(stand_in.events)))


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STAND_IN].events.clear()
    raise web.HTTPSeeOther("/results")


def stand_in_app(stand_in: StandIn) -> web.Application:
    app = web.Application()
    app[STAND_IN] = stand_in
    app.router.add_get("/", _start)
    app.router.add_get("/results", _results)
    app.router.add_post("/reset", _reset)
    app.router.add_get("/analytics.js/v1/{key}/analytics.min.js", _library)
    app.router.add_get("/analytics-next/bundles/{name}", _chunk)
    app.router.add_get("/v1/projects/{key}/settings", _settings)
    app.router.add_route("OPTIONS", "/v1/{path}", _preflight)
    app.router.add_post("/v1/{path}", _track)
    return app
