"""The proxy against real aiohttp upstreams: routing, methods, streaming, header hygiene,
byte-exact targets, redirects, WebSockets and upstream faults."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re

import aiohttp
import pytest
from aiohttp import web

from gateway.proxy import RequestIds

from .conftest import RunningGateway, StartGateway, StartUpstream, bomb, refused_port


def site_yaml(upstream: str, host: str = "www.example.com", extra: str = "") -> str:
    return f"""
    sites:
      - host: {host}
        upstream: {upstream}
    {extra}
    """


def echo_app() -> web.Application:
    """Answers every request with what it received, as JSON."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_routes_by_host_and_refuses_unknown_hosts(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    a = await start_upstream(echo_app())

    async def other(request: web.Request) -> web.Response:
        return web.Response(text="other site")

    b_app = web.Application()
    b_app.router.add_get("/{tail:.*}", other)
    b = await start_upstream(b_app)
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {a}
          - host: "*.other.test"
            upstream: {b}
        """
    )
    async with gw.request("GET", "/x", host="WWW.Example.COM:8080") as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/x"
    async with gw.request("GET", "/", host="shop.other.test") as resp:
        assert await resp.text() == "other site"
    for host in ("evil.example", "other.test", "www.example.com.evil.net", ""):
        async with gw.request("GET", "/", host=host) as resp:
            assert resp.status == 421, host
            assert "Misdirected" in await resp.text()


async def _raw_request(port: int, head: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    data = await reader.read()
    writer.close()
    status, _, body = data.partition(b"\r\n\r\n")
    return status, body


async def test_absolute_form_target_cannot_reach_another_host(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """An absolute-form target naming another authority than Host is refused with 400 (RFC
    9112 §3.2.2 would let us replace Host; refusing cannot be bypassed); our own is routed,
    with only its path forwarded."""
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    port = gw.gateway.bound_port
    assert port is not None
    status, _ = await _raw_request(
        port,
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: www.example.com\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status.startswith(b"HTTP/1.1 400")
    status, body = await _raw_request(
        port,
        b"GET http://www.example.com/latest?x=1 HTTP/1.1\r\nHost: www.example.com\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["raw_path"] == "/latest?x=1"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_methods_and_bodies(
    method: str, start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    payload = b"x" * 3000 if method not in ("GET", "OPTIONS") else b""
    async with gw.request(method, "/m", data=payload or None) as resp:
        seen = await resp.json()
    assert seen["method"] == method
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_request_body_is_streamed_to_the_upstream(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """The upstream sees the first part of an upload before the client has sent the rest."""
    first_seen = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            first_seen.set()
        return web.json_response({"total": total})

    app = web.Application()
    app.router.add_post("/upload", upload)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))

    async def body() -> object:
        yield b"a" * 65536
        await asyncio.wait_for(first_seen.wait(), 5)
        yield b"b" * 65536

    async with gw.request("POST", "/upload", data=body()) as resp:
        assert (await resp.json())["total"] == 131072


async def test_response_body_is_streamed_to_the_client(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """The client gets the first bytes while the upstream is still waiting to send more."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        await resp.write(b"first")
        await asyncio.wait_for(release.wait(), 5)
        await resp.write(b"second")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", slow)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    async with gw.request("GET", "/") as resp:
        first = await resp.content.readexactly(5)
        assert first == b"first"
        release.set()
        assert await resp.read() == b"second"


async def test_hop_by_hop_headers_dropped_and_forwarding_headers_set(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def handler(request: web.Request) -> web.Response:
        resp = web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        resp.headers["Connection"] = "X-Resp-Hop"
        resp.headers["X-Resp-Hop"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["X-End-To-End"] = "kept"
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    headers = {
        "Connection": "keep-alive, X-Req-Hop",
        "X-Req-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Custom": "kept",
    }
    async with gw.request(
        "GET", "/", headers=headers, skip_auto_headers=("Accept-Encoding", "User-Agent")
    ) as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "X-Resp-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-End-To-End"] == "kept"
    for dropped in ("x-req-hop", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in seen, dropped
    assert seen["x-custom"] == "kept"
    assert seen["host"] == "www.example.com"
    # The client is not a trusted proxy: its forwarding claims are replaced, not appended to.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "www.example.com"
    # The gateway adds no Accept-Encoding (nor User-Agent) the client did not send.
    assert "accept-encoding" not in seen


async def test_trusted_front_proxy_forwarding_is_appended(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up, extra="proxy: {trusted_proxies: [127.0.0.0/8]}"))
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with gw.request("GET", "/", headers=headers) as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


async def test_preserve_host_off_sends_the_upstream_host(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
            preserve_host: false
        """
    )
    async with gw.request("GET", "/") as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["host"] == up.removeprefix("http://")


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/./c/../d?x=%41&y=1+2&z=%zz&&w",
        "/%7Euser/caf%C3%A9?q=%e2%82%ac#not-sent",
        "//double//slashes/?a=",
        "/bare-question-mark?",
        "/semi;colon=1/x?a=b;c=d",
    ],
)
async def test_request_target_forwarded_byte_for_byte(
    target: str, start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    wire = target.split("#", 1)[0]
    port = gw.gateway.bound_port
    assert port is not None
    head = f"GET {wire} HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
    _, body = await _raw_request(port, head.encode())
    assert json.loads(body)["raw_path"] == wire


async def test_redirects_are_returned_not_followed(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere?x=1")

    app = web.Application()
    app.router.add_get("/", redirect)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere?x=1"


async def test_compressed_non_html_passes_through_untouched(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    blob = gzip.compress(b'{"k": "' + b"v" * 10000 + b'"}')

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=blob,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    app = web.Application()
    app.router.add_get("/", handler)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    async with gw.request("GET", "/", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == blob


async def test_head_keeps_content_length(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 1234, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/", handler)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    async with gw.request("HEAD", "/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1234"
        assert await resp.read() == b""


async def test_websocket_relay_both_ways(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        await ws.prepare(request)
        await ws.send_str(f"hello {request.cookies.get('session', '?')} {request.raw_path}")
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    async with gw.session.ws_connect(
        gw.url + "/ws?room=1&ajs_aid=forged&ajs_token=x",
        headers={"Host": "www.example.com", "Cookie": "session=abc"},
        protocols=("chat.v1", "chat.v2"),
    ) as ws:
        assert ws.protocol == "chat.v2"
        # Identity parameters are the gateway's: they never reach the upstream (report F4).
        assert (await ws.receive_str(timeout=5)) == "hello abc /ws?room=1"
        await ws.send_str("ping")
        assert (await ws.receive_str(timeout=5)) == "echo:ping"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive_bytes(timeout=5)) == b"\x02\x01\x00"


async def test_unreachable_upstream_is_502(start_gateway: StartGateway) -> None:
    with refused_port() as port:
        gw = await start_gateway(site_yaml(f"http://127.0.0.1:{port}"))
        async with gw.request("GET", "/") as resp:
            assert resp.status == 502
            assert "Bad Gateway" in await resp.text()
    assert any(line["event"] == "upstream_error" for line in gw.log)


async def test_a_dead_upstream_is_logged_once_a_second_and_the_rest_counted(
    start_gateway: StartGateway,
) -> None:
    requests = 40
    with refused_port() as port:
        gw = await start_gateway(site_yaml(f"http://127.0.0.1:{port}"))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _ in range(requests):
            async with gw.request("GET", "/") as resp:
                assert resp.status == 502

        def faults() -> list[dict]:
            return [line for line in gw.log if line["event"] == "upstream_error"]

        # The last line is a report once the window of the last fault has closed.
        deadline = loop.time() + 10
        while "suppressed" not in faults()[-1] or "error" in faults()[-1]:
            assert loop.time() < deadline, faults()
            await asyncio.sleep(0.05)
        elapsed = loop.time() - began
        await asyncio.sleep(1.2)
    lines = faults()
    # Every fault is accounted for: written in full, or counted on a later line.
    assert sum(("error" in line) + line.get("suppressed", 0) for line in lines) == requests
    # One line a second at most (each opens a window of a second), however many faults.
    assert len(lines) <= elapsed + 1
    first, last = lines[0], lines[-1]
    assert (first["level"], first["site"], first["kind"]) == (
        "warning",
        "www.example.com",
        "connect",
    )
    assert "suppressed" not in first and first["error"]
    assert set(last) == {"time", "level", "event", "site", "kind", "suppressed"}
    async with gw.session.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert (
        f'gateway_upstream_errors_total{{kind="connect",site="www.example.com"}} {requests}.0'
        in text
    )


async def test_slow_upstream_is_504(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/", slow)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up, extra="proxy: {read_timeout: 0.3}"))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 504


async def test_small_body_that_stalls_mid_way_is_a_timeout_not_unreachable(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """The upstream was reached and started answering, then went silent past read_timeout:
    a 504 and kind "timeout" (not a 502 "could not be reached")."""

    async def stalling(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"s" * 500)
        await asyncio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_get("/", stalling)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up, extra="proxy: {read_timeout: 0.3}"))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 504
        assert "did not answer in time" in await resp.text()
    kinds = [line["kind"] for line in gw.log if line.get("event") == "upstream_error"]
    assert kinds == ["timeout"]


async def test_long_download_is_not_cut_by_a_total_time_limit(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """Only silence counts: a body trickling for longer than read_timeout still completes."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(b"." * 100)
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", trickle)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up, extra="proxy: {read_timeout: 0.3}"))
    async with gw.request("GET", "/") as resp:
        assert len(await resp.read()) == 800


def _dying_app(length: int | None, sent: int) -> web.Application:
    async def dying(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        await resp.write(b"d" * sent)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", dying)
    app.router.add_get("/ok", ok)
    return app


@pytest.mark.parametrize(
    ("length", "sent"),
    [(1000, 500), (2_000_000, 1_000_000), (None, 300_000)],
    ids=["small-with-length", "large-with-length", "chunked"],
)
async def test_upstream_dying_mid_body_never_looks_complete(
    length: int | None, sent: int, start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(_dying_app(length, sent))
    gw = await start_gateway(site_yaml(up))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with gw.request("GET", "/") as resp:
            if resp.status == 502:
                # A small body is read whole before answering: the truth is a 502.
                raise aiohttp.ClientPayloadError("502 instead of a truncated body")
            await resp.read()
    # The same gateway, and its pool towards the same upstream, are still fine afterwards.
    async with gw.request("GET", "/ok") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_client_disconnect_mid_download_does_not_wedge(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(10_000):
                await resp.write(b"e" * 65536)
        except ConnectionError:
            pass
        return resp

    app = web.Application()
    app.router.add_get("/", endless)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/ok", ok)
    up = await start_upstream(app)
    gw = await start_gateway(site_yaml(up))
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.bound_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()
    for _ in range(50):
        if gw.gateway.state.in_flight == 0:
            break
        await asyncio.sleep(0.1)
    assert gw.gateway.state.in_flight == 0
    async with gw.request("GET", "/ok") as resp:
        assert await resp.text() == "ok"


async def test_admin_endpoints(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    async with gw.request("GET", "/page?secret=1") as resp:
        assert resp.status == 200
    async with gw.session.get(gw.admin_url + "/healthz") as resp:
        assert resp.status == 200
    async with gw.session.get(gw.admin_url + "/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ready"
        assert body["dependencies"]["store"]["state"] == "up"
    async with gw.session.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert (
        'gateway_requests_total{method="GET",site="www.example.com",status_class="2xx"} 1.0' in text
    )
    assert "gateway_upstream_latency_seconds_bucket" in text
    assert "gateway_in_flight_requests" in text
    # Admin paths are not reachable through the proxy port.
    async with gw.request("GET", "/metrics", host="127.0.0.1") as resp:
        assert resp.status == 421


async def test_access_log_line_has_no_query_or_cookies(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    cookie = {"Cookie": "ajs_anonymous_id=secret-id"}
    async with gw.request("GET", "/page?ajs_aid=secret-id&x=1", headers=cookie) as resp:
        assert resp.status == 302
    async with gw.request("POST", "/page?ajs_aid=secret-id&x=1", headers=cookie) as resp:
        assert resp.status == 200
    async with gw.request("GET", "/page?q=secret-id", headers=cookie) as resp:
        assert resp.status == 200
    lines = [entry for entry in gw.log if entry["event"] == "request"]
    assert [line["status"] for line in lines] == [302, 200, 200]
    line = lines[-1]
    assert line["path"] == "/page"
    assert line["status"] == 200 and line["upstream_status"] == 200
    assert line["site"] == "www.example.com" and line["method"] == "GET"
    assert line["bytes"] > 0 and line["duration_ms"] >= line["upstream_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["level"] == "info" and line["client_ip"] == "127.0.0.1"
    assert "secret-id" not in json.dumps(gw.log)


async def test_the_access_line_says_what_was_done_about_identity(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    page = (
        b"<html><head></head><body><a href='https://other.test/a'>a</a>"
        b"<a href='https://other.test/b'>b</a></body></html>"
    )

    async def html(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    async def go(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://other.test/checkout")

    async def huge(request: web.Request) -> web.Response:
        body = bomb("gzip", 1 << 20)
        headers = {"Content-Type": "text/html", "Content-Encoding": "gzip"}
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/page", html)
    app.router.add_get("/go", go)
    app.router.add_get("/huge", huge)
    up = await start_upstream(app)
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        cross_domains: [other.test]
        proxy: {{trusted_proxies: [127.0.0.0/8], max_decoded_html: 65536}}
        """
    )
    aid = "secret-aid-4711"
    cookie = {"Cookie": f"ajs_anonymous_id={aid}"}
    asked = [
        ("/page", {}),
        ("/page", cookie),
        (f"/page?ajs_aid={aid}&x=1", {}),
        ("/page?ajs_aid=not%20an%20id", cookie),
        ("/go", cookie),
        ("/huge", {**cookie, "Accept-Encoding": "gzip"}),
        ("/page", {**cookie, "X-Forwarded-For": "6.6.6.6, 198.51.100.7"}),
    ]
    minted = None
    for path, headers in asked:
        async with gw.request("GET", path, headers=headers) as resp:
            await resp.read()
            minted = minted or resp.cookies.get("ajs_anonymous_id")
    async with gw.request("GET", "/", host="not-served.example") as resp:
        assert resp.status == 421
    lines = [line for line in gw.log if line["event"] == "request"]
    got = [
        (
            line["status"],
            line["identity"],
            line.get("refused_reason"),
            line["decorated"],
            line.get("skipped"),
        )
        for line in lines
    ]
    assert got == [
        (200, "minted", None, 2, None),
        (200, "cookie", None, 2, None),
        (302, "restored", None, 0, None),
        (302, "refused", "invalid", 0, None),
        (302, "cookie", None, 1, None),
        (200, "cookie", None, 0, "too_large"),
        (200, "cookie", None, 2, None),
        (421, None, None, 0, None),
    ]
    # Behind a trusted proxy, the address it saw; the visitor's own claim is ignored.
    assert [line["client_ip"] for line in lines][-2:] == ["198.51.100.7", "127.0.0.1"]
    # Answered by the gateway itself: no upstream time.
    assert [line["upstream_ms"] is None for line in lines] == [
        False,
        False,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert lines[-1]["site"] == "-"
    dump = json.dumps(gw.log)
    assert minted is not None
    for secret in (aid, minted.value, "not an id", "not%20an%20id"):
        assert secret not in dump


def _seen_header(seen: dict, name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


async def test_the_request_id_is_made_or_kept_sent_upstream_returned_and_logged(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    app = echo_app()

    async def large(request: web.Request) -> web.Response:
        # Streamed to the visitor (larger than the small-body limit): its headers go first.
        seen = request.headers.get("X-Request-Id", "")
        return web.Response(body=seen.encode() * 40000, headers={"X-Request-Id": "upstream's"})

    app.router.add_get("/large", large)
    up = await start_upstream(app)
    plain = await start_gateway(site_yaml(up))
    # The test client's address (127.0.0.1) is a trusted front proxy here.
    behind = await start_gateway(site_yaml(up, extra="proxy: {trusted_proxies: [127.0.0.0/8]}"))

    returned_by: dict[int, list[str]] = {id(plain): [], id(behind): []}

    async def through(gw: RunningGateway, sent: str | None, path: str = "/x") -> tuple[str, str]:
        headers = {} if sent is None else {"X-Request-Id": sent}
        async with gw.request("GET", path, headers=headers) as resp:
            returned = resp.headers.getall("X-Request-Id")
            assert len(returned) == 1
            returned_by[id(gw)].append(returned[0])
            body = await resp.read()
        if path == "/large":
            return returned[0], body[: len(returned[0])].decode()
        [upstream_saw] = _seen_header(json.loads(body), "X-Request-Id")
        return returned[0], upstream_saw

    made = re.compile(r"[0-9a-f]{32}")
    # A visitor's own id is not believed; a trusted front proxy's is, if well formed.
    for gw, sent in ((plain, "chosen-by-visitor"), (plain, None), (behind, None)):
        returned, upstream_saw = await through(gw, sent)
        assert made.fullmatch(returned) and upstream_saw == returned
    assert await through(behind, "edge-7f3a.1:2") == ("edge-7f3a.1:2", "edge-7f3a.1:2")
    for malformed in ("has space", "x" * 129, 'quote"d'):
        returned, upstream_saw = await through(behind, malformed)
        assert made.fullmatch(returned) and upstream_saw == returned
    # A streamed body's headers carry it too, in place of the upstream's own.
    assert await through(behind, "big-1", "/large") == ("big-1", "big-1")
    # Each made id is new.
    ids = {(await through(plain, None))[0] for _ in range(5)}
    assert len(ids) == 5
    # The gateway's own answers carry one as well.
    async with plain.request("GET", "/", host="not-served.example") as resp:
        assert resp.status == 421 and made.fullmatch(resp.headers["X-Request-Id"])
        returned_by[id(plain)].append(resp.headers["X-Request-Id"])
    async with behind.request("GET", "/p?ajs_aid=abc", headers={"X-Request-Id": "r-302"}) as resp:
        assert resp.status == 302 and resp.headers["X-Request-Id"] == "r-302"
        returned_by[id(behind)].append("r-302")
    # The log line of each request names the id the visitor and the upstream got.
    for gw in (plain, behind):
        logged = [line["request_id"] for line in gw.log if line["event"] == "request"]
        assert logged == returned_by[id(gw)]


def test_made_request_ids_are_random_hex_and_new_across_refills() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(1000)]  # about four reads of the OS's random source
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    assert len(set(made)) == len(made)


async def test_a_websocket_upgrade_carries_the_request_id_both_ways(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    async def ws_id(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(request.headers.get("X-Request-Id", "none"))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_id)
    gw = await start_gateway(site_yaml(await start_upstream(app)))
    async with gw.session.ws_connect(gw.url + "/ws", headers={"Host": "www.example.com"}) as ws:
        upstream_saw = await ws.receive_str(timeout=5)
        returned = ws._response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", returned) and upstream_saw == returned
    # The relay's log line is written once both sides have closed.
    for _ in range(100):
        lines = [line for line in gw.log if line["event"] == "request"]
        if lines:
            break
        await asyncio.sleep(0.05)
    [line] = lines
    assert (line["request_id"], line["status"]) == (returned, 101)


async def test_expect_100_continue_is_answered_and_the_body_forwarded(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up))
    port = gw.gateway.bound_port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    # The client holds the body back until the gateway says go on.
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    seen = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert seen["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert "expect" not in {k.lower() for k, _ in seen["headers"]}


async def test_non_utf8_response_header_bytes_are_not_lost(start_gateway: StartGateway) -> None:
    """A legacy upstream's Latin-1 header value reaches the visitor (as UTF-8), not emptied."""

    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="caf\xe9.pdf"\r\n'
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(legacy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await start_gateway(site_yaml(f"http://127.0.0.1:{port}"))
        async with gw.request("GET", "/") as resp:
            assert resp.status == 200
            raw = dict(resp.raw_headers)[b"Content-Disposition"]
            assert raw == 'attachment; filename="café.pdf"'.encode()
            assert await resp.read() == b"ok"
    finally:
        server.close()


async def test_idle_and_dribbling_client_connections_are_closed(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """A connection that never completes its request head (slowloris) or sits idle is closed
    after proxy.client_idle_timeout, so it cannot hold a connection slot for ever."""
    up = await start_upstream(echo_app())
    gw = await start_gateway(site_yaml(up, extra="proxy: {client_idle_timeout: 0.5}"))
    port = gw.gateway.bound_port
    assert port is not None
    loop = asyncio.get_running_loop()
    for opening in (b"", b"GET / HTTP/1.1\r\nHost: www.exa"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(opening)
        start = loop.time()
        data = await asyncio.wait_for(reader.read(), 5)  # returns at EOF
        assert loop.time() - start < 3
        assert not data.startswith(b"HTTP/1.1 200")
        writer.close()
    # A request sent in time is served as usual.
    async with gw.request("GET", "/ok") as resp:
        assert resp.status == 200
