"""A fleet: two gateway processes, started as users start them, sharing one private Redis.

Whatever member served the page, any member exchanges its token or verifies its signature; a
Redis crash leaves both serving pages (token links bare, never raw ids) and reporting the store
down, and both pick tokens up again when Redis is back, without a restart.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from gateway.options import Identity
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server

from .conftest import GatewayProcess, StartUpstream

WWW = "www.example.com"
PAY = "pay.example-pay.com"
SSO = "sso.example-id.com"
AID = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
UID = "fleet-user-7"
VISITOR = f"ajs_anonymous_id={AID}; ajs_user_id={UID}"
KEYS = "fleetKey-1-Zq8Wm2Xr7Tn4Vb6Pc3Ld9Hs5,fleetKey-0-Ak2Jd8Fh4Gs6Lq1Pw9Ez3Rx7"
PAGE = (
    f'<!doctype html><html><body><a id="pay" href="https://{PAY}/cart">pay</a>'
    f'<a id="sso" href="https://{SSO}/login">sso</a></body></html>'
).encode()
_ANCHOR = re.compile(rb'<a id="(\w+)" href="([^"]*)"')


def site_a() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def site_b() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=f"B {request.host} {request.path_qs}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def write_config(path: Path, a: str, b: str, redis_url: str) -> Path:
    path.write_text(
        "sites:\n"
        f"  - {{host: {WWW}, upstream: '{a}'}}\n"
        f"  - {{host: {PAY}, upstream: '{b}'}}\n"
        f"  - {{host: {SSO}, upstream: '{b}'}}\n"
        "cross_domains:\n"
        f"  - {{host: {PAY}, strategy: token}}\n"
        f"  - {{host: {SSO}, strategy: signed}}\n"
        f"store: {{url: '{redis_url}', timeout_ms: 200}}\n"
        "tokens: {ttl_seconds: 60}\n"
        "signing: {keys: '${GATEWAY_SIGNING_KEYS}'}\n"
    )
    return path


@dataclass
class Member:
    """One gateway process and a client for it."""

    proc: GatewayProcess
    session: aiohttp.ClientSession

    async def get(self, target: str, host: str, cookie: str | None = None) -> tuple[int, Any]:
        headers = {"Host": host} | ({"Cookie": cookie} if cookie else {})
        url = f"http://127.0.0.1:{self.proc.port}{target}"
        async with self.session.get(url, headers=headers, allow_redirects=False) as resp:
            return resp.status, (resp.headers, await resp.read())

    async def links(self) -> dict[str, str]:
        status, (_, body) = await self.get("/", WWW, VISITOR)
        assert status == 200
        return {m[1].decode(): html.unescape(m[2].decode()) for m in _ANCHOR.finditer(body)}

    async def follow(self, link: str) -> tuple[str | None, dict[str, str]]:
        """Follow a link to B here: (Location, the identity cookies set)."""
        parts = urlsplit(link)
        status, (headers, _) = await self.get(f"{parts.path}?{parts.query}", parts.hostname or "")
        assert status == 302
        cookies = {}
        for value in headers.getall("Set-Cookie", ()):
            name, _, rest = value.partition("=")
            cookies[name] = rest.partition(";")[0]
        return headers.get("Location"), cookies

    async def store_state(self) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.proc.admin_port}/readyz"
        async with self.session.get(url) as resp:
            return resp.status, (await resp.json())["dependencies"]["store"]["state"]


@pytest.fixture
async def fleet(
    tmp_path: Path,
    start_upstream: StartUpstream,
    redis_server: RedisServer,
    gateway_process: Callable[..., GatewayProcess],
) -> AsyncIterator[tuple[Member, Member]]:
    config = write_config(
        tmp_path / "fleet.yaml",
        await start_upstream(site_a()),
        await start_upstream(site_b()),
        redis_server.url,
    )
    env = {"GATEWAY_SIGNING_KEYS": KEYS}
    # Started together; each call blocks until its process logs "started".
    procs = await asyncio.gather(
        asyncio.to_thread(gateway_process, config, env=env),
        asyncio.to_thread(gateway_process, config, env=env),
    )
    assert procs[0].port != procs[1].port
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield Member(procs[0], session), Member(procs[1], session)


# The ids analytics.js reads, and the server-only copy of the anonymous id.
HANDED_OVER = {"ajs_anonymous_id": AID, "ajs_user_id": UID, Identity.shadow_cookie: AID}


def token_of(link: str) -> str | None:
    return parse_qs(urlsplit(link).query).get("ajs_token", [None])[0]


async def test_any_member_exchanges_what_another_minted(
    fleet: tuple[Member, Member], redis_server: RedisServer
) -> None:
    one, two = fleet
    for minter, redeemer in ((one, two), (two, one)):
        links = await minter.links()
        assert token_of(links["pay"]) is not None and AID not in links["pay"]
        assert "ajs_sig=" in links["sso"]
        assert await redeemer.follow(links["pay"]) == ("/cart", HANDED_OVER)
        assert await redeemer.follow(links["sso"]) == ("/login", HANDED_OVER)

    stale = (await one.links())["pay"]
    redis_server.kill()
    for member in fleet:
        links = await member.links()
        # Pages still served; the token link is left bare rather than given the raw id.
        assert links["pay"] == f"https://{PAY}/cart"
        assert "ajs_sig=" in links["sso"]
        assert await member.store_state() == (200, "down")
        assert await member.follow(stale) == ("/cart", {})
        # Signatures need no store: the fleet still hands identity over to sso.
        assert await member.follow(links["sso"]) == ("/login", HANDED_OVER)

    redis_server.start()
    for member in fleet:
        assert await member.store_state() == (200, "up")
    for minter, redeemer in ((one, two), (two, one)):
        links = await minter.links()
        assert token_of(links["pay"]) is not None
        assert await redeemer.follow(links["pay"]) == ("/cart", HANDED_OVER)
    for member in fleet:
        assert member.proc.proc.poll() is None
