"""Request framing and routing against raw sockets on both sides (security review F1, F2,
F10, F11 and CONNECT).

The upstream here is a recorder: it parses the exact bytes each upstream connection carries
with httptools (llhttp, strict) and answers every request it parsed. The invariant checked
after every exchange: each upstream connection carries exactly the requests the gateway
accepted, each with framing that matches its body, and nothing more (no request hidden in a
body, no bytes left over, no parse error).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway, Overrides
from gateway.config import parse_config
from gateway.hosts import Authority, parse_authority

from .conftest import _LogSink

HOST = b"www.example.com"


@dataclass
class Message:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]


@dataclass
class UpstreamConn:
    messages: list[Message] = field(default_factory=list)
    error: str | None = None


class _Recorder(asyncio.Protocol):
    def __init__(self, conns: list[UpstreamConn]) -> None:
        self.conn = UpstreamConn()
        conns.append(self.conn)
        self.parser = httptools.HttpRequestParser(self)
        self.current: Message | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.conn.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.conn.error = f"{type(exc).__name__}: {exc}"
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = Message("", "", [])

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None and self.transport is not None
        self.current.method = self.parser.get_method().decode()
        self.conn.messages.append(self.current)
        self.current = None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@dataclass
class Rig:
    """A recorder upstream and a gateway in front of it, on an event loop in a thread (so
    that the hypothesis test below can drive them with plain sockets)."""

    loop: asyncio.AbstractEventLoop
    port: int
    conns: list[UpstreamConn]
    log: list[dict[str, Any]]

    def upstream_messages(self) -> list[Message]:
        return [m for c in self.conns for m in c.messages]

    def reset(self) -> None:
        # Pooled upstream connections outlive a test: forget what they carried so far.
        for conn in self.conns:
            conn.messages.clear()
        self.log.clear()


def _rig_config(upstream_port: int) -> str:
    return f"""
sites:
  - host: www.example.com
    upstream: http://127.0.0.1:{upstream_port}
  - host: "*.wild.example.com"
    upstream: http://127.0.0.1:{upstream_port}
server: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
"""


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    conns: list[UpstreamConn] = []
    log: list[dict[str, Any]] = []

    async def start() -> tuple[asyncio.Server, Gateway]:
        server = await asyncio.get_running_loop().create_server(
            lambda: _Recorder(conns), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        config = parse_config(_rig_config(port), "test.yaml", {})
        gateway = Gateway(config, "test.yaml", Overrides())
        gateway.state.log = _LogSink(log)  # type: ignore[assignment]
        await gateway.start()
        return server, gateway

    server, gateway = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    assert gateway.bound_port is not None
    yield Rig(loop, gateway.bound_port, conns, log)

    async def stop() -> None:
        await gateway.drain_and_close()
        server.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@dataclass
class Responses:
    statuses: list[int]
    closed: bool  # the gateway closed the connection after its last response


def exchange(port: int, data: bytes, expect: int) -> Responses:
    """Send raw bytes on a new connection; read until ``expect`` responses came or the gateway
    closed the connection."""
    statuses: list[int] = []

    class _Parser:
        def on_message_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(_Parser())
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        while len(statuses) < expect:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
                break
        if not closed:
            s.settimeout(0.5)
            try:
                closed = s.recv(1) == b""
            except TimeoutError:
                closed = False
    return Responses(statuses, closed)


def wait_for_upstream(rig: Rig, count: int) -> list[Message]:
    """The upstream's messages once ``count`` arrived (they are parsed on the gateway's loop)."""

    async def settle() -> None:
        for _ in range(100):
            if len(rig.upstream_messages()) >= count:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)

    asyncio.run_coroutine_threadsafe(settle(), rig.loop).result(10)
    return rig.upstream_messages()


def assert_framing_invariant(rig: Rig) -> None:
    """Every upstream connection parsed cleanly, and each request's framing is the gateway's
    own and matches its body."""
    for conn in rig.conns:
        assert conn.error is None, conn.error
        for m in conn.messages:
            lengths = m.header("content-length")
            codings = m.header("transfer-encoding")
            assert len(lengths) + len(codings) <= 1, m.headers
            if lengths:
                assert lengths == [str(len(m.body))], m
            if codings:
                assert codings == ["chunked"], m
            if m.method in ("POST", "PUT", "PATCH"):
                assert lengths or codings, m
            assert len(m.header("host")) == 1, m
            assert not m.target.startswith("/smuggled"), m


SMUGGLED = (
    b"GET /smuggled HTTP/1.1\r\nHost: internal-admin.corp\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
)
LAST = b"GET /last HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"


def _chunked(body: bytes) -> bytes:
    return (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"


# --- the report's cases, byte for byte -------------------------------------------------------


def test_f1_connection_content_length_cannot_smuggle_a_request(rig: Rig) -> None:
    rig.reset()
    req = (
        b"POST /ok HTTP/1.1\r\nHost: www.example.com\r\nConnection: Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    ) + SMUGGLED
    got = exchange(rig.port, req + LAST, expect=2)
    assert got.statuses == [200, 200]
    messages = wait_for_upstream(rig, 2)
    assert [(m.method, m.target) for m in messages] == [("POST", "/ok"), ("GET", "/last")]
    assert messages[0].body == SMUGGLED
    assert messages[0].header("content-length") == [str(len(SMUGGLED))]
    assert_framing_invariant(rig)


def test_f1_captured_victim_request_is_impossible(rig: Rig) -> None:
    """Report F1 (b)/(c): an incomplete request smuggled in a body would capture the next
    visitor's head on a pooled connection. The upstream must see the attacker's body as a
    body, and the victim must get their own response."""
    rig.reset()
    partial = (
        b"POST /store HTTP/1.1\r\nHost: www.example.com\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 150\r\n\r\n"
    )
    attack = (
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nConnection: Content-Length, keep-alive\r\n"
        b"Content-Length: %d\r\n\r\n" % len(partial)
    ) + partial
    assert exchange(rig.port, attack + LAST, expect=2).statuses == [200, 200]
    victim = (
        b"GET /account HTTP/1.1\r\nHost: www.example.com\r\n"
        b"Cookie: session=VICTIM-SESSION-SECRET\r\nConnection: close\r\n\r\n"
    )
    assert exchange(rig.port, victim, expect=1).statuses == [200]
    messages = wait_for_upstream(rig, 3)
    assert [m.target for m in messages] == ["/", "/last", "/account"]
    assert messages[0].body == partial
    assert messages[2].header("cookie") == ["session=VICTIM-SESSION-SECRET"]
    assert_framing_invariant(rig)


@pytest.mark.parametrize("token", ["Host", "Transfer-Encoding", "Content-Length, Host"])
def test_connection_cannot_remove_framing_or_host(rig: Rig, token: str) -> None:
    rig.reset()
    body = b"hello=world"
    req = (
        b"PUT /t HTTP/1.1\r\nHost: www.example.com\r\nConnection: %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % token.encode()
    ) + _chunked(body)
    assert exchange(rig.port, req + LAST, expect=2).statuses == [200, 200]
    messages = wait_for_upstream(rig, 2)
    assert messages[0].body == body
    assert messages[0].header("host") == ["www.example.com"]
    assert_framing_invariant(rig)


AMBIGUOUS = {
    "cl+te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "te+cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "duplicate cl, same": b"Content-Length: 4\r\nContent-Length: 4\r\n",
    "duplicate cl, different": b"Content-Length: 4\r\nContent-Length: 5\r\n",
    "cl list": b"Content-Length: 4, 4\r\n",
    "cl plus": b"Content-Length: +4\r\n",
    "cl negative": b"Content-Length: -1\r\n",
    "cl hex": b"Content-Length: 0x4\r\n",
    "te not final chunked": b"Transfer-Encoding: chunked, identity\r\n",
    "te xchunked": b"Transfer-Encoding: xchunked\r\n",
    "te space before colon": b"Transfer-Encoding : chunked\r\n",
    "obs-fold": b"X-Folded: a\r\n b\r\nContent-Length: 4\r\n",
    "obs-fold te": b"X-A: b\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "bare lf": b"X-Bare: 1\nContent-Length: 4\r\n",
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_ambiguous_framing_is_refused_and_the_connection_closed(rig: Rig, case: str) -> None:
    rig.reset()
    req = b"POST /amb HTTP/1.1\r\nHost: www.example.com\r\n" + AMBIGUOUS[case] + b"\r\n"
    req += b"0\r\n\r\n" + LAST
    got = exchange(rig.port, req, expect=2)
    assert got.statuses == [400], case
    assert got.closed, case
    assert wait_for_upstream(rig, 0) == [], case


# --- Host and routing (F2) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        b"www.example.com:80@evil.com",
        b"user@www.example.com",
        b"www.example.com:abc",
        b"www.example.com:99999",
        b"www.example.com:0",
        b"www.example.com:",
        b"www.example.com..",
        b'"><script>alert(1)</script>.wild.example.com',
        b"a b.wild.example.com",
        b"x%2e.wild.example.com",
        b"[::1",
        b"[not-v6]",
    ],
)
def test_hosts_that_are_not_hosts_get_400_and_are_never_forwarded(rig: Rig, host: bytes) -> None:
    rig.reset()
    req = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    assert exchange(rig.port, req, expect=1).statuses == [400], host
    assert wait_for_upstream(rig, 0) == []


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"http://internal-admin.corp/", 400),
        (b"http://www.example.com:8080/", 400),
        (b"http://user:pw@www.example.com/", 400),
        (b"ftp://www.example.com/", 400),
        (b"http://www.example.com/x?y=1", 200),
        (b"http://WWW.EXAMPLE.COM:80/x", 200),
    ],
)
def test_absolute_form_authority_must_be_the_host(rig: Rig, target: bytes, status: int) -> None:
    rig.reset()
    req = b"GET " + target + b" HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
    assert exchange(rig.port, req, expect=1).statuses == [status], target
    messages = wait_for_upstream(rig, 1 if status == 200 else 0)
    if status == 200:
        assert len(messages) == 1, messages
        assert messages[0].target.startswith("/x")
        assert messages[0].header("host") == ["www.example.com"]
    else:
        assert messages == []


def test_upstream_host_and_forwarded_host_are_the_routed_host(rig: Rig) -> None:
    rig.reset()
    req = b"GET / HTTP/1.1\r\nHost: WWW.Example.COM.:8080\r\nConnection: close\r\n\r\n"
    assert exchange(rig.port, req, expect=1).statuses == [200]
    (m,) = wait_for_upstream(rig, 1)
    assert m.header("host") == ["www.example.com:8080"]
    assert m.header("x-forwarded-host") == ["www.example.com:8080"]


def test_client_address_headers_from_untrusted_peers_are_not_passed_on(rig: Rig) -> None:
    rig.reset()
    spoofed = [
        b"Forwarded: for=1.2.3.4;host=evil.com",
        b"X-Real-IP: 6.6.6.6",
        b"True-Client-IP: 6.6.6.6",
        b"CF-Connecting-IP: 6.6.6.6",
        b"X-Client-IP: 6.6.6.6",
        b"X-Cluster-Client-IP: 6.6.6.6",
        b"Fastly-Client-IP: 6.6.6.6",
        b"X-Forwarded-For: 6.6.6.6",
        b"X-Forwarded-Host: evil.com",
        b"X-Forwarded-Port: 1",
    ]
    req = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n" + b"\r\n".join(spoofed)
    req += b"\r\nConnection: close\r\n\r\n"
    assert exchange(rig.port, req, expect=1).statuses == [200]
    (m,) = wait_for_upstream(rig, 1)
    sent = dict((n.lower(), v) for n, v in m.headers)
    assert "6.6.6.6" not in str(m.headers) and "evil.com" not in str(m.headers)
    for name in ("forwarded", "x-real-ip", "true-client-ip", "x-forwarded-port"):
        assert name not in sent
    assert sent["x-forwarded-for"] == "127.0.0.1"


def test_connect_is_refused(rig: Rig) -> None:
    rig.reset()
    req = b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n\r\n"
    got = exchange(rig.port, req, expect=1)
    assert got.statuses == [405]
    assert wait_for_upstream(rig, 0) == []


def test_credentials_in_a_target_never_reach_the_log(rig: Rig) -> None:
    rig.reset()
    req = (
        b"GET http://user:s3cret@www.example.com/plain?ajs_aid=zzz HTTP/1.1\r\n"
        b"Host: www.example.com\r\nConnection: close\r\n\r\n"
    )
    exchange(rig.port, req, expect=1)
    req = b"GET http://www.example.com/plain?q=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    exchange(rig.port, req + LAST, expect=2)
    wait_for_upstream(rig, 2)
    text = str(rig.log)
    assert "s3cret" not in text and "zzz" not in text
    paths = [line["path"] for line in rig.log if line.get("event") == "request"]
    assert "/plain" in paths


def test_no_server_or_content_type_header_is_added(rig: Rig) -> None:
    """The recorder's 200 has neither Server nor Content-Type: the visitor gets neither (nor
    an announcement of Python or aiohttp on the gateway's own answers)."""
    for req in (
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
            s.sendall(req)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nserver:" not in head, head
        assert b"python" not in head and b"aiohttp" not in head, head
    assert b"content-type" not in head or b"421" in head.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 4\r\nContent-Length: 5"
        b"\r\nX-Secret: sekrit-value\r\n\r\n",
        b"G<T /sekrit-value HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nBad Header: sekrit-value\r\n\r\n",
    ],
)
def test_what_aiohttp_cannot_parse_is_answered_in_the_gateways_words(rig: Rig, raw: bytes) -> None:
    """aiohttp's own error page names the software and quotes the request back: the gateway
    answers a short 400 instead, and closes the connection."""
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", data
    assert b"\r\nserver:" not in head.lower()
    assert b"sekrit" not in data
    assert body == b"400 Bad Request\n"


# --- the property: any head from the attack matrix ------------------------------------------

CL_VARIANTS: dict[str, tuple[bytes, bool]] = {
    # name: (header lines given the body length as %d, ambiguous?)
    "cl": (b"Content-Length: %d\r\n", False),
    "cl dup same": (b"Content-Length: %d\r\nContent-Length: %d\r\n", True),
    "cl dup diff": (b"Content-Length: %d\r\nContent-Length: 1%d\r\n", True),
    "cl plus": (b"Content-Length: +%d\r\n", True),
    "cl list": (b"Content-Length: %d, %d\r\n", True),
}
TE_VARIANTS: dict[str, tuple[bytes, bool]] = {
    "chunked": (b"Transfer-Encoding: chunked\r\n", False),
    "identity, chunked": (b"Transfer-Encoding: identity, chunked\r\n", False),
    "chunked, identity": (b"Transfer-Encoding: chunked, identity\r\n", True),
    "xchunked": (b"Transfer-Encoding: xchunked\r\n", True),
    "te with cl": (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", True),
}


@st.composite
def request_heads(draw: st.DrawFn) -> tuple[bytes, bool, bytes]:
    """(raw request, ambiguous?, the body the upstream must receive if accepted)."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
    body = draw(st.sampled_from([b"", b"abcd", SMUGGLED, b"0\r\n\r\n" + SMUGGLED]))
    kind = draw(st.sampled_from(["none", "cl", "te"]))
    ambiguous = False
    lines = []
    if kind == "none":
        body = b""
    elif kind == "cl":
        name = draw(st.sampled_from(sorted(CL_VARIANTS)))
        template, ambiguous = CL_VARIANTS[name]
        lines.append(template.replace(b"%d", str(len(body)).encode()))
    else:
        name = draw(st.sampled_from(sorted(TE_VARIANTS)))
        template, ambiguous = TE_VARIANTS[name]
        lines.append(template)
    tokens = draw(
        st.lists(
            st.sampled_from(
                [b"Content-Length", b"Transfer-Encoding", b"Host", b"keep-alive", b"X-Hop"]
            ),
            unique=True,
        )
    )
    if tokens:
        lines.append(b"Connection: " + b", ".join(tokens) + b"\r\n")
        lines.append(b"X-Hop: 1\r\n")
    if draw(st.booleans()):
        lines.append(b"X-Fold: a\r\n b\r\n")
        ambiguous = True
    if draw(st.booleans()):
        lines.append(b"X-Bare: 1\n")
        ambiguous = True
    order = draw(st.permutations(range(len(lines))))
    head = b"%b /p HTTP/1.1\r\nHost: www.example.com\r\n" % method
    head += b"".join(lines[i] for i in order) + b"\r\n"
    payload = _chunked(body) if kind == "te" else body
    return head + payload, ambiguous, body


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=request_heads())
def test_property_upstream_carries_exactly_the_accepted_requests(
    rig: Rig, case: tuple[bytes, bool, bytes]
) -> None:
    raw, ambiguous, body = case
    rig.reset()
    got = exchange(rig.port, raw + LAST, expect=2)
    if ambiguous:
        assert got.statuses == [400]
        assert got.closed
        expected: list[tuple[str, bytes]] = []
    else:
        assert got.statuses == [200, 200]
        expected = [("/p", body), ("/last", b"")]
    messages = wait_for_upstream(rig, len(expected))
    assert [(m.target, m.body) for m in messages] == expected
    assert_framing_invariant(rig)


# --- the pure host check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("www.example.com", Authority("www.example.com")),
        ("WWW.Example.com.", Authority("www.example.com")),
        ("www.example.com:8080", Authority("www.example.com", 8080)),
        ("127.0.0.1:80", Authority("127.0.0.1", 80)),
        ("[::1]:443", Authority("[::1]", 443)),
        ("[::1]", Authority("[::1]")),
        ("in_tranet", Authority("in_tranet")),
        ("a:b:c", None),
        ("www.example.com:080", Authority("www.example.com", 80)),
        ("www.example.com:65536", None),
        ("-bad.example.com", None),
        ("exa mple.com", None),
        ("café.example", None),
        ("[::1]x", None),
        ("", None),
        (".", None),
        ("a" * 64 + ".example", None),
    ],
)
def test_parse_authority(value: str, expected: Authority | None) -> None:
    assert parse_authority(value) == expected
