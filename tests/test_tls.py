"""TLS toward upstreams (gateway/tls.py): each guarantee of its docstring against a real TLS
server on loopback, with a certificate authority made for the test (trustme), through the
upstream pool on both event loops and through the whole gateway for HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import trustme
import uvloop
from aiohttp import web

from gateway.options import UpstreamTLS
from gateway.tls import ClientContexts, ca_file_problem, client_context, server_hostname
from gateway.upstream import Origin, UpstreamPool, UpstreamTLSError

from .conftest import StartGateway

T = TypeVar("T")

# The upstream's certificate names this host and the loopback address, nothing else.
NAME = "legacy.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME, "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello over {request.scheme}")

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/{tail:.*}", hello)
    return app


@pytest.fixture
async def tls_upstream(server_context: ssl.SSLContext) -> AsyncIterator[int]:
    """An aiohttp server speaking TLS on a loopback port (its port)."""
    runner = web.AppRunner(hello_app(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


def site_yaml(port: int, tls: str = "") -> str:
    tls_line = f"\n        tls: {tls}" if tls else ""
    return f"""
    sites:
      - host: www.example.com
        upstream: https://127.0.0.1:{port}{tls_line}
    """


def tls_errors(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in log if line.get("event") == "upstream_error"]


# -- the gateway, end to end ---------------------------------------------------------------------


async def test_verified_with_the_sites_ca(
    start_gateway: StartGateway, tls_upstream: int, ca_file: str
) -> None:
    """The certificate names the upstream URL's host (127.0.0.1) and chains to ca_file."""
    gw = await start_gateway(site_yaml(tls_upstream, f"{{ca_file: {ca_file}}}"))
    async with gw.request("GET", "/page") as resp:
        assert resp.status == 200
        assert await resp.text() == "hello over https"
    assert tls_errors(gw.log) == []


async def test_verified_with_a_server_name(
    start_gateway: StartGateway, tls_upstream: int, ca_file: str
) -> None:
    gw = await start_gateway(
        site_yaml(tls_upstream, f"{{ca_file: {ca_file}, server_name: {NAME}}}")
    )
    async with gw.request("GET", "/") as resp:
        assert resp.status == 200


async def test_a_ca_the_gateway_does_not_trust_is_a_502_of_kind_tls(
    start_gateway: StartGateway, tls_upstream: int
) -> None:
    """Without ca_file the system's CAs are used, and they never signed the test CA."""
    gw = await start_gateway(site_yaml(tls_upstream))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 502
        assert "securely" in await resp.text()
    (error,) = tls_errors(gw.log)
    assert error["kind"] == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in error["error"]


async def test_a_server_name_the_certificate_does_not_carry_is_a_502(
    start_gateway: StartGateway, tls_upstream: int, ca_file: str
) -> None:
    gw = await start_gateway(
        site_yaml(tls_upstream, f"{{ca_file: {ca_file}, server_name: other.test}}")
    )
    async with gw.request("GET", "/") as resp:
        assert resp.status == 502
    (error,) = tls_errors(gw.log)
    assert error["kind"] == "tls"
    assert "other.test" in error["error"]


async def test_verify_false_connects_to_any_certificate(
    start_gateway: StartGateway, tls_upstream: int, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway(site_yaml(tls_upstream, "{verify: false, server_name: other.test}"))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 200
        assert await resp.text() == "hello over https"
    assert [w.path for w in gw.gateway.state.config.warnings] == ["sites[0].tls.verify"]
    # Said at start-up too, for deployments that never run check-config.
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (warning,) = [line for line in lines if line["event"] == "config_warning"]
    assert (warning["level"], warning["path"]) == ("warning", "sites[0].tls.verify")


async def test_plain_http_on_an_https_upstream_is_a_tls_error(
    start_gateway: StartGateway, start_upstream: Any
) -> None:
    plain = await start_upstream(hello_app())
    gw = await start_gateway(site_yaml(int(plain.rsplit(":", 1)[1])))
    async with gw.request("GET", "/") as resp:
        assert resp.status == 502
    assert [e["kind"] for e in tls_errors(gw.log)] == ["tls"]


async def test_websocket_over_wss_is_verified_like_http(
    start_gateway: StartGateway, tls_upstream: int, ca_file: str
) -> None:
    trusted = await start_gateway(
        site_yaml(tls_upstream, f"{{ca_file: {ca_file}, server_name: {NAME}}}")
    )
    async with trusted.session.ws_connect(
        trusted.url + "/ws", headers={"Host": "www.example.com"}
    ) as ws:
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "echo:ping"

    untrusted = await start_gateway(site_yaml(tls_upstream))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await untrusted.session.ws_connect(
            untrusted.url + "/ws", headers={"Host": "www.example.com"}
        )
    assert info.value.status == 502
    assert [e["kind"] for e in tls_errors(untrusted.log)] == ["tls"]

    misnamed = await start_gateway(
        site_yaml(tls_upstream, f"{{ca_file: {ca_file}, server_name: other.test}}")
    )
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await misnamed.session.ws_connect(misnamed.url + "/ws", headers={"Host": "www.example.com"})
    assert [e["kind"] for e in tls_errors(misnamed.log)] == ["tls"]


# -- the upstream pool, on both event loops --------------------------------------------------------

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a scenario on a fresh loop of the parametrized kind (production runs uvloop,
    whose TLS transport is its own)."""

    def run_on(scenario: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(asyncio.wait_for(scenario, 15))

    return run_on


async def _serve_tls(context: ssl.SSLContext) -> tuple[asyncio.Server, Origin]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Until the client goes away, however it does (a refused handshake included).
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    return server, Origin("https", "127.0.0.1", port)


def _pool() -> UpstreamPool:
    return UpstreamPool(connect_timeout=5, read_timeout=5, pool_size=4, keepalive_timeout=30)


async def _get(pool: UpstreamPool, origin: Origin) -> bytes:
    response = await pool.request(origin, "GET", "/", [("Host", "x")], None, None)
    try:
        return await response.read()
    finally:
        response.release()


def test_pool_verifies_with_the_origins_setting(
    run: Callable[[Coroutine[Any, Any, None]], None],
    server_context: ssl.SSLContext,
    ca_file: str,
) -> None:
    async def scenario() -> None:
        server, origin = await _serve_tls(server_context)
        pool = _pool()
        try:
            with pytest.raises(UpstreamTLSError) as info:
                await _get(pool, origin)  # the defaults: the system's CAs
            assert info.value.kind == "tls"
            pool.configure_tls({origin: UpstreamTLS(ca_file=ca_file)})
            assert await _get(pool, origin) == b"ok"
            pool.configure_tls({origin: UpstreamTLS(ca_file=ca_file, server_name="other.test")})
            with pytest.raises(UpstreamTLSError, match=r"other\.test"):
                await _get(pool, origin)
            pool.configure_tls({origin: UpstreamTLS(verify=False)})
            assert await _get(pool, origin) == b"ok"
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_a_changed_setting_closes_idle_connections_made_under_the_old_one(
    run: Callable[[Coroutine[Any, Any, None]], None],
    server_context: ssl.SSLContext,
    ca_file: str,
) -> None:
    async def scenario() -> None:
        server, origin = await _serve_tls(server_context)
        pool = _pool()
        try:
            pool.configure_tls({origin: UpstreamTLS(verify=False)})
            assert await _get(pool, origin) == b"ok"
            assert pool.stats().idle == {origin: 1}
            # The same setting again (a reload that changed something else) keeps it ...
            pool.configure_tls({origin: UpstreamTLS(verify=False)})
            assert pool.stats().idle == {origin: 1}
            # ... a stricter one does not let a connection it never checked be reused.
            pool.configure_tls({origin: UpstreamTLS(ca_file=ca_file, server_name="other.test")})
            assert pool.stats().idle == {}
            with pytest.raises(UpstreamTLSError):
                await _get(pool, origin)
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_a_ca_file_gone_since_the_check_is_a_tls_error(
    run: Callable[[Coroutine[Any, Any, None]], None],
    server_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        server, origin = await _serve_tls(server_context)
        pool = _pool()
        try:
            pool.configure_tls({origin: UpstreamTLS(ca_file=str(tmp_path / "removed.pem"))})
            with pytest.raises(UpstreamTLSError, match="cannot load the TLS setting"):
                await _get(pool, origin)
            assert pool.stats().busy == 0
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    run(scenario())


# -- the pieces ------------------------------------------------------------------------------------


def test_one_context_per_distinct_setting(ca_file: str) -> None:
    contexts = ClientContexts()
    verified = contexts.get(UpstreamTLS(ca_file=ca_file))
    assert contexts.get(UpstreamTLS(ca_file=ca_file)) is verified
    assert contexts.get(UpstreamTLS(ca_file=ca_file, server_name=NAME)) is not verified
    assert contexts.get(UpstreamTLS()) is not verified


def test_contexts_are_strict_unless_verify_is_false(ca_file: str) -> None:
    strict = client_context(UpstreamTLS(ca_file=ca_file))
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert strict.cert_store_stats()["x509_ca"] == 1
    loose = client_context(UpstreamTLS(verify=False))
    assert (loose.verify_mode, loose.check_hostname) == (ssl.CERT_NONE, False)
    assert server_hostname(UpstreamTLS(), "legacy") == "legacy"
    assert server_hostname(UpstreamTLS(server_name=NAME), "10.0.0.7") == NAME


def test_ca_file_problems(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    assert ca_file_problem(ca_file) is None
    leaf = tmp_path / "leaf.pem"
    ca.issue_cert(NAME).cert_chain_pems[0].write_to_path(str(leaf))
    key = tmp_path / "key.pem"
    ca.issue_cert(NAME).private_key_pem.write_to_path(str(key))
    der = tmp_path / "ca.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    problems = {
        name: ca_file_problem(str(path))
        for name, path in {
            "missing": tmp_path / "nope.pem",
            "directory": tmp_path,
            "leaf": leaf,
            "key": key,
            "der": der,
        }.items()
    }
    assert "does not exist" in str(problems["missing"])
    assert "is a directory" in str(problems["directory"])
    assert "holds no CA certificate" in str(problems["leaf"])
    assert "holds no PEM certificate" in str(problems["key"])
    assert "openssl x509 -inform der" in str(problems["der"])
