"""WebSocket upgrades: connect to the upstream first, then relay frames both ways until either
side closes. Connecting first means an unreachable upstream gets an honest 502 instead of an
accepted socket that closes at once.

Each open relay is listed in ``ProxyState.relays`` so that a shutdown can end it properly:
:meth:`Relay.going_away` closes both sides with ``1001 Going Away`` (RFC 6455 §7.4.1), a
close frame each peer can act on (reconnect elsewhere), never a cut connection.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from . import responses
from .config import Site
from .headers import REQUEST_ID, forwarded_headers, upstream_target
from .hosts import Authority
from .inbound import split_target
from .responses import fault
from .state import Outcome, ProxyState
from .tls import server_hostname

_GOING_AWAY = b"gateway shutting down"

# The WebSocket handshake headers are generated per hop by each side's library.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


async def relay_websocket(
    state: ProxyState,
    request: web.BaseRequest,
    site: Site,
    routed: Authority,
    outcome: Outcome,
) -> web.StreamResponse:
    max_message = state.config.proxy.websocket_max_message
    headers = forwarded_headers(
        request.headers,
        peer=request.remote,
        scheme=request.scheme,
        trusted_proxies=state.config.proxy.trusted_proxies,
        site=site,
        routed=routed,
        request_id=outcome.request_id,
    )
    for name in list(headers):
        if name.lower() in _HANDSHAKE:
            headers.popall(name, None)
    protocols = tuple(
        p.strip()
        for v in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in v.split(",")
        if p.strip()
    )
    base = URL(site.upstream)
    scheme = "wss" if base.scheme == "https" else "ws"
    # Identity parameters are the gateway's, never the upstream's: a WebSocket URL that carries
    # them (it never should) has them removed, as any request forwarded by an active site does
    # (an observed or off site forwards requests as they came).
    target = upstream_target(request.raw_path)
    if site.mode == "active":
        path, query, _, had_identity = split_target(target)
        if had_identity:
            target = f"{path}?{query}" if query else path
    url = URL(f"{scheme}://{base.raw_authority}{target}", encoded=True)
    # wss:// is checked as the site's tls says, with the context the HTTP pool uses for it.
    tls: dict[str, Any] = {}
    if scheme == "wss":
        try:
            tls["ssl"] = state.upstreams.ssl_context(site.tls)
        except (OSError, ssl.SSLError) as exc:
            return fault(state, site, outcome, exc, kind="tls")
        tls["server_hostname"] = server_hostname(site.tls, base.raw_host or "")
    try:
        upstream = await state.session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            autoping=False,
            max_msg_size=max_message,
            **tls,
        )
    except aiohttp.WSServerHandshakeError as exc:
        outcome.upstream_status = exc.status
        return fault(state, site, outcome, exc, kind="ws_handshake")
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        return fault(state, site, outcome, exc, kind="timeout")
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        return fault(state, site, outcome, exc, kind="tls")
    except (aiohttp.ClientError, OSError) as exc:
        return fault(state, site, outcome, exc, kind="connect")
    outcome.upstream_status = 101
    client = responses.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False,
        max_msg_size=max_message,
    )
    client.headers[REQUEST_ID] = outcome.request_id
    await client.prepare(request)
    outcome.status = 101
    relay = Relay(client, upstream)
    state.relays.add(relay)
    if state.draining:
        # Upgraded on a kept-alive connection after the drain began: it ends at once too.
        relay.going_away()
    try:
        await relay.run()
    finally:
        state.relays.discard(relay)
        await upstream.close()
        await client.close()
    return client


class Relay:
    """One relayed WebSocket: frames pumped both ways until a side closes, or until
    :meth:`going_away` ends it."""

    def __init__(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._away = asyncio.Event()

    def going_away(self) -> None:
        """End the relay with 1001 Going Away to both sides (the gateway is shutting down)."""
        self._away.set()

    async def run(self) -> None:
        client, upstream = self.client, self.upstream
        to_upstream = asyncio.ensure_future(_pump(client, upstream))
        to_client = asyncio.ensure_future(_pump(upstream, client))
        away = asyncio.ensure_future(self._away.wait())
        done, pending = await asyncio.wait(
            {to_upstream, to_client, away}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if away in done:
            # Both close handshakes at once, so that a peer slow to answer its close frame
            # does not hold back the other's.
            await asyncio.gather(
                client.close(code=WSCloseCode.GOING_AWAY, message=_GOING_AWAY),
                upstream.close(code=WSCloseCode.GOING_AWAY, message=_GOING_AWAY),
                return_exceptions=True,
            )
            return
        for task in done:
            task.result()


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            break
        elif msg.type == WSMsgType.ERROR:
            break
    code = source.close_code
    await sink.close(code=code if code and code not in (1005, 1006) else 1000)
