"""A stand-in for Segment's CDN and tracking API, so the real analytics.js runs offline.

It serves the standalone build of ``@segment/analytics-next`` (installed by npm into
``tests/e2e/node_modules``) at the path Segment's snippet loads it from, the lazily loaded
chunks at ``/analytics-next/bundles/<name>`` (the standalone build sets webpack's public path
to ``<_cdn>/analytics-next/bundles/``, and the gateway's bootstrap sets ``_cdn`` to our origin),
project settings that send events back here over plain HTTP, and it records every event the
library POSTs to ``/v1/<type>``.

Anything it cannot answer is logged in :attr:`StandIn.misses`, so a test can tell "the library
asked for something we do not serve" from "the gateway broke the journey".
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.demo.segment import cors, project_settings

# The name of a webpack chunk in dist/umd: nothing that could climb out of the directory.
_CHUNK_NAME = re.compile(r"[A-Za-z0-9_.-]+\.js")
_CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Retry-Count"


@dataclass(frozen=True)
class Event:
    """One event as the tracking API received it."""

    path: str  # "t", "p", "i", "batch", ...
    body: dict[str, Any]
    origin: str | None
    # The X-Forwarded-For it came with: the visitor's address, when a relay (the gateway's
    # first-party delivery) sent it.
    forwarded_for: str | None = None

    @property
    def anonymous_id(self) -> str | None:
        value = self.body.get("anonymousId")
        return value if isinstance(value, str) else None

    @property
    def type(self) -> str:
        return str(self.body.get("type", ""))

    @property
    def page_url(self) -> str:
        """The URL of the page the event was sent from, as analytics.js reports it."""
        page = self.body.get("context", {}).get("page", {})
        return str(page.get("url", ""))

    @property
    def host(self) -> str:
        return urlsplit(self.page_url).hostname or ""


@dataclass
class StandIn:
    """Configuration and recordings of one running stand-in."""

    dist: Path
    write_key: str
    origin: str = ""  # set once the server is bound, e.g. http://cdn.segment-stand-in.test:4711
    events: list[Event] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.events.clear()
        self.misses.clear()

    async def wait_for(self, host: str, type_: str = "page", timeout: float = 10.0) -> Event:
        """The first recorded event of ``type_`` sent from a page on ``host``."""

        async def first() -> Event:
            while True:
                for event in self.events:
                    if event.host == host and event.type == type_:
                        return event
                self.changed.clear()
                await self.changed.wait()

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            seen = [(e.type, e.host) for e in self.events]
            raise AssertionError(
                f"stand-in got no {type_!r} event from {host} in {timeout}s; got {seen}; "
                f"unanswered requests: {self.misses}"
            ) from None

    def settings(self) -> dict[str, Any]:
        return project_settings(self.write_key, urlsplit(self.origin).netloc + "/v1")


STAND_IN = web.AppKey("stand_in", StandIn)


async def _library(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    if request.match_info["key"] != stand_in.write_key:
        stand_in.misses.append(f"library for unknown write key {request.match_info['key']!r}")
        raise web.HTTPNotFound()
    return _js(stand_in.dist / "standalone.js")


async def _chunk(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    name = request.match_info["name"]
    path = stand_in.dist / name
    if not _CHUNK_NAME.fullmatch(name) or not path.is_file():
        stand_in.misses.append(f"chunk {name!r}")
        raise web.HTTPNotFound()
    return _js(path)


def _js(path: Path) -> web.Response:
    return web.Response(
        body=path.read_bytes(),
        content_type="application/javascript",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def _settings(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    if request.match_info["key"] != stand_in.write_key:
        stand_in.misses.append(f"settings for unknown write key {request.match_info['key']!r}")
        raise web.HTTPNotFound()
    return cors(request, web.json_response(stand_in.settings()))


async def _preflight(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return cors(request, response)


async def _track(request: web.Request) -> web.StreamResponse:
    stand_in = request.app[STAND_IN]
    path = request.match_info["path"]
    # analytics.js sends JSON as text/plain (no preflight for sendBeacon); parse it regardless.
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        stand_in.misses.append(f"unparsable body on /v1/{path}: {raw[:80]!r}")
        return cors(request, web.Response(status=400))
    origin = request.headers.get("Origin")
    forwarded_for = request.headers.get("X-Forwarded-For")
    items = body.get("batch", []) if path in ("b", "batch") else [body]
    for item in items:
        stand_in.events.append(Event(path, item, origin, forwarded_for))
    stand_in.changed.set()
    return cors(request, web.json_response({"success": True}))


async def _miss(request: web.Request) -> web.StreamResponse:
    request.app[STAND_IN].misses.append(f"{request.method} {request.path_qs}")
    return cors(request, web.Response(status=404))


def stand_in_app(stand_in: StandIn) -> web.Application:
    app = web.Application()
    app[STAND_IN] = stand_in
    app.router.add_get("/analytics.js/v1/{key}/analytics.min.js", _library)
    app.router.add_get("/analytics-next/bundles/{name}", _chunk)
    app.router.add_get("/v1/projects/{key}/settings", _settings)
    app.router.add_route("OPTIONS", "/v1/{path}", _preflight)
    app.router.add_post("/v1/{path}", _track)
    app.router.add_route("*", "/{tail:.*}", _miss)
    return app
