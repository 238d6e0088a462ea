"""Identity on the wire, end to end: real upstreams, the real gateway, exact bytes and headers.

Inbound: the clean-up 302 and its cookies, id validation, every cookie form, conflicts, POST.
Minting and refresh. Outbound: link, form and Location decoration, content types, content
codings, cache safety, the bootstrap, the rewriter's failure fallback, metrics, logs and
streaming.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import importlib.metadata
import json
import platform
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import brotli
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.bootstrap import render_bootstrap
from gateway.html import IMPLEMENTATION, HtmlRewriter

from .conftest import RunningGateway, StartGateway, StartUpstream, zstd

WWW = "www.example.com"
PAY = "checkout.example-pay.com"
CROSS = (WWW, PAY)
ANALYTICS = 'analytics: {write_key: wk_test, cdn_url: "http://127.0.0.1:9"}'
TRUSTED = "proxy: {trusted_proxies: [127.0.0.0/8]}"
YEAR = 31536000
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
HTML = "text/html; charset=utf-8"

# --- The upstream ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Origin:
    """A real upstream: canned responses by path, an echo of the request for anything else,
    and a record of every request that reached it."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def page(
        self,
        path: str,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = HTML,
        headers: Iterable[tuple[str, str]] = (),
        chunked: bool = False,
    ) -> None:
        """Serve ``body`` at ``path``; ``chunked`` sends it in 16 KiB chunks without a
        Content-Length (so the gateway streams it, whatever its size)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            hdrs: CIMultiDict[str] = CIMultiDict(headers)
            hdrs["Content-Type"] = content_type
            if not chunked:
                return web.Response(status=status, body=body or None, headers=hdrs)
            resp = web.StreamResponse(status=status, headers=hdrs)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 16384):
                await resp.write(body[i : i + 16384])
            await resp.write_eof()
            return resp

        self.routes[path] = handler

    def app(self) -> web.Application:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.seen.append(request.raw_path)
            handler = self.routes.get(request.path)
            if handler is not None:
                return await handler(request)
            body = await request.read()
            return web.json_response(
                {"method": request.method, "raw_path": request.raw_path, "body": body.hex()}
            )

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", dispatch)
        return app


def gateway_yaml(
    upstream: str,
    *,
    site_opts: str = "",
    hosts: Sequence[str] = (WWW, PAY),
    cross: Sequence[str] | None = CROSS,
    extra: Sequence[str] = (),
) -> str:
    """Every site on the one upstream; ``site_opts`` (", key: value") goes on the first."""
    lines = ["sites:"]
    for i, host in enumerate(hosts):
        opts = site_opts if i == 0 else ""
        lines.append(f'  - {{host: "{host}", upstream: "{upstream}"{opts}}}')
    if cross is not None:
        lines.append(f"cross_domains: {json.dumps(list(cross))}")
    lines.extend(extra)
    return "\n".join(lines) + "\n"


Launch = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def launch(start_upstream: StartUpstream, start_gateway: StartGateway) -> Launch:
    async def launch(origin: Origin, **options: Any) -> RunningGateway:
        upstream = await start_upstream(origin.app())
        return await start_gateway(gateway_yaml(upstream, **options))

    return launch


# --- The client -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def cookie(self, name: str) -> Cookie | None:
        found = [c for c in self.cookies() if c.name == name]
        assert len(found) <= 1, found
        return found[0] if found else None

    def cookies(self) -> list[Cookie]:
        return [Cookie.parse(v) for v in self.headers.getall("Set-Cookie", ())]


async def fetch(
    gw: RunningGateway,
    target: str,
    *,
    method: str = "GET",
    host: str = WWW,
    headers: Sequence[tuple[str, str]] = (),
    data: bytes | None = None,
) -> Reply:
    """One request with the target sent exactly as written (no re-quoting)."""
    hdrs: CIMultiDict[str] = CIMultiDict([("Host", host)])
    hdrs.extend(headers)
    url = URL(gw.url + target, encoded=True)
    async with gw.session.request(
        method, url, headers=hdrs, data=data, allow_redirects=False
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def raw_get(gw: RunningGateway, target: bytes, host: str = WWW) -> tuple[int, list[str]]:
    """A GET written byte for byte on a socket: (status, Location headers)."""
    port = gw.gateway.bound_port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
    writer.write(b"Connection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    locations = [
        line.partition(":")[2].strip() for line in head[1:] if line.lower().startswith("location:")
    ]
    return int(head[0].split()[1]), locations


@dataclass
class Cookie:
    name: str
    value: str
    attrs: list[tuple[str, str | None]]

    @classmethod
    def parse(cls, header: str) -> Cookie:
        first, *rest = header.split("; ")
        name, _, value = first.partition("=")
        attrs: list[tuple[str, str | None]] = []
        for part in rest:
            key, eq, val = part.partition("=")
            attrs.append((key, val if eq else None))
        return cls(name, value, attrs)

    def check(
        self,
        value: str,
        *,
        domain: str | None = "example.com",
        max_age: int = YEAR,
        secure: bool = False,
    ) -> None:
        """Exactly the attributes analytics.js needs, in the gateway's order."""
        assert self.value == value
        names = [k for k, _ in self.attrs]
        expected = ["Path", "Max-Age", "Expires", "SameSite"]
        if domain is not None:
            expected.insert(0, "Domain")
        if secure:
            expected.append("Secure")
        assert names == expected, self.attrs
        attrs = dict(self.attrs)
        assert attrs.get("Domain") == domain
        assert attrs["Path"] == "/"
        assert attrs["Max-Age"] == str(max_age)
        assert attrs["SameSite"] == "Lax"
        expires_text = attrs["Expires"] or ""
        assert expires_text.endswith(" GMT")
        expires = email.utils.parsedate_to_datetime(expires_text)
        assert abs(expires.timestamp() - (time.time() + max_age)) < 30


def edited(page: bytes, *edits: tuple[bytes, bytes]) -> bytes:
    """``page`` with each ``old`` (which must occur exactly once) replaced by ``new``."""
    for old, new in edits:
        assert page.count(old) == 1, old
        page = page.replace(old, new)
    return page


def link(url: str) -> bytes:
    return f'<a href="{url}">'.encode()


def decorated_ids(body: bytes) -> list[str]:
    return re.findall(r"ajs_aid=([^&#\"]+)", body.decode("utf-8", "replace"))


async def metrics(gw: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with gw.session.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def bootstrap(aid: str | None, uid: str | None = None, nonce: str | None = None) -> bytes:
    """The script the gateway injects for www.example.com under ANALYTICS."""
    return render_bootstrap(
        write_key="wk_test",
        cdn_url="http://127.0.0.1:9",
        anonymous_id=aid,
        user_id=uid,
        targets=list(CROSS),
        own_host=WWW,
        nonce=nonce,
    )


# --- Inbound: the clean-up redirect ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/p?a=%41&ajs_aid=X&b=1+2&&c", "/p?a=%41&b=1+2&&c"),
        ("/p?ajs_aid=abc", "/p"),
        ("/p?ajs_uid=user-1&x=1", "/p?x=1"),
        ("/p/q?ajs_uid=u&z=%2F&ajs_aid=abc&y=", "/p/q?z=%2F&y="),
        ("/p?ajs%5Faid=abc&keep=ajs_aid", "/p?keep=ajs_aid"),
        ("/?ajs_aid=a&ajs_aid=b&AJS_AID=c", "/?AJS_AID=c"),
    ],
)
async def test_cleanup_redirect_removes_only_identity_params(
    launch: Launch, method: str, target: str, location: str
) -> None:
    origin = Origin()
    gw = await launch(origin)
    reply = await fetch(gw, target, method=method)
    assert reply.status == 302
    assert reply.headers.getall("Location") == [location]
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert reply.body == b""
    assert origin.seen == []


@pytest.mark.parametrize(
    "target",
    [
        b"//evil.example/?ajs_aid=x",
        b"/\\evil.example/?ajs_aid=x",
        b"/\\/evil.example/?ajs_aid=x",
        b"///evil.example?ajs_aid=x",
        b"/%2F%2Fevil.example?ajs_aid=x",
        b"/%5Cevil?ajs_aid=x",
        b"/%09/evil.example?ajs_aid=x",
    ],
)
async def test_cleanup_redirect_stays_on_the_origin(launch: Launch, target: bytes) -> None:
    origin = Origin()
    gw = await launch(origin)
    status, locations = await raw_get(gw, target)
    assert status == 302
    [location] = locations
    assert "ajs_aid" not in location
    # What a browser does with it: backslashes are slashes in http(s) URLs.
    resolved = urlsplit(urljoin(f"http://{WWW}/", location.replace("\\", "/")))
    assert resolved.netloc == WWW, location
    assert location.startswith("/") and location[1:2] not in ("/", "\\")
    assert origin.seen == []


@pytest.mark.parametrize(
    ("query", "extra", "headers", "cookies"),
    [
        ("ajs_aid=abc", [], {}, {"ajs_anonymous_id": ("abc", YEAR, False)}),
        (
            "ajs_aid=abc&ajs_uid=user%407",
            [],
            {},
            {
                "ajs_anonymous_id": ("abc", YEAR, False),
                "ajs_user_id": ("user@7", YEAR, False),
            },
        ),
        ("ajs_uid=u1", [], {}, {"ajs_user_id": ("u1", YEAR, False)}),
        (
            "ajs_aid=abc",
            ["identity: {cookie_max_age_days: 30}"],
            {},
            {"ajs_anonymous_id": ("abc", 2592000, False)},
        ),
        (
            "ajs_aid=abc",
            [TRUSTED],
            {"X-Forwarded-Proto": "https"},
            {"ajs_anonymous_id": ("abc", YEAR, True)},
        ),
        ("ajs_aid=abc", [TRUSTED], {}, {"ajs_anonymous_id": ("abc", YEAR, False)}),
        # The same header from a peer that is not a trusted proxy proves nothing.
        (
            "ajs_aid=abc",
            ["proxy: {trusted_proxies: [10.0.0.0/8]}"],
            {"X-Forwarded-Proto": "https"},
            {"ajs_anonymous_id": ("abc", YEAR, False)},
        ),
        (
            "ajs_aid=abc",
            [],
            {"X-Forwarded-Proto": "https"},
            {"ajs_anonymous_id": ("abc", YEAR, False)},
        ),
    ],
)
async def test_cleanup_redirect_sets_identity_cookies(
    launch: Launch,
    query: str,
    extra: list[str],
    headers: dict[str, str],
    cookies: dict[str, tuple[str, int, bool]],
) -> None:
    gw = await launch(Origin(), extra=extra)
    reply = await fetch(gw, f"/x?{query}", headers=headers)
    assert reply.status == 302
    assert reply.headers["Location"] == "/x"
    assert {c.name for c in reply.cookies()} == set(cookies)
    for name, (value, max_age, secure) in cookies.items():
        cookie = reply.cookie(name)
        assert cookie is not None
        cookie.check(value, max_age=max_age, secure=secure)
        assert "HttpOnly" not in reply.headers["Set-Cookie"]


HOSTS = (WWW, "www.shop.test", "www.example.co.uk", "127.0.0.1", "localhost", "a.b.sub.test")


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        (WWW, "example.com"),
        ("www.shop.test", "shop.test"),
        ("www.example.co.uk", "example.co.uk"),
        ("a.b.sub.test", "sub.test"),
        ("127.0.0.1", None),
        ("127.0.0.1:8080", None),
        ("localhost", None),
        ("LocalHost:1234", None),
    ],
)
async def test_cookie_domain_is_the_registrable_domain(
    launch: Launch, host: str, domain: str | None
) -> None:
    gw = await launch(Origin(), hosts=HOSTS)
    reply = await fetch(gw, "/?ajs_aid=abc", host=host)
    assert reply.status == 302
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("abc", domain=domain)


async def test_configured_cookie_domain_wins(launch: Launch) -> None:
    gw = await launch(
        Origin(), hosts=("www.shop.example.com",), site_opts=", cookie_domain: shop.example.com"
    )
    reply = await fetch(gw, "/?ajs_aid=abc", host="www.shop.example.com")
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("abc", domain="shop.example.com")


# --- Inbound: validation --------------------------------------------------------------------

INVALID_AIDS = [
    "a" * 129,
    "abc%01def",
    "%22abc%22",
    "'abc'",
    "%3Cscript%3Ealert(1)%3C/script%3E",
    "abc%0D%0ASet-Cookie:%20evil=1",
    "",
    "ab+c",
    "ab%25c",
    "caf%C3%A9",
]


@pytest.mark.parametrize("raw", INVALID_AIDS)
async def test_invalid_ids_are_cleaned_up_but_never_stored(launch: Launch, raw: str) -> None:
    origin = Origin()
    gw = await launch(origin)
    reply = await fetch(gw, f"/p?x=1&ajs_aid={raw}&y=2")
    assert reply.status == 302
    assert reply.headers["Location"] == "/p?x=1&y=2"
    assert reply.cookies() == []
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=WWW, source="rejected") == 1
    assert sample(found, "gateway_identity_source_total", site=WWW, source="url") == 0
    assert origin.seen == []


@pytest.mark.parametrize(
    "aid",
    [
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "0F8FAD5B-D9CB-469F-A165-70867728950E",
        "a",
        "a.b_c:d-1",
        "x" * 128,
    ],
)
async def test_valid_ids_are_stored(launch: Launch, aid: str) -> None:
    gw = await launch(Origin())
    reply = await fetch(gw, f"/?ajs_aid={aid}")
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check(aid)
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=WWW, source="url") == 1


@pytest.mark.parametrize(
    ("aid", "accepted"),
    [
        ("123456", True),
        ("12345", False),
        ("abcdef", False),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", False),
    ],
)
async def test_configured_id_pattern(launch: Launch, aid: str, accepted: bool) -> None:
    gw = await launch(Origin(), extra=["identity: {id_pattern: '[0-9]{6}'}"])
    reply = await fetch(gw, f"/?ajs_aid={aid}")
    assert reply.status == 302
    cookie = reply.cookie("ajs_anonymous_id")
    if accepted:
        assert cookie is not None
        cookie.check(aid)
    else:
        assert cookie is None


@pytest.mark.parametrize(("length", "accepted"), [(256, True), (257, False)])
async def test_user_id_length_limit(launch: Launch, length: int, accepted: bool) -> None:
    gw = await launch(Origin())
    uid = "u" * length
    reply = await fetch(gw, f"/?ajs_aid=abc&ajs_uid={uid}")
    assert reply.headers["Location"] == "/"
    aid = reply.cookie("ajs_anonymous_id")
    assert aid is not None
    aid.check("abc")
    user = reply.cookie("ajs_user_id")
    if accepted:
        assert user is not None
        user.check(uid)
    else:
        assert user is None


# --- Inbound: existing cookies and conflicts -------------------------------------------------

PAGE = (
    b"<!DOCTYPE html><html><head><title>t</title></head><body>"
    + link(f"https://{PAY}/pay")
    + b"go</a></body></html>"
)


@pytest.mark.parametrize(
    "cookie_headers",
    [
        [("Cookie", "ajs_anonymous_id=abc")],
        [("Cookie", 'ajs_anonymous_id="abc"')],
        [("Cookie", "ajs_anonymous_id=%22abc%22")],
        [("Cookie", "other=1; ajs_anonymous_id=abc; ajs_anonymous_id=second")],
        [("Cookie", "ajs_anonymous_id=abc"), ("Cookie", "ajs_anonymous_id=second")],
        [("Cookie", "x_ajs_anonymous_id=no; ajs_anonymous_id=abc")],
    ],
)
async def test_existing_cookie_is_read_in_every_form(
    launch: Launch, cookie_headers: list[tuple[str, str]]
) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=cookie_headers)
    assert reply.status == 200
    assert reply.body == edited(PAGE, (b"/pay", b"/pay?ajs_aid=abc"))
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("abc")  # the refresh rewrites it in the plain form
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=WWW, source="cookie") == 1


async def test_url_id_replaces_the_cookie_by_default(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin)
    old = [("Cookie", "ajs_anonymous_id=old-id")]
    reply = await fetch(gw, "/?ajs_aid=new-id", headers=old)
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("new-id")
    # A POST is forwarded, not redirected: its page already uses the URL's id.
    reply = await fetch(gw, "/?ajs_aid=new-id", method="POST", headers=old)
    assert reply.status == 200
    assert decorated_ids(reply.body) == ["new-id"]


async def test_cookie_id_kept_when_the_site_prefers_it(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin, site_opts=", on_id_conflict: cookie")
    old = [("Cookie", "ajs_anonymous_id=old-id")]
    reply = await fetch(gw, "/?ajs_aid=new-id&ajs_uid=u1", headers=old)
    assert reply.status == 302
    assert reply.headers["Location"] == "/"
    assert reply.cookie("ajs_anonymous_id") is None
    user = reply.cookie("ajs_user_id")  # no user id cookie yet: nothing to conflict with
    assert user is not None
    user.check("u1")
    reply = await fetch(gw, "/", headers=old)
    assert decorated_ids(reply.body) == ["old-id"]
    reply = await fetch(gw, "/?ajs_aid=new-id", method="POST", headers=old)
    assert decorated_ids(reply.body) == ["old-id"]
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("old-id")
    # Without an existing cookie the URL's id is taken, even on such a site.
    reply = await fetch(gw, "/?ajs_aid=new-id")
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("new-id")


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_post_with_identity_is_forwarded_without_it(launch: Launch, method: str) -> None:
    origin = Origin()
    gw = await launch(origin, extra=[ANALYTICS])
    payload = bytes(range(256)) * 400 + b"ajs_aid=in-the-body"
    target = "/submit?a=%41&ajs_aid=abc&ajs_uid=u1&b=1+2"
    reply = await fetch(gw, target, method=method, data=payload)
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen == {"method": method, "raw_path": "/submit?a=%41&b=1+2", "body": payload.hex()}
    aid, uid = reply.cookie("ajs_anonymous_id"), reply.cookie("ajs_user_id")
    assert aid is not None and uid is not None
    aid.check("abc")
    uid.check("u1")
    assert reply.headers["Cache-Control"] == "private"


# --- Minting and refresh ---------------------------------------------------------------------


async def test_minted_id_is_stored_and_used_on_html(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/")
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    assert UUID4.fullmatch(cookie.value), cookie.value
    cookie.check(cookie.value)
    aid = cookie.value
    expected = edited(
        PAGE,
        (b"<head>", b"<head>" + bootstrap(aid)),
        (b"/pay", f"/pay?ajs_aid={aid}".encode()),
    )
    assert reply.body == expected
    assert f'"a":"{aid}"'.encode() in reply.body
    # Each visitor gets their own.
    again = await fetch(gw, "/")
    other = again.cookie("ajs_anonymous_id")
    assert other is not None and other.value != aid


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"a": "<a href=\\"https://checkout.example-pay.com/\\">"}'),
        ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("text/plain", b"<a href='https://checkout.example-pay.com/'>x</a>"),
    ],
)
async def test_no_id_is_minted_for_non_html(launch: Launch, content_type: str, body: bytes) -> None:
    origin = Origin()
    origin.page("/r", body, content_type=content_type, headers=[("Cache-Control", "public")])
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/r")
    assert reply.cookies() == []
    assert reply.body == body
    assert reply.headers["Cache-Control"] == "public"
    assert "Vary" not in reply.headers


async def test_existing_cookie_is_renewed_on_every_html_response(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    origin.page("/data", b"{}", content_type="application/json")
    gw = await launch(origin)
    cookie = [("Cookie", "ajs_anonymous_id=abc; ajs_user_id=u1")]
    for _ in range(2):
        reply = await fetch(gw, "/", headers=cookie)
        aid, uid = reply.cookie("ajs_anonymous_id"), reply.cookie("ajs_user_id")
        assert aid is not None and uid is not None
        aid.check("abc")
        uid.check("u1")
    reply = await fetch(gw, "/data", headers=cookie)
    assert reply.cookies() == []


async def test_no_minting_when_disabled(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE, headers=[("ETag", '"abc"')])
    gw = await launch(origin, extra=[ANALYTICS, "identity: {mint: false}"])
    reply = await fetch(gw, "/")
    assert reply.cookies() == []
    assert reply.body == PAGE
    assert reply.headers["ETag"] == '"abc"'
    assert "Cache-Control" not in reply.headers
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=WWW, source="minted") == 0


# --- Requests that may lack the visitor's cookies --------------------------------------------
#
# A browser withholds SameSite=Lax cookies from a cross-site POST navigation (a payment
# provider's POST-back, an OIDC form_post, an attacker's form) but takes a Set-Cookie from its
# response: an id minted there would replace the visitor's. Without Sec-Fetch-Site (plain HTTP,
# older browsers) such a POST looks like any other, so no unsafe method ever mints.


@pytest.mark.parametrize(
    ("method", "fetch_site"),
    [("POST", None), ("POST", "cross-site"), ("PUT", None), ("DELETE", "same-origin")],
)
async def test_no_id_is_minted_where_cookies_may_be_withheld(
    launch: Launch, method: str, fetch_site: str | None
) -> None:
    origin = Origin()
    origin.page("/return", PAGE)
    gw = await launch(origin, extra=[ANALYTICS])
    headers = [("Sec-Fetch-Site", fetch_site)] if fetch_site else []
    reply = await fetch(gw, "/return", method=method, headers=headers, data=b"status=paid")
    assert reply.status == 200
    assert reply.cookies() == []
    # The bootstrap without ids: it cleans the address bar and loads analytics.js, which keeps
    # the id in its own cookie; links are not decorated with an id nobody knows.
    assert reply.body == edited(PAGE, (b"<head>", b"<head>" + bootstrap(None)))
    assert b'"a":null,"u":null' in reply.body
    assert reply.headers["Cache-Control"] == "private"
    found = await metrics(gw)
    assert sample(found, "gateway_identity_source_total", site=WWW, source="minted") == 0


@pytest.mark.parametrize(("method", "minted"), [("GET", True), ("HEAD", True), ("HEAD", False)])
async def test_get_and_head_still_mint(launch: Launch, method: str, minted: bool) -> None:
    # A cross-site GET navigation carries Lax cookies; a HEAD only when it is not cross-site.
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin, extra=[ANALYTICS])
    fetch_site = "cross-site" if method == "GET" or not minted else "same-origin"
    reply = await fetch(gw, "/", method=method, headers=[("Sec-Fetch-Site", fetch_site)])
    cookie = reply.cookie("ajs_anonymous_id")
    assert (cookie is not None) is minted
    if cookie is not None:
        assert UUID4.fullmatch(cookie.value), cookie.value


async def test_post_with_the_visitors_cookie_keeps_it(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", PAGE)
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/", method="POST", headers=[("Cookie", "ajs_anonymous_id=abc")])
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("abc")
    assert reply.body == edited(
        PAGE, (b"<head>", b"<head>" + bootstrap("abc")), (b"/pay", b"/pay?ajs_aid=abc")
    )


async def test_post_to_a_strict_site_with_a_forged_id_gets_no_id(launch: Launch) -> None:
    # The cross-site POST of finding F7: a plain ajs_aid the site does not accept, and no
    # cookie. Nothing is stored, nothing minted, and the page's bootstrap carries no id.
    origin = Origin()
    origin.page("/search", PAGE)
    gw = await launch(origin, extra=[ANALYTICS], site_opts=", accept: [signed, token]")
    reply = await fetch(
        gw, "/search?q=x&ajs_aid=FORGED&ajs_uid=ceo&ajs_event=Order", method="POST", data=b"a=b"
    )
    assert reply.status == 200
    assert reply.cookies() == []
    assert reply.body == edited(PAGE, (b"<head>", b"<head>" + bootstrap(None)))
    assert b"FORGED" not in reply.body
    assert origin.seen == ["/search?q=x&ajs_event=Order"]
    found = await metrics(gw)
    assert sample(found, "gateway_identity_refused_total", form="query", reason="not_accepted")


async def test_post_answered_with_a_redirect_hands_no_new_id_on(launch: Launch) -> None:
    # An OIDC form_post callback whose upstream redirects to another configured domain: with
    # the cookies withheld there is no id to hand on, and none is made up for it.
    origin = Origin()
    origin.page(
        "/callback", b"", status=302, content_type="", headers=[("Location", f"https://{PAY}/")]
    )
    gw = await launch(origin)
    reply = await fetch(gw, "/callback", method="POST", data=b"code=c&state=s")
    assert reply.status == 302
    assert reply.headers["Location"] == f"https://{PAY}/"
    assert reply.cookies() == []
    # With the cookie, the redirect carries the visitor's id as before.
    reply = await fetch(
        gw, "/callback", method="POST", headers=[("Cookie", "ajs_anonymous_id=abc")]
    )
    assert reply.headers["Location"] == f"https://{PAY}/?ajs_aid=abc"


# --- Outbound: links and forms ---------------------------------------------------------------

LINKS = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Shop</title></head>\n'
    b"<body>\n"
    b'<a class="x" href="https://checkout.example-pay.com/pay?x=1&amp;y=%41#top" id=a1>Pay</a>\n'
    b"<map><area shape=rect href=https://checkout.example-pay.com/area alt=''></map>\n"
    b'<form method="POST" action="https://checkout.example-pay.com/post?ajs_aid=stale&k=v">'
    b"<button>go</button></form>\n"
    b'<form action="https://checkout.example-pay.com/search"><input name=q></form>\n'
    b"<a href='https://checkout.example-pay.com/again?ajs_uid=old&ajs_aid=old'>again</a>\n"
    b'<a href="HTTPS://CHECKOUT.Example-Pay.COM:8443/upper">upper</a>\n'
    b'<a href="https://www.example.com/own">own</a>\n'
    b'<a href="/relative">rel</a>\n'
    b'<a href="https://other.example.net/">other</a>\n'
    b'<a href="https://checkout.example-pay.com.evil.net/">look-alike</a>\n'
    b'<a href="https://evilcheckout.example-pay.com/">look-alike</a>\n'
    b'<a href="https://example-pay.com/">parent</a>\n'
    b'<a href="mailto:someone@checkout.example-pay.com">mail</a>\n'
    b'<form method="post" action="https://other.example.net/post"></form>\n'
    b'<!-- <a href="https://checkout.example-pay.com/comment"> -->\n'
    b"<script>var s = '<a href=\"https://checkout.example-pay.com/script\">';</script>\n"
    b"<p>caf\xc3\xa9 \xe2\x80\x94 the rest stays as it was</p>\n"
    b"</body></html>\n"
)


def links_expected(params: str, hidden: bytes, again: str) -> bytes:
    """LINKS as the gateway should send it: ``params`` (URL query text) added to the six
    links and forms that leave for checkout, ``&`` written as ``&amp;`` where the value changed;
    ``again`` is the new query of the link that already carried identity parameters."""
    q = params.replace("&", "&amp;")
    return edited(
        LINKS,
        (b"/pay?x=1&amp;y=%41#top", f"/pay?x=1&amp;y=%41&amp;{q}#top".encode()),
        (b"=https://checkout.example-pay.com/area ", f'="https://{PAY}/area?{q}" '.encode()),
        (b"/post?ajs_aid=stale&k=v", f"/post?k=v&amp;{q}".encode()),
        (b'/search"><input', b'/search">' + hidden + b"<input"),
        (b"/again?ajs_uid=old&ajs_aid=old", f"/again?{again}".encode()),
        (b":8443/upper", f":8443/upper?{q}".encode()),
    )


def hidden_inputs(*fields: tuple[str, str]) -> bytes:
    return b"".join(f'<input type="hidden" name="{n}" value="{v}">'.encode() for n, v in fields)


@pytest.mark.parametrize(
    ("cookie", "params", "hidden", "again"),
    [
        # Every identity parameter the page wrote goes, not only those the gateway adds: a
        # stale ajs_uid must not travel next to this visitor's ajs_aid.
        (
            "ajs_anonymous_id=abc",
            "ajs_aid=abc",
            hidden_inputs(("ajs_aid", "abc")),
            "ajs_aid=abc",
        ),
        (
            "ajs_anonymous_id=abc; ajs_user_id=user%407",
            "ajs_aid=abc&ajs_uid=user%407",
            hidden_inputs(("ajs_aid", "abc"), ("ajs_uid", "user@7")),
            "ajs_aid=abc&amp;ajs_uid=user%407",
        ),
    ],
)
async def test_links_to_cross_domains_are_decorated(
    launch: Launch, cookie: str, params: str, hidden: bytes, again: str
) -> None:
    origin = Origin()
    origin.page("/", LINKS)
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", cookie)])
    assert reply.status == 200
    assert reply.body == links_expected(params, hidden, again)
    found = await metrics(gw)
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 6
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 1


async def test_wildcard_cross_domain_and_base_href(launch: Launch) -> None:
    page = (
        b'<html><head><base href="https://checkout.example-pay.com/shop/"></head><body>'
        b'<a href="cart">cart</a><a href="/top">top</a>'
        b'<a href="https://eu.pay.example-pay.com/x">deep</a>'
        b'<a href="https://example-pay.com/x">apex</a>'
        b'<a href="https://www.example.com/own">own</a>'
        b'<a href="https://example-pay.com.evil.net/">look-alike</a>'
        b"</body></html>"
    )
    origin = Origin()
    origin.page("/", page)
    gw = await launch(origin, cross=(WWW, "*.example-pay.com"))
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body == edited(
        page,
        (b'"cart"', b'"cart?ajs_aid=abc"'),
        (b'"/top"', b'"/top?ajs_aid=abc"'),
        (b'/x">deep', b'/x?ajs_aid=abc">deep'),
    )
    found = await metrics(gw)
    assert sample(found, "gateway_links_decorated_total", site=WWW, target="*.example-pay.com") == 3


async def test_links_back_from_the_other_domain(launch: Launch) -> None:
    """The checkout site decorates links to www the same way (its own links stay as they are)."""
    page = b"<a href='https://www.example.com/back'>back</a><a href='/again'>again</a>"
    origin = Origin()
    origin.page("/", page)
    gw = await launch(origin)
    reply = await fetch(gw, "/", host=PAY, headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body == edited(page, (b"/back'", b"/back?ajs_aid=abc'"))
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None
    cookie.check("abc", domain="example-pay.com")


# --- Outbound: redirects --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "decorated"),
    [
        (f"https://{PAY}/pay?x=1#f", f"https://{PAY}/pay?x=1&ajs_aid=abc#f"),
        (f"//{PAY}/pay", f"//{PAY}/pay?ajs_aid=abc"),
        (
            f"https://{PAY.upper()}:8443/p?ajs_aid=stale",
            f"https://{PAY.upper()}:8443/p?ajs_aid=abc",
        ),
        ("https://other.example.net/pay", None),
        (f"https://{PAY}.evil.net/pay", None),
        ("/local?x=1", None),
        (f"https://{WWW}/own", None),
    ],
)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_upstream_redirects_to_cross_domains_are_decorated(
    launch: Launch, location: str, decorated: str | None, status: int
) -> None:
    origin = Origin()
    origin.page(
        "/go",
        b"",
        status=status,
        content_type="application/octet-stream",
        headers=[("Location", location), ("Cache-Control", "public, max-age=60, s-maxage=600")],
    )
    gw = await launch(origin)
    reply = await fetch(gw, "/go", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == status
    assert reply.headers.getall("Location") == [decorated or location]
    if decorated:
        assert reply.headers["Cache-Control"] == "private, max-age=60"
        assert reply.headers["Vary"] == "Cookie"
    else:
        assert reply.headers["Cache-Control"] == "public, max-age=60, s-maxage=600"
        assert "Vary" not in reply.headers
    assert reply.cookies() == []


async def test_redirect_decorated_with_a_minted_id_also_stores_it(launch: Launch) -> None:
    origin = Origin()
    origin.page(
        "/go", b"", status=302, content_type="", headers=[("Location", f"https://{PAY}/pay")]
    )
    gw = await launch(origin)
    reply = await fetch(gw, "/go")
    location = reply.headers["Location"]
    sent = re.fullmatch(rf"https://{re.escape(PAY)}/pay\?ajs_aid=(.+)", location)
    assert sent is not None, location
    cookie = reply.cookie("ajs_anonymous_id")
    assert cookie is not None and cookie.value == sent.group(1)


# --- Outbound: which responses are rewritten ------------------------------------------------

SIMPLE = b"<html><head></head><body><a href='https://checkout.example-pay.com/'>x</a></body></html>"
SIMPLE_DONE = edited(SIMPLE, (b".com/'", b".com/?ajs_aid=abc'"))


@pytest.mark.parametrize(
    ("method", "status", "content_type", "expected"),
    [
        ("GET", 200, "text/html; charset=utf-8", SIMPLE_DONE),
        ("GET", 200, "TEXT/HTML", SIMPLE_DONE),
        ("GET", 404, "text/html", SIMPLE_DONE),
        ("GET", 200, "application/xhtml+xml", SIMPLE_DONE),
        ("POST", 200, "text/html", SIMPLE_DONE),
        ("GET", 200, "text/plain", SIMPLE),
        ("GET", 200, "application/javascript", SIMPLE),
        ("HEAD", 200, "text/html", b""),
        ("GET", 204, "text/html", b""),
        ("GET", 304, "text/html", b""),
    ],
)
async def test_which_responses_are_rewritten(
    launch: Launch, method: str, status: int, content_type: str, expected: bytes
) -> None:
    origin = Origin()
    origin.page("/", SIMPLE, status=status, content_type=content_type)
    gw = await launch(origin)
    reply = await fetch(gw, "/", method=method, headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == status
    assert reply.body == expected
    if method == "HEAD":
        # The headers its GET would get: that body is rewritten, so no upstream length.
        assert "Content-Length" not in reply.headers
        assert reply.headers["Cache-Control"].startswith("private")
    elif status == 200:
        assert reply.headers["Content-Length"] == str(len(expected))
    found = await metrics(gw)
    rewritten = expected == SIMPLE_DONE
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == int(rewritten)


# --- Outbound: content codings --------------------------------------------------------------

CODINGS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (gzip.compress, gzip.decompress),
    "deflate": (zlib.compress, zlib.decompress),
    "br": (brotli.compress, brotli.decompress),
    "zstd": (zstd.compress, zstd.decompress),
}


def big_page(size: int, head: bytes = b"<head><title>big</title></head>") -> bytes:
    """An HTML page of about ``size`` bytes with cross-domain links at the start and the end."""
    filler = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n"
    start = b"<!DOCTYPE html><html>" + head + b"<body>" + link(f"https://{PAY}/first") + b"1</a>\n"
    end = link(f"https://{PAY}/last") + b"2</a></body></html>\n"
    return start + filler * (max(0, size - len(start) - len(end)) // len(filler)) + end


def big_done(page: bytes, aid: str = "abc") -> bytes:
    return edited(
        page,
        (b"/first", f"/first?ajs_aid={aid}".encode()),
        (b"/last", f"/last?ajs_aid={aid}".encode()),
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("coding", list(CODINGS))
async def test_compressed_html_is_rewritten_in_the_same_coding(
    launch: Launch, coding: str, chunked: bool
) -> None:
    compress, decompress = CODINGS[coding]
    page = big_page(600_000 if chunked else 2_000)
    origin = Origin()
    origin.page(
        "/",
        compress(page),
        headers=[("Content-Encoding", coding), ("ETag", '"abc"'), ("Vary", "Accept-Language")],
        chunked=chunked,
    )
    gw = await launch(origin)
    reply = await fetch(
        gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc"), ("Accept-Encoding", coding)]
    )
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == coding
    assert decompress(reply.body) == big_done(page)
    if chunked:
        assert "Content-Length" not in reply.headers
    else:
        assert reply.headers["Content-Length"] == str(len(reply.body))
    assert reply.headers["ETag"] == 'W/"abc"'
    assert reply.headers.getall("Vary") == ["Accept-Language, Accept-Encoding, Cookie"]
    assert reply.headers["Cache-Control"] == "private"


@pytest.mark.parametrize("coding", ["compress", "gzip, br"])
async def test_unknown_coding_passes_through_untouched(launch: Launch, coding: str) -> None:
    opaque = bytes(range(256)) * 8 + b"<a href='https://checkout.example-pay.com/'>"
    origin = Origin()
    origin.page("/", opaque, headers=[("Content-Encoding", coding), ("ETag", '"abc"')])
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 200
    assert reply.body == opaque
    assert reply.headers["Content-Encoding"] == coding
    assert reply.headers["Content-Length"] == str(len(opaque))
    assert reply.headers["ETag"] == '"abc"'
    # Not silently: counted and logged, once, with its reason.
    found = await metrics(gw)
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 0
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="unknown_coding") == 1
    [event] = [line for line in gw.log if line["event"] == "html_skipped"]
    assert event["site"] == WWW
    assert event["reason"] == "unknown_coding"
    assert event["coding"] == coding.replace(" ", "")
    # A HEAD has no body to leave unrewritten.
    await fetch(gw, "/", method="HEAD", headers=[("Cookie", "ajs_anonymous_id=abc")])
    found = await metrics(gw)
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="unknown_coding") == 1


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        (
            b"<html><head></head><body><plaintext><a href='https://checkout.example-pay.com/'>",
            "plaintext",
        ),
        (b"<html><head></head><body><a href=/x>x</a>", "unsupported_charset"),
    ],
)
async def test_rewriter_give_ups_are_counted_and_logged_with_their_reason(
    launch: Launch, page: bytes, reason: str
) -> None:
    """A page the rewriter stops examining part-way is not a silent success."""
    origin = Origin()
    utf16 = reason == "unsupported_charset"
    origin.page("/", page, content_type="text/html; charset=utf-16" if utf16 else HTML)
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 200
    found = await metrics(gw)
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason=reason) == 1
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 0
    [event] = [line for line in gw.log if line["event"] == "html_skipped"]
    assert event["reason"] == reason and event["site"] == WWW


CHROMIUM_CODINGS = "gzip, deflate, br, zstd, dcb, dcz"


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "streamed"])
async def test_zstd_html_is_rewritten_for_a_browser_that_accepts_it(
    launch: Launch, chunked: bool
) -> None:
    """What Chromium sends and what a zstd-capable upstream (Caddy's ``encode zstd gzip``)
    answers: the page gets the bootstrap and decorated links, still in zstd."""
    page = big_page(600_000 if chunked else 2_000)
    asked: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding", "<none>"))
        headers = {"Content-Type": HTML, "Content-Encoding": "zstd"}
        if not chunked:
            return web.Response(body=zstd.compress(page), headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        compressor = zstd.ZstdCompressor()
        for i in range(0, len(page), 16384):
            await resp.write(compressor.compress(page[i : i + 16384], compressor.FLUSH_BLOCK))
        await resp.write(compressor.flush())
        await resp.write_eof()
        return resp

    origin = Origin(routes={"/": handler})
    gw = await launch(origin, extra=[ANALYTICS])
    headers = [("Cookie", "ajs_anonymous_id=abc"), ("Accept-Encoding", CHROMIUM_CODINGS)]
    reply = await fetch(gw, "/", headers=headers)
    # The upstream was asked only for codings whose HTML the gateway can rewrite.
    assert asked == ["gzip, deflate, br, zstd"]
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "zstd"
    expected = edited(big_done(page), (b"<head>", b"<head>" + bootstrap("abc")))
    assert zstd.decompress(reply.body) == expected
    found = await metrics(gw)
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 1
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 2


async def test_zstd_html_for_a_visitor_without_zstd_is_sent_plain(launch: Launch) -> None:
    page = big_page(2_000)
    origin = Origin()
    origin.page("/", zstd.compress(page), headers=[("Content-Encoding", "zstd")])
    gw = await launch(origin)
    reply = await fetch(
        gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc"), ("Accept-Encoding", "gzip, br")]
    )
    assert "Content-Encoding" not in reply.headers
    assert reply.body == big_done(page)


async def test_accept_encoding_is_left_alone_where_nothing_is_rewritten(launch: Launch) -> None:
    """No links to decorate and no bootstrap: the site's pages are never rewritten, so the
    visitor's codings go upstream as they came (the gateway adds none either)."""
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(text="ok")

    origin = Origin(routes={"/": echo})
    plain = await launch(origin, cross=[])
    rewriting = await launch(origin)
    for gw, sent in ((plain, CHROMIUM_CODINGS), (rewriting, CHROMIUM_CODINGS), (rewriting, None)):
        headers = {"Host": WWW} if sent is None else {"Host": WWW, "Accept-Encoding": sent}
        async with gw.session.get(
            gw.url + "/", headers=headers, skip_auto_headers=("Accept-Encoding",)
        ) as resp:
            assert resp.status == 200
    assert seen == [CHROMIUM_CODINGS, "gzip, deflate, br, zstd", None]


def corrupt_gzip(page: bytes) -> bytes:
    """Valid gzip framing with a damaged deflate stream in the middle."""
    data = bytearray(gzip.compress(page))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)
    return bytes(data)


@pytest.mark.parametrize(
    "damage",
    [corrupt_gzip, lambda page: gzip.compress(page)[:-20]],
    ids=["corrupt", "truncated"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "streamed"])
async def test_broken_gzip_html_never_looks_complete(
    launch: Launch, chunked: bool, damage: Callable[[bytes], bytes]
) -> None:
    page = big_page(600_000)
    origin = Origin()
    origin.page("/", damage(page), headers=[("Content-Encoding", "gzip")], chunked=chunked)
    gw = await launch(origin)
    url = URL(gw.url + "/", encoded=True)
    hdrs = {"Host": WWW, "Cookie": "ajs_anonymous_id=abc"}
    async with gw.session.get(url, headers=hdrs, allow_redirects=False) as resp:
        if not chunked:
            # Read whole before answering: nothing was sent yet, so the truth is a 502.
            assert resp.status == 502
            assert "Content-Encoding" not in resp.headers
        else:
            # Streamed: the headers are out, so the connection is cut mid-body.
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    found = await metrics(gw)
    assert sample(found, "gateway_upstream_errors_total", site=WWW, kind="aborted_body") == 1
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="decode_error") == 1
    [event] = [line for line in gw.log if line["event"] == "html_skipped"]
    assert (event["reason"], event["coding"]) == ("decode_error", "gzip")


CEILING = 65536


@pytest.mark.parametrize("accept", ["gzip", "br"])
async def test_small_body_decoding_beyond_the_ceiling_goes_out_as_it_came(
    launch: Launch, accept: str
) -> None:
    """Nothing was sent yet: the upstream's own bytes, with its coding, and no rewrite. A
    visitor that never accepted that coding gets what a plain proxy would have given it."""
    page = big_page(CEILING * 3)
    compressed = gzip.compress(page)
    origin = Origin()
    origin.page("/", compressed, headers=[("Content-Encoding", "gzip")])
    gw = await launch(origin, extra=[f"proxy: {{max_decoded_html: {CEILING}}}"])
    reply = await fetch(
        gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc"), ("Accept-Encoding", accept)]
    )
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-Length"] == str(len(compressed))
    assert reply.body == compressed
    found = await metrics(gw)
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="too_large") == 1
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 0
    [event] = [line for line in gw.log if line["event"] == "html_skipped"]
    assert (event["reason"], event["coding"]) == ("too_large", "gzip")


async def test_streamed_body_decoding_beyond_the_ceiling_is_cut(launch: Launch) -> None:
    page = big_page(CEILING * 3)
    origin = Origin()
    origin.page("/", gzip.compress(page), headers=[("Content-Encoding", "gzip")], chunked=True)
    gw = await launch(origin, extra=[f"proxy: {{max_decoded_html: {CEILING}}}"])
    url = URL(gw.url + "/", encoded=True)
    hdrs = {"Host": WWW, "Cookie": "ajs_anonymous_id=abc", "Accept-Encoding": "gzip"}
    async with gw.session.get(url, headers=hdrs, allow_redirects=False) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    found = await metrics(gw)
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="too_large") == 1
    assert sample(found, "gateway_upstream_errors_total", site=WWW, kind="aborted_body") == 1
    assert [line["event"] for line in gw.log].count("html_skipped") == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "streamed"])
async def test_the_ceiling_is_for_compressed_html_only(launch: Launch, chunked: bool) -> None:
    """A page sent without a content coding costs no more than its bytes: no ceiling."""
    page = big_page(CEILING * 3)
    origin = Origin()
    origin.page("/", page, chunked=chunked)
    gw = await launch(origin, extra=[f"proxy: {{max_decoded_html: {CEILING}}}"])
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body == big_done(page)


async def test_expanding_small_body_is_streamed_rather_than_held(launch: Launch) -> None:
    """A small compressed body whose rewritten output is too large to hold (here: sent
    uncompressed to a visitor that never accepted gzip) goes out chunked, complete."""
    page = big_page(3_000_000)
    compressed = gzip.compress(page)
    assert len(compressed) < 256 * 1024
    origin = Origin()
    origin.page("/", compressed, headers=[("Content-Encoding", "gzip")])
    gw = await launch(origin)
    url = URL(gw.url + "/", encoded=True)
    hdrs = {"Host": WWW, "Cookie": "ajs_anonymous_id=abc"}
    async with gw.session.get(
        url, headers=hdrs, allow_redirects=False, skip_auto_headers=("Accept-Encoding",)
    ) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Encoding" not in resp.headers
        assert await resp.read() == big_done(page)
    found = await metrics(gw)
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 1


async def test_multi_member_gzip_html_is_not_truncated(launch: Launch) -> None:
    """RFC 1952 §2.2: a gzip file is a series of members; every member is content."""
    page = big_page(4_000)
    half = page.index(b"<p>", len(page) // 2)
    body = gzip.compress(page[:half]) + gzip.compress(page[half:])
    origin = Origin()
    origin.page("/", body, headers=[("Content-Encoding", "gzip")])
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 200
    assert gzip.decompress(reply.body) == big_done(page)


async def test_garbage_after_a_gzip_member_is_an_error(launch: Launch) -> None:
    """After a member, only another member (or zero padding) may follow."""
    page = big_page(4_000)
    origin = Origin()
    origin.page("/", gzip.compress(page) + b"trailing", headers=[("Content-Encoding", "gzip")])
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 502
    origin.page(
        "/",
        gzip.compress(page) + bytes(8) + gzip.compress(b""),
        headers=[("Content-Encoding", "gzip")],
    )
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 200
    assert gzip.decompress(reply.body) == big_done(page)


# --- Outbound: cache safety ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ([], ("private", "Cookie")),
        (
            [("Cache-Control", "public, max-age=60, s-maxage=300")],
            ("private, max-age=60", "Cookie"),
        ),
        ([("Cache-Control", "no-store")], ("private, no-store", "Cookie")),
        (
            [("Cache-Control", "Public"), ("Cache-Control", "S-MaxAge=5, no-cache, private")],
            ("private, no-cache", "Cookie"),
        ),
        ([("Vary", "Accept-Language")], ("private", "Accept-Language, Cookie")),
        ([("Vary", "cookie")], ("private", "cookie")),
        ([("Vary", "*")], ("private", "*")),
    ],
)
async def test_personalised_responses_are_private(
    launch: Launch, upstream: list[tuple[str, str]], expected: tuple[str, str]
) -> None:
    origin = Origin()
    origin.page("/", SIMPLE, headers=upstream)
    origin.page("/data", b"{}", content_type="application/json", headers=upstream)
    gw = await launch(origin)
    # A rewritten page, a page that only gets a (minted) cookie, a JSON answer to a POST that
    # stores the URL's id: each is personal.
    for target, method, cookie in [
        ("/", "GET", "ajs_anonymous_id=abc"),
        ("/data", "POST", ""),
    ]:
        headers = [("Cookie", cookie)] if cookie else []
        reply = await fetch(
            gw,
            target + ("?ajs_aid=abc" if method == "POST" else ""),
            method=method,
            headers=headers,
        )
        assert reply.cookies(), target
        assert reply.headers.getall("Cache-Control") == [expected[0]]
        assert reply.headers.getall("Vary") == [expected[1]]


@pytest.mark.parametrize("mint", [True, False])
@pytest.mark.parametrize("field_name", ["CDN-Cache-Control", "Surrogate-Control"])
async def test_targeted_cache_fields_cannot_share_a_personal_page(
    launch: Launch, field_name: str, mint: bool
) -> None:
    """RFC 9213: a CDN obeying CDN-Cache-Control (or Surrogate-Control) ignores Cache-Control,
    so ``private`` alone would not keep one visitor's decorated links from the next visitor."""
    origin = Origin()
    origin.page("/", SIMPLE, headers=[(field_name, "max-age=600"), ("Cache-Control", "public")])
    gw = await launch(origin, extra=[] if mint else ["identity: {mint: false}"])
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body == SIMPLE_DONE
    assert field_name not in reply.headers
    assert reply.headers["Cache-Control"] == "private"


# --- Outbound: the bootstrap -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "before"),
    [
        (b'<!DOCTYPE html><html><head lang="en"><title>t</title></head><body>x', b"<title>"),
        (b'<HTML><HEAD data-x="1"><TITLE>t</TITLE></HEAD>', b"<TITLE>"),
        (b"<!doctype html>\n<p>no head</p>", b"<p>"),
        (b"<!-- <head> --><html><head><meta charset=utf-8>", b"<meta"),
        (b"<script>var s = '<head>';</script><head><title>t</title>", b"<script>"),
        (b"<html>\n<body><p>body first", b"<body>"),
    ],
)
async def test_bootstrap_is_injected_once_in_the_right_place(
    launch: Launch, page: bytes, before: bytes
) -> None:
    origin = Origin()
    origin.page("/", page)
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc; ajs_user_id=u1")])
    script = bootstrap("abc", "u1")
    at = page.index(before)
    assert reply.body == page[:at] + script + page[at:]
    assert reply.body.count(b"<script") == page.count(b"<script") + 1
    assert b'"a":"abc","u":"u1","k":"wk_test","c":"http://127.0.0.1:9"' in script


@pytest.mark.parametrize(
    ("csp", "nonce", "injected"),
    [
        ("script-src 'nonce-abc123'", "abc123", True),
        ("default-src 'self'; script-src 'self' 'nonce-abc123' https:", "abc123", True),
        ("default-src 'self' 'unsafe-inline'", None, True),
        ("img-src *", None, True),
        ("script-src 'self'", None, False),
        ("default-src 'none'", None, False),
        ("script-src 'unsafe-inline' 'sha256-AAAA'", None, False),
    ],
)
async def test_bootstrap_respects_the_content_security_policy(
    launch: Launch, csp: str, nonce: str | None, injected: bool
) -> None:
    page = b"<html><head><title>t</title></head><body></body></html>"
    origin = Origin()
    origin.page("/", page, headers=[("Content-Security-Policy", csp)])
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.headers["Content-Security-Policy"] == csp
    if injected:
        script = bootstrap("abc", nonce=nonce)
        assert script.startswith(b'<script nonce="abc123">' if nonce else b"<script>")
        assert reply.body == edited(page, (b"<head>", b"<head>" + script))
    else:
        assert reply.body == page


async def test_no_bootstrap_where_the_site_turns_it_off(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", SIMPLE)
    gw = await launch(origin, extra=[ANALYTICS], site_opts=", bootstrap: false")
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body == SIMPLE_DONE
    # The other site keeps it.
    reply = await fetch(gw, "/", host=PAY, headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert b"<script>" in reply.body


@pytest.mark.parametrize(
    "cookie",
    [
        "ajs_anonymous_id=</script><script>alert(1)</script>",
        "ajs_anonymous_id=%3C%2Fscript%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        'ajs_anonymous_id="\\u003c/script>alert(1)"',
        "ajs_anonymous_id=ok-id; ajs_user_id=</script><script>alert(1)</script>",
    ],
)
async def test_hostile_cookie_ids_never_reach_the_page(launch: Launch, cookie: str) -> None:
    page = b"<html><head></head><body><a href='https://checkout.example-pay.com/'>x</a></body>"
    origin = Origin()
    origin.page("/", page)
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/", headers=[("Cookie", cookie)])
    assert b"alert(1)" not in reply.body
    assert reply.cookie("ajs_user_id") is None
    aid = reply.cookie("ajs_anonymous_id")
    assert aid is not None
    if "ok-id" in cookie:
        assert aid.value == "ok-id"
    else:
        assert UUID4.fullmatch(aid.value)
    expected = edited(
        page,
        (b"<head>", b"<head>" + bootstrap(aid.value)),
        (b".com/'", f".com/?ajs_aid={aid.value}'".encode()),
    )
    assert reply.body == expected


# --- The rewriter's failure fallback ---------------------------------------------------------


def fail_rewriter(monkeypatch: pytest.MonkeyPatch, after: int) -> list[int]:
    """Make the proxy's rewriter raise on the first feed that takes it past ``after`` input
    bytes; returns the sizes of the feeds it got."""
    fed: list[int] = []

    class Failing(HtmlRewriter):
        def feed(self, data: bytes) -> bytes:
            fed.append(len(data))
            if sum(fed) > after:
                raise RuntimeError("injected rewriter fault")
            return super().feed(data)

    monkeypatch.setattr("gateway.identity_flow.HtmlRewriter", Failing)
    return fed


def two_phase(
    origin: Origin, path: str, first: bytes, rest: bytes, release: asyncio.Event
) -> list[str]:
    """A chunked HTML response: ``first``, then (once ``release`` is set) ``rest`` in 64 KiB
    writes. Returns a list that records "first" and "done" as the upstream gets there."""
    progress: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": HTML})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(first)
        progress.append("first")
        await asyncio.wait_for(release.wait(), 10)
        for i in range(0, len(rest), 65536):
            await resp.write(rest[i : i + 65536])
        await resp.write_eof()
        progress.append("done")
        return resp

    origin.routes[path] = handler
    return progress


async def read_until(resp: aiohttp.ClientResponse, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = await asyncio.wait_for(resp.content.readany(), 10)
        assert chunk, f"body ended before {marker!r}"
        got += chunk
    return got


async def test_failing_rewriter_sends_the_small_page_unchanged(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = fail_rewriter(monkeypatch, after=0)
    origin = Origin()
    origin.page("/", SIMPLE)
    gw = await launch(origin, extra=[ANALYTICS])
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert fed == [len(SIMPLE)]
    assert reply.status == 200
    assert reply.body == SIMPLE
    assert reply.headers["Content-Length"] == str(len(SIMPLE))
    found = await metrics(gw)
    assert sample(found, "gateway_rewrite_failures_total", site=WWW) == 1
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 0
    assert sample(found, "gateway_html_skipped_total", site=WWW, reason="rewrite_failed") == 1
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 0
    [event] = [line for line in gw.log if line["event"] == "rewrite_failed"]
    assert event["site"] == WWW
    # The exception type only: a message could quote page content.
    assert event["error"] == "RuntimeError"
    # The gateway carries on.
    monkeypatch.undo()
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.body.startswith(b"<html><head><script>")


async def test_failing_rewriter_mid_stream_sends_the_rest_unchanged(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = big_page(700_000)
    first, rest = page[:65536], page[65536:]
    fed = fail_rewriter(monkeypatch, after=len(first))
    origin = Origin()
    release = asyncio.Event()
    two_phase(origin, "/", first, rest, release)
    gw = await launch(origin, extra=[ANALYTICS])
    url = URL(gw.url + "/", encoded=True)
    hdrs = {"Host": WWW, "Cookie": "ajs_anonymous_id=abc"}
    async with gw.session.get(url, headers=hdrs) as resp:
        got = await read_until(resp, b"/first?ajs_aid=abc")
        release.set()
        got += await resp.read()
    assert len(fed) >= 2
    # What went out before the fault stays rewritten; from the fault on, the upstream's bytes.
    assert got == edited(
        page,
        (b"<head>", b"<head>" + bootstrap("abc")),
        (b"/first", b"/first?ajs_aid=abc"),
    )
    found = await metrics(gw)
    assert sample(found, "gateway_rewrite_failures_total", site=WWW) == 1
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 0
    assert [line["event"] for line in gw.log].count("rewrite_failed") == 1


async def test_failing_rewriter_on_a_large_unedited_page(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No edits before the fault: the client gets the upstream's bytes exactly."""
    page = big_page(700_000).replace(f"https://{PAY}/first".encode(), b"/local")
    fed = fail_rewriter(monkeypatch, after=300_000)
    origin = Origin()
    origin.page("/", page)
    gw = await launch(origin)
    reply = await fetch(gw, "/", headers=[("Cookie", "ajs_anonymous_id=abc")])
    assert reply.status == 200
    assert len(fed) >= 2
    assert reply.body == page
    found = await metrics(gw)
    assert sample(found, "gateway_rewrite_failures_total", site=WWW) == 1


# --- Streaming --------------------------------------------------------------------------------


async def test_large_html_is_rewritten_while_streaming(launch: Launch) -> None:
    page = big_page(2_000_000)
    first, rest = page[:4096], page[4096:]
    origin = Origin()
    release = asyncio.Event()
    progress = two_phase(origin, "/", first, rest, release)
    gw = await launch(origin, extra=[ANALYTICS])
    url = URL(gw.url + "/", encoded=True)
    hdrs = {"Host": WWW, "Cookie": "ajs_anonymous_id=abc"}
    async with gw.session.get(url, headers=hdrs) as resp:
        assert resp.status == 200
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
        got = await read_until(resp, b"/first?ajs_aid=abc")
        # The client has the script and the first link; the upstream is still waiting.
        assert got.startswith(b"<!DOCTYPE html><html><head>" + bootstrap("abc"))
        assert progress == ["first"]
        release.set()
        got += await resp.read()
    assert progress == ["first", "done"]
    assert got == edited(big_done(page), (b"<head>", b"<head>" + bootstrap("abc")))


# --- Metrics and logs ------------------------------------------------------------------------


# What a browser sends with a page navigation (Chromium's Accept for documents).
NAVIGATION = ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")


async def test_metrics_after_a_visit(launch: Launch) -> None:
    origin = Origin()
    origin.page("/", SIMPLE)
    origin.page("/two", SIMPLE.replace(b"</body>", link(f"https://{PAY}/b") + b"</a></body>"))
    gw = await launch(origin, extra=[ANALYTICS])
    cookie = [("Cookie", "ajs_anonymous_id=abc")]
    from_pay = [NAVIGATION, ("Referer", f"https://{PAY}/cart")]
    await fetch(gw, "/?ajs_aid=from-url")  # url (302)
    await fetch(gw, "/?ajs_aid=%3Cbad%3E")  # rejected (302)
    await fetch(gw, "/")  # minted, rewritten
    await fetch(gw, "/", headers=cookie)  # cookie, rewritten, 1 link
    await fetch(gw, "/two", headers=cookie)  # cookie, rewritten, 2 links
    await fetch(gw, "/", headers=from_pay)  # minted; an arrival without identity
    await fetch(gw, "/", headers=[*cookie, NAVIGATION, ("Referer", f"https://{WWW}/elsewhere")])
    await fetch(gw, "/", headers=[*cookie, NAVIGATION, ("Referer", "https://other.example.net/")])
    await fetch(gw, "/?ajs_aid=abc", headers=from_pay)  # url (302); an arrival with identity
    await fetch(gw, "/", host="unknown.example.org")  # 421, no site
    found = await metrics(gw)
    sources = {
        s: sample(found, "gateway_identity_source_total", site=WWW, source=s)
        for s in ("url", "cookie", "minted", "rejected")
    }
    assert sources == {"url": 2, "cookie": 4, "minted": 2, "rejected": 1}
    assert sample(found, "gateway_html_rewritten_total", site=WWW) == 6
    assert sample(found, "gateway_links_decorated_total", site=WWW, target=PAY) == 7
    assert sample(found, "gateway_rewrite_seconds_count") == 6
    assert sample(found, "gateway_rewrite_seconds_sum") > 0
    assert arrivals(found) == {(WWW, PAY, "carried"): 1, (WWW, PAY, "missing"): 1}
    # Every answer is timed, the gateway's own (302, 421) included.
    assert sample(found, "gateway_request_duration_seconds_count", site=WWW) == 9
    assert sample(found, "gateway_request_duration_seconds_count", site="-") == 1
    assert sample(found, "gateway_request_duration_seconds_bucket", site=WWW, le="+Inf") == 9
    assert sample(found, "gateway_request_duration_seconds_sum", site=WWW) > 0
    (build,) = [dict(labels) for name, labels in found if name == "gateway_build_info"]
    assert build == {
        "version": importlib.metadata.version("ajs-identity-gateway"),
        "python": platform.python_version(),
        "implementation": IMPLEMENTATION,
    }
    assert sample(found, "gateway_build_info", **build) == 1
    assert sample(found, "gateway_store_circuit_open", store="memory") == 0
    assert sample(found, "gateway_config_last_reload_success") == 1
    assert (
        time.time() - 60
        < sample(found, "gateway_config_last_reload_success_timestamp_seconds")
        <= time.time()
    )


async def test_every_site_has_its_alerting_series_from_the_start(launch: Launch) -> None:
    """Counters the shipped alerts take rates of exist at 0 before their first event (a series
    that appears with its first count shows no increase)."""
    gw = await launch(Origin())
    found = await metrics(gw)
    expected = {
        ("gateway_html_rewritten_total", frozenset({("site", WWW)})),
        ("gateway_rewrite_failures_total", frozenset({("site", PAY)})),
        ("gateway_html_skipped_total", frozenset({("site", PAY), ("reason", "unknown_coding")})),
        ("gateway_html_skipped_total", frozenset({("site", WWW), ("reason", "tag_too_long")})),
        ("gateway_identity_source_total", frozenset({("site", PAY), ("source", "minted")})),
        (
            "gateway_cross_domain_arrivals_total",
            frozenset({("site", WWW), ("referrer", PAY), ("identity", "missing")}),
        ),
        ("gateway_store_errors_total", frozenset({("operation", "put")})),
    }
    assert {key: found.get(key) for key in expected} == dict.fromkeys(expected, 0.0)
    # A site is not its own referrer.
    assert not [
        key
        for key in found
        if key[0] == "gateway_cross_domain_arrivals_total"
        and dict(key[1])["site"] == dict(key[1])["referrer"]
    ]


# --- The fragmentation measure: arrivals from the other sites --------------------------------


def arrivals(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[tuple[str, ...], float]:
    """gateway_cross_domain_arrivals_total as {(site, referrer, identity): count}, without
    the series at 0 (every site's are there from the start)."""
    return {
        (lbl["site"], lbl["referrer"], lbl["identity"]): value
        for (name, labels), value in found.items()
        if name == "gateway_cross_domain_arrivals_total" and value
        for lbl in [dict(labels)]
    }


def jar(*replies: Reply, start: dict[str, str] | None = None) -> dict[str, str]:
    """The cookies a browser holds for the host after these responses (expired ones gone)."""
    cookies = dict(start or {})
    for reply in replies:
        for cookie in reply.cookies():
            if dict(cookie.attrs).get("Max-Age") == "0":
                cookies.pop(cookie.name, None)
            else:
                cookies[cookie.name] = cookie.value
    return cookies


def cookie_header(cookies: dict[str, str]) -> list[tuple[str, str]]:
    return [("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))] if cookies else []


# A page on both sites (one upstream serves them) linking to both: on each, the link to the
# other is decorated with the visitor's id there.
TWO_WAY = f'<html><body><a href="https://{WWW}/">w</a><a href="https://{PAY}/">p</a>'.encode()


async def linked_id(gw: RunningGateway, host: str, cookies: dict[str, str]) -> str:
    """The visitor's id on ``host`` as the gateway hands it on: the one its links carry."""
    reply = await fetch(gw, "/", host=host, headers=[NAVIGATION, *cookie_header(cookies)])
    (aid,) = decorated_ids(reply.body)
    return aid


async def test_returning_visitor_arriving_undecorated_is_split_and_counted(launch: Launch) -> None:
    """A visitor who has an older id on WWW comes from PAY by a link the gateway could not
    decorate: WWW keeps the old id, PAY has another, so this person is two visitors now. The
    arrival counts as missing identity although the visitor had a cookie here."""
    origin = Origin()
    origin.page("/", TWO_WAY)
    gw = await launch(origin)
    # On PAY the gateway mints an id; its pages link to WWW with it.
    on_pay = await fetch(gw, "/", host=PAY, headers=[NAVIGATION])
    pay_cookies = jar(on_pay)
    pay_id = await linked_id(gw, PAY, pay_cookies)
    assert pay_id == pay_cookies["ajs_anonymous_id"]
    # The visitor arrives at WWW from PAY without the id (a link built by script, say).
    www_cookies = {"ajs_anonymous_id": "older-id-on-www"}
    landed = await fetch(
        gw,
        "/landing",
        headers=[NAVIGATION, ("Referer", f"https://{PAY}/"), *cookie_header(www_cookies)],
    )
    assert landed.status == 200
    www_id = await linked_id(gw, WWW, jar(landed, start=www_cookies))
    assert www_id == "older-id-on-www" != pay_id  # split
    found = await metrics(gw)
    assert arrivals(found) == {(WWW, PAY, "missing"): 1}
    assert sample(found, "gateway_identity_source_total", site=WWW, source="cookie") >= 1
    # A new visitor arriving the same way is split too (minted here), and counted alike.
    await fetch(gw, "/landing", headers=[NAVIGATION, ("Referer", f"https://{PAY}/x")])
    assert arrivals(await metrics(gw)) == {(WWW, PAY, "missing"): 2}


async def test_decorated_hand_off_and_its_clean_up_leg_count_once_as_carried(
    launch: Launch,
) -> None:
    """The hand-off a browser makes from a PAY page: the decorated link, the clean-up 302
    (which marks its second leg), then the clean URL with the same Referer and no identity:
    one arrival, carried. The visitor had an older id on WWW; the carried one replaces it."""
    origin = Origin()
    origin.page("/", TWO_WAY)
    gw = await launch(origin)
    pay_cookies = jar(await fetch(gw, "/", host=PAY, headers=[NAVIGATION]))
    pay_id = await linked_id(gw, PAY, pay_cookies)
    www_cookies = {"ajs_anonymous_id": "older-id-on-www"}
    first = await fetch(
        gw,
        f"/landing?from=pay&ajs_aid={pay_id}",
        headers=[NAVIGATION, ("Referer", f"https://{PAY}/"), *cookie_header(www_cookies)],
    )
    assert first.status == 302
    assert first.headers["Location"] == "/landing?from=pay"
    marker = first.cookie("ajs_gw_leg")
    assert marker is not None
    assert marker.attrs == [
        ("Path", "/"),
        ("Max-Age", "60"),
        ("HttpOnly", None),
        ("SameSite", "Lax"),
    ]
    assert pay_id not in marker.value and "ajs_aid" not in marker.value
    # The browser follows the 302 with the cookies it set and the Referer policy it gave.
    www_cookies = jar(first, start=www_cookies)
    second = await fetch(
        gw,
        first.headers["Location"],
        headers=[NAVIGATION, ("Referer", f"https://{PAY}/"), *cookie_header(www_cookies)],
    )
    assert second.status == 200
    assert await linked_id(gw, WWW, jar(second, start=www_cookies)) == pay_id  # one visitor
    found = await metrics(gw)
    assert arrivals(found) == {(WWW, PAY, "carried"): 1}
    # The marker is all that tells the second leg apart: without it, it would be an arrival
    # without identity.
    del www_cookies["ajs_gw_leg"]
    await fetch(
        gw,
        first.headers["Location"],
        headers=[NAVIGATION, ("Referer", f"https://{PAY}/"), *cookie_header(www_cookies)],
    )
    assert arrivals(await metrics(gw)) == {(WWW, PAY, "carried"): 1, (WWW, PAY, "missing"): 1}


async def test_a_marker_hides_only_its_own_target(launch: Launch) -> None:
    origin = Origin()
    gw = await launch(origin)
    referer = ("Referer", f"https://{PAY}/")
    first = await fetch(gw, "/a?ajs_aid=abc", headers=[NAVIGATION, referer])
    cookies = jar(first)
    assert set(cookies) == {"ajs_anonymous_id", "ajs_gw_leg"}
    await fetch(gw, "/b", headers=[NAVIGATION, referer, *cookie_header(cookies)])
    await fetch(gw, "/a?x=1", headers=[NAVIGATION, referer, *cookie_header(cookies)])
    await fetch(gw, "/a", headers=[NAVIGATION, referer, *cookie_header(cookies)])
    assert arrivals(await metrics(gw)) == {(WWW, PAY, "carried"): 1, (WWW, PAY, "missing"): 2}


@pytest.mark.parametrize(
    ("headers", "counted"),
    [
        ([NAVIGATION], True),
        ([("Sec-Fetch-Dest", "document"), ("Accept", "*/*")], True),
        ([("Sec-Fetch-Dest", "iframe")], True),
        ([("Accept", "image/avif,image/webp,*/*")], False),
        ([("Sec-Fetch-Dest", "image"), NAVIGATION], False),
        ([("Sec-Fetch-Dest", "empty"), ("Accept", "*/*")], False),
        ([("Accept", "*/*")], False),
    ],
)
async def test_only_navigations_are_arrivals(
    launch: Launch, headers: list[tuple[str, str]], counted: bool
) -> None:
    """Images, scripts and fetches a PAY page loads from WWW are not hand-offs."""
    gw = await launch(Origin())
    await fetch(gw, "/logo", headers=[*headers, ("Referer", f"https://{PAY}/")])
    assert arrivals(await metrics(gw)) == ({(WWW, PAY, "missing"): 1} if counted else {})


async def test_a_refused_hand_off_counts_once_as_missing(launch: Launch) -> None:
    gw = await launch(Origin())
    referer = ("Referer", f"https://{PAY}/")
    first = await fetch(gw, "/p?ajs_aid=%3Cbad%3E", headers=[NAVIGATION, referer])
    assert first.status == 302
    cookies = jar(first)
    assert set(cookies) == {"ajs_gw_leg"}
    await fetch(
        gw, first.headers["Location"], headers=[NAVIGATION, referer, *cookie_header(cookies)]
    )
    assert arrivals(await metrics(gw)) == {(WWW, PAY, "missing"): 1}


async def test_no_marker_without_an_arrival(launch: Launch) -> None:
    """A link with identity from outside the fleet (no sibling Referer) is no arrival, and
    its clean-up sets no marker."""
    gw = await launch(Origin())
    reply = await fetch(gw, "/p?ajs_aid=abc", headers=[NAVIGATION])
    assert reply.status == 302
    assert reply.cookie("ajs_gw_leg") is None
    assert arrivals(await metrics(gw)) == {}


async def test_logs_never_carry_an_id(launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = Origin()
    origin.page("/", SIMPLE)
    origin.page(
        "/go", b"", status=302, content_type="text/html", headers=[("Location", f"https://{PAY}/")]
    )
    gw = await launch(origin, extra=[ANALYTICS])
    aid, uid = "secret-aid-4711", "secret-uid-0815"
    await fetch(gw, f"/p?ajs_aid={aid}&ajs_uid={uid}")
    await fetch(gw, f"/p?ajs_aid={aid}&ajs_uid={uid}", method="POST", data=b"x")
    await fetch(gw, f"/p?ajs_aid={aid}x%3C", method="GET")
    cookie = [("Cookie", f"ajs_anonymous_id={aid}; ajs_user_id={uid}")]
    await fetch(gw, "/", headers=cookie)
    await fetch(gw, "/go", headers=cookie)
    minted = (await fetch(gw, "/")).cookie("ajs_anonymous_id")
    assert minted is not None
    fail_rewriter(monkeypatch, after=0)
    await fetch(gw, "/", headers=cookie)
    dump = json.dumps(gw.log)
    assert [line["event"] for line in gw.log].count("request") == 7
    assert "rewrite_failed" in dump
    for secret in (aid, uid, minted.value):
        assert secret not in dump
