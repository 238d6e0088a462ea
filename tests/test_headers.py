"""gateway/headers.py, without sockets: hop-by-hop stripping, the headers an upstream gets,
the host a request is routed on and the target it is forwarded with."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Site
from gateway.headers import (
    CLIENT_ADDRESS,
    HOP_BY_HOP,
    client_address,
    connection_tokens,
    end_to_end,
    forwarded_headers,
    kept_request_id,
    routed_authority,
    upstream_target,
    visitor_scheme,
)
from gateway.hosts import Authority

SITE = Site(host="www.example.com", upstream="http://legacy:8000")
ROUTED = Authority("www.example.com")
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def forward(headers: CIMultiDictProxy[str], peer: str = "203.0.113.7", **kw: object) -> dict:
    out = forwarded_headers(
        headers,
        peer=peer,
        scheme="http",
        trusted_proxies=TRUSTED,
        site=kw.pop("site", SITE),  # type: ignore[arg-type]
        routed=kw.pop("routed", ROUTED),  # type: ignore[arg-type]
        request_id=kw.pop("request_id", "rid-1"),  # type: ignore[arg-type]
    )
    return {k.lower(): v for k, v in out.items()}


def test_connection_tokens() -> None:
    assert connection_tokens(h(("Connection", "Keep-Alive, X-A"), ("connection", " x-b ,"))) == {
        "keep-alive",
        "x-a",
        "x-b",
    }
    assert connection_tokens(h()) == frozenset()


def test_end_to_end_keeps_order_and_repetitions() -> None:
    out = end_to_end(
        h(
            ("Set-Cookie", "a=1"),
            ("Connection", "x-drop"),
            ("X-Drop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Set-Cookie", "b=2"),
        )
    )
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


@pytest.mark.parametrize(
    "listed", ["Content-Length", "content-length", "Host", "Transfer-Encoding"]
)
def test_connection_can_never_drop_framing_or_host(listed: str) -> None:
    out = end_to_end(h(("Host", "a"), ("Content-Length", "3"), ("Connection", listed)))
    assert out["Host"] == "a" and out["Content-Length"] == "3"


def test_forwarded_headers_have_no_framing_and_the_routed_host() -> None:
    seen = forward(
        h(
            ("Host", "WWW.EXAMPLE.COM."),
            ("Content-Length", "10"),
            ("Transfer-Encoding", "chunked"),
            ("Expect", "100-continue"),
            ("Connection", "content-length"),
        )
    )
    assert "content-length" not in seen and "transfer-encoding" not in seen
    assert "expect" not in seen
    assert seen["host"] == "www.example.com"
    assert seen["x-forwarded-host"] == "www.example.com"


def test_preserve_host_off_sends_the_upstream_authority() -> None:
    site = Site(host="www.example.com", upstream="https://legacy:8443", preserve_host=False)
    assert forward(h(("Host", "www.example.com")), site=site)["host"] == "legacy:8443"


@pytest.mark.parametrize("name", sorted(CLIENT_ADDRESS))
def test_client_address_headers_from_untrusted_peers_are_removed(name: str) -> None:
    seen = forward(h((name, "6.6.6.6")))
    if name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
        assert seen[name] != "6.6.6.6"
    else:
        assert name not in seen


def test_trusted_proxies_are_believed_and_appended_to() -> None:
    seen = forward(
        h(("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-Proto", "https"), ("X-Real-IP", "x")),
        peer="10.1.2.3",
    )
    assert seen["x-forwarded-for"] == "198.51.100.1, 10.1.2.3"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-real-ip"] == "x"


def test_hop_by_hop_never_reaches_the_upstream() -> None:
    seen = forward(h(*((name, "1") for name in sorted(HOP_BY_HOP))))
    assert not set(seen) & HOP_BY_HOP


@pytest.mark.parametrize(
    ("host", "target", "expected"),
    [
        ("www.example.com", "/", ROUTED),
        ("www.example.com:8080", "/x", Authority("www.example.com", 8080)),
        (None, "/", None),
        ("", "/", None),
        ("www.example.com:80@evil", "/", "the Host header is not a valid host[:port]"),
        ("www.example.com", "http://www.example.com/x", ROUTED),
        ("www.example.com", "http://www.example.com:80?x", ROUTED),
        ("www.example.com:443", "https://www.example.com/", Authority("www.example.com", 443)),
        ("www.example.com", "http://evil.example/", "other"),
        ("www.example.com", "http://www.example.com:81/", "other"),
        ("www.example.com", "http://u@www.example.com/", "other"),
        ("www.example.com", "gopher://www.example.com/", "other"),
        ("www.example.com", "www.example.com:443", "other"),
        ("www.example.com", "*", ROUTED),
    ],
)
def test_routed_authority(host: str | None, target: str, expected: object) -> None:
    got = routed_authority(host, target)
    if expected == "other":
        assert got == "the request-target names another host than the Host header"
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("/a%2Fb?x=1", "/a%2Fb?x=1"),
        ("*", "*"),
        ("http://h", "/"),
        ("http://h?x=1", "/?x=1"),
        ("http://h:80/p/../q?y#frag", "/p/../q?y"),
        ("http://user:pw@h/p", "/p"),
        ("h:443", "/"),
    ],
)
def test_upstream_target(raw: str, forwarded: str) -> None:
    assert upstream_target(raw) == forwarded


@given(st.text(alphabet="abc/?#:@%.", max_size=30))
def test_upstream_target_is_always_origin_form_or_asterisk(raw: str) -> None:
    out = upstream_target(raw)
    assert out == "*" or out.startswith("/")


def test_visitor_scheme() -> None:
    https = h(("X-Forwarded-Proto", "HTTPS, http"))
    assert visitor_scheme(https, "10.0.0.1", "http", TRUSTED) == "https"
    assert visitor_scheme(https, "203.0.113.1", "http", TRUSTED) == "http"
    assert visitor_scheme(h(("X-Forwarded-Proto", "gopher")), "10.0.0.1", "http", TRUSTED) == "http"


def test_the_request_id_replaces_any_the_request_had() -> None:
    seen = forward(h(("X-Request-Id", "from-the-visitor"), ("x-request-id", "again")))
    assert seen["x-request-id"] == "rid-1"
    out = forwarded_headers(
        h(("X-Request-Id", "a")),
        peer="10.1.2.3",
        scheme="http",
        trusted_proxies=TRUSTED,
        site=SITE,
        routed=ROUTED,
        request_id="kept",
    )
    assert out.getall("X-Request-Id") == ["kept"]


@pytest.mark.parametrize(
    "value",
    ["a", "0f" * 16, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "1-abc.def:ghi_jk", "x" * 128],
)
def test_a_well_formed_request_id_from_a_trusted_proxy_is_kept(value: str) -> None:
    headers = h(("X-Request-Id", value))
    assert kept_request_id(headers, "10.1.2.3", TRUSTED) == value
    # From anyone else it is a claim like any other: the gateway makes its own.
    assert kept_request_id(headers, "203.0.113.7", TRUSTED) is None
    assert kept_request_id(headers, "10.1.2.3", ()) is None
    assert kept_request_id(headers, None, TRUSTED) is None


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "Root=1-abc", "a b", 'a"b', "a\\b", "a,b", "a/b", "a;b", "é", "a\tb", "{}"],
)
def test_a_malformed_request_id_is_never_kept(value: str) -> None:
    assert kept_request_id(h(("X-Request-Id", value)), "10.1.2.3", TRUSTED) is None


def test_no_request_id_is_none() -> None:
    assert kept_request_id(h(), "10.1.2.3", TRUSTED) is None


@pytest.mark.parametrize(
    ("xff", "peer", "client"),
    [
        # Not from a trusted proxy: the peer, whatever X-Forwarded-For claims.
        (["198.51.100.1"], "203.0.113.7", "203.0.113.7"),
        ([], "203.0.113.7", "203.0.113.7"),
        # From one: the address it saw.
        (["198.51.100.1"], "10.1.2.3", "198.51.100.1"),
        ([], "10.1.2.3", "10.1.2.3"),
        # A visitor's forged entries are left of the address the trusted proxy appended.
        (["6.6.6.6, 198.51.100.1"], "10.1.2.3", "198.51.100.1"),
        # Through a chain of trusted proxies, over the trusted hops.
        (["198.51.100.1, 10.9.9.9", "10.8.8.8"], "10.1.2.3", "198.51.100.1"),
        # Every hop trusted: the left-most.
        (["10.7.7.7, 10.8.8.8"], "10.1.2.3", "10.7.7.7"),
        # Not an address: the walk stops at the last hop that was one.
        (["198.51.100.1, unknown"], "10.1.2.3", "10.1.2.3"),
        (["junk, 10.8.8.8"], "10.1.2.3", "10.8.8.8"),
        ([" 2001:DB8::1 "], "10.1.2.3", "2001:db8::1"),
        ([], None, None),
    ],
)
def test_client_address(xff: list[str], peer: str | None, client: str | None) -> None:
    headers = h(*(("X-Forwarded-For", value) for value in xff))
    assert client_address(headers, peer, TRUSTED) == client
