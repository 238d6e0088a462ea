"""The pure response-header decisions in gateway/outbound.py."""

from __future__ import annotations

import gzip

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.outbound import (
    accepts_coding,
    content_coding,
    decodable_accept_encoding,
    is_rewritable_html,
    make_private,
    media_type,
    script_policy,
    weaken_etag,
)

from .conftest import StartGateway, StartUpstream


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("", None)),
        ("text/html", ("text/html", None)),
        ('Text/HTML; Charset="Shift_JIS"', ("text/html", "Shift_JIS")),
        ("text/html;charset=", ("text/html", None)),
        ("application/xhtml+xml; q=1; charset=utf-8", ("application/xhtml+xml", "utf-8")),
    ],
)
def test_media_type(value: str | None, expected: tuple[str, str | None]) -> None:
    assert media_type(value) == expected


@pytest.mark.parametrize(
    ("header", "coding", "ok"),
    [
        ("gzip, deflate, br", "gzip", True),
        ("gzip;q=0", "gzip", False),
        ("x-gzip", "gzip", True),
        ("deflate", "gzip", False),
        ("*", "br", True),
        ("*;q=0", "br", False),
        ("br;q=0.5, *;q=0", "br", True),
        ("gzip", "", True),
        ("identity;q=0", "", False),
        ("gzip;q=bogus", "gzip", False),
        (None, "gzip", False),
        (None, "", True),
        ("", "gzip", False),
    ],
)
def test_accepts_coding(header: str | None, coding: str, ok: bool) -> None:
    assert accepts_coding(header, coding) is ok


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # What Chromium sends: every coding it names is one the gateway decodes.
        ("gzip, deflate, br, zstd", "gzip, deflate, br, zstd"),
        # Compression dictionary transport and the like: not decodable, so not asked for.
        ("gzip, deflate, br, zstd, dcb, dcz", "gzip, deflate, br, zstd"),
        ("br;q=1.0, gzip;q=0.8, compress;q=0.5", "br;q=1.0, gzip;q=0.8"),
        ("X-GZIP ; q=0.5 ,BR", "X-GZIP ; q=0.5, BR"),
        ("identity", "identity"),
        ("identity;q=0, compress", "identity;q=0"),
        # "*" covers the codings not listed, identity included (RFC 9110 §12.5.3).
        ("*", "gzip, deflate, br, zstd, identity"),
        ("br, *;q=0.1", "br, gzip;q=0.1, deflate;q=0.1, zstd;q=0.1, identity;q=0.1"),
        ("gzip, identity;q=0.5, *;q=0", "gzip, identity;q=0.5, deflate;q=0, br;q=0, zstd;q=0"),
        # Only codings we cannot decode: identity is still acceptable.
        ("compress, exi", "identity"),
        # Empty: identity only, as it was.
        ("", ""),
        (" , ", ""),
    ],
)
def test_decodable_accept_encoding(header: str, expected: str) -> None:
    assert decodable_accept_encoding(header) == expected
    # What the visitor accepts of what is kept is unchanged.
    for coding in ("gzip", "deflate", "br", "zstd", ""):
        assert accepts_coding(expected, coding) == accepts_coding(header, coding)


def test_content_coding_joins_several() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Content-Encoding", "GZIP")
    assert content_coding(headers) == "gzip"
    headers.add("Content-Encoding", "br")
    assert content_coding(headers) == "gzip,br"


@pytest.mark.parametrize(
    ("method", "status", "ctype", "coding", "ok"),
    [
        ("GET", 200, "text/html", None, True),
        ("GET", 404, "text/html; charset=utf-8", "gzip", True),
        ("HEAD", 200, "text/html", None, False),
        ("GET", 206, "text/html", None, False),
        ("GET", 304, "text/html", None, False),
        ("GET", 200, "text/plain", None, False),
        ("GET", 200, "text/html", "zstd", True),
        ("GET", 200, "text/html", "compress", False),
        ("GET", 200, "text/html", "gzip, br", False),
    ],
)
def test_is_rewritable_html(
    method: str, status: int, ctype: str, coding: str | None, ok: bool
) -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": ctype})
    if coding:
        headers["Content-Encoding"] = coding
    assert is_rewritable_html(method, status, headers) is ok


def test_make_private_and_etag() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Cache-Control", "public, max-age=60")
    headers.add("Cache-Control", "s-maxage=600, no-transform")
    headers["Vary"] = "Accept-Language"
    headers["ETag"] = '"abc"'
    make_private(headers)
    weaken_etag(headers)
    assert headers.getall("Cache-Control") == ["private, max-age=60, no-transform"]
    assert headers["Vary"] == "Accept-Language, Cookie"
    assert headers["ETag"] == 'W/"abc"'
    weaken_etag(headers)
    assert headers["ETag"] == 'W/"abc"'


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ([], (True, None)),
        (["img-src 'self'"], (True, None)),
        (["script-src 'nonce-abc' 'strict-dynamic'"], (True, "abc")),
        (["default-src 'self' 'nonce-xyz'"], (True, "xyz")),
        (["script-src 'self'"], (False, None)),
        (["script-src 'self' 'unsafe-inline'"], (True, None)),
        (["script-src 'unsafe-inline' 'sha256-AAAA'"], (False, None)),
        (["script-src 'nonce-a'", "script-src 'nonce-b'"], (False, None)),
        (["script-src-elem 'nonce-e'; script-src 'self'"], (True, "e")),
    ],
)
def test_script_policy(policies: list[str], expected: tuple[bool, str | None]) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    for policy in policies:
        headers.add("Content-Security-Policy", policy)
    assert script_policy(headers) == expected


PAGE = b'<html><head></head><body><a href="https://pay.example.net/x">pay</a></body></html>'


async def test_gzip_html_to_a_client_that_never_accepted_gzip_is_sent_plain(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    """An upstream that ignores Accept-Encoding must not make the gateway send a coding the
    visitor cannot read: the rewritten body goes out uncompressed."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PAGE),
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    app = web.Application()
    app.router.add_get("/", handler)
    up = await start_upstream(app)
    gw = await start_gateway(
        f"""
        sites:
          - host: www.example.com
            upstream: {up}
        cross_domains: [pay.example.net]
        """
    )
    cookie = {"Cookie": "ajs_anonymous_id=abc"}
    async with gw.request(
        "GET", "/", headers=cookie, skip_auto_headers=("Accept-Encoding",)
    ) as resp:
        assert "Content-Encoding" not in resp.headers
        assert "Accept-Encoding" in resp.headers["Vary"]
        body = await resp.read()
    assert body == PAGE.replace(b"/x", b"/x?ajs_aid=abc")
    async with gw.request("GET", "/", headers={**cookie, "Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == PAGE.replace(b"/x", b"/x?ajs_aid=abc")
