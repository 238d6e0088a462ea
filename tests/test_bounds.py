"""Resource bounds a visitor or an upstream cannot lift (security review F4, F5): WebSocket
message size, the wait for an upstream slot, one site's share of the pool, and a visitor that
stops reading."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp import WSMsgType, web

from .conftest import StartGateway, StartUpstream


def ws_echo_app(big: int = 0) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(max_msg_size=0)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT and msg.data == "send-big":
                await sock.send_bytes(b"x" * big)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


async def test_oversized_websocket_message_from_the_visitor_closes_with_1009(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(ws_echo_app())
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        proxy: {{websocket_max_message: 65536}}
        """
    )
    async with gw.session.ws_connect(
        gw.url + "/ws", headers={"Host": "www.example.com"}, max_msg_size=0
    ) as ws:
        await ws.send_bytes(b"a" * 1000)
        assert (await ws.receive(timeout=10)).data == b"a" * 1000
        await ws.send_bytes(b"b" * 200_000)
        msg = await ws.receive(timeout=10)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == 1009


async def test_oversized_websocket_message_from_the_upstream_closes_with_1009(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(ws_echo_app(big=200_000))
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        proxy: {{websocket_max_message: 65536}}
        """
    )
    async with gw.session.ws_connect(
        gw.url + "/ws", headers={"Host": "www.example.com"}, max_msg_size=0
    ) as ws:
        await ws.send_str("send-big")
        msg = await ws.receive(timeout=10)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert ws.close_code == 1009


def hanging_app(started: asyncio.Queue[str], release: asyncio.Event) -> web.Application:
    async def hang(request: web.Request) -> web.Response:
        await started.put(request.path)
        await release.wait()
        return web.Response(text="late")

    async def quick(request: web.Request) -> web.Response:
        return web.Response(text="quick")

    app = web.Application()
    app.router.add_get("/hang", hang)
    app.router.add_get("/quick", quick)
    return app


async def test_waiting_for_an_upstream_slot_is_bounded_then_503(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    started: asyncio.Queue[str] = asyncio.Queue()
    release = asyncio.Event()
    up = await start_upstream(hanging_app(started, release))
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        proxy: {{pool_size: 1, pool_wait_timeout: 0.2}}
        """
    )
    first = asyncio.ensure_future(gw.request("GET", "/hang").__aenter__())
    assert await asyncio.wait_for(started.get(), 10) == "/hang"
    async with gw.request("GET", "/quick") as resp:
        assert resp.status == 503
        assert "too many requests" in await resp.text()
    release.set()
    resp = await asyncio.wait_for(first, 10)
    assert resp.status == 200
    resp.release()
    # The slot came back: the pool serves again.
    async with gw.request("GET", "/quick") as resp:
        assert resp.status == 200
    kinds = [line.get("kind") for line in gw.log if line.get("event") == "upstream_error"]
    assert kinds == ["overloaded"]


async def test_one_site_cannot_take_the_whole_pool_by_default(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    started: asyncio.Queue[str] = asyncio.Queue()
    release = asyncio.Event()
    slow = await start_upstream(hanging_app(started, release))
    other = await start_upstream(hanging_app(asyncio.Queue(), asyncio.Event()))
    gw = await start_gateway(
        f"""
        sites:
          - host: slow.example.com
            upstream: {slow}
          - host: www.example.com
            upstream: {other}
        proxy: {{pool_size: 4, pool_wait_timeout: 30}}
        """
    )
    # Six requests pile up on the slow site: only half the pool (2) reach its upstream.
    hung = [
        asyncio.ensure_future(gw.request("GET", "/hang", host="slow.example.com").__aenter__())
        for _ in range(6)
    ]
    for _ in range(2):
        await asyncio.wait_for(started.get(), 10)
    async with gw.request("GET", "/quick") as resp:
        assert resp.status == 200
        assert await resp.text() == "quick"
    assert started.empty()
    release.set()
    for task in hung:
        resp = await asyncio.wait_for(task, 10)
        assert resp.status == 200
        resp.release()


async def test_a_visitor_that_stops_reading_frees_its_upstream_connection(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """Report F5: visitors that request a large response and never read it must not pin the
    upstream pool: after ``send_timeout`` their connection is cut and the slot comes back."""

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        chunk = b"z" * 65536
        try:
            for _ in range(1024):  # 64 MiB
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/plain", plain)
    up = await start_upstream(app)
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        proxy: {{pool_size: 2, pool_size_per_host: 0, pool_wait_timeout: 30, send_timeout: 0.5}}
        """
    )
    port = gw.gateway.bound_port
    assert port is not None
    stalled = []
    loop = asyncio.get_running_loop()
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, b"GET /big HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        stalled.append(s)
    try:
        # Both slots are held by visitors that read nothing; the next request waits for a
        # slot (pool_wait_timeout is long) and is answered once send_timeout frees one.
        async with gw.request("GET", "/plain") as resp:
            assert resp.status == 200
            assert await resp.text() == "plain"
        events = [line for line in gw.log if line.get("event") == "client_send_timeout"]
        assert events
    finally:
        for s in stalled:
            s.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/plain", headers={"Host": "www.example.com"}) as resp:
            assert resp.status == 200
