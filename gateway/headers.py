"""Header hygiene for both directions: hop-by-hop stripping, X-Forwarded-*, the forwarded
request-target. Pure functions over aiohttp's header multidicts."""

from __future__ import annotations

import ipaddress

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import Config, Site

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

# RFC 9110 §7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
# Upgrade; Trailer and the Proxy-Authenticate/Authorization pair are hop-by-hop per RFC 7230's
# list, which proxies still honour.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in Connection: hop-by-hop for this message only."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones, keeping order and repetitions (Set-Cookie)."""
    extra = connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in extra:
            continue
        out.add(name, value)
    return out


def is_trusted(peer: str | None, trusted: Networks) -> bool:
    if not peer or not trusted:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def forwarded_headers(request: web.BaseRequest, site: Site, config: Config) -> CIMultiDict[str]:
    """The request headers as the upstream should see them."""
    headers = end_to_end(request.headers)
    # We answer Expect ourselves (see _expect_continue); the upstream gets the body anyway.
    headers.popall("Expect", None)
    peer = request.remote
    trusted = is_trusted(peer, config.proxy.trusted_proxies)
    xff = request.headers.get("X-Forwarded-For") if trusted else None
    headers["X-Forwarded-For"] = f"{xff}, {peer}" if xff else (peer or "")
    proto = request.headers.get("X-Forwarded-Proto") if trusted else None
    headers["X-Forwarded-Proto"] = proto or request.scheme
    fwd_host = request.headers.get("X-Forwarded-Host") if trusted else None
    headers["X-Forwarded-Host"] = fwd_host or request.headers.get("Host") or ""
    if not site.preserve_host:
        headers["Host"] = URL(site.upstream).raw_authority
    return headers


def visitor_scheme(request: web.BaseRequest, config: Config) -> str:
    """https when the visitor's own connection was TLS, directly or per a trusted front proxy."""
    if is_trusted(request.remote, config.proxy.trusted_proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return request.scheme


def upstream_target(request: web.BaseRequest) -> str:
    """The request-target to forward, byte for byte (origin-form only: an absolute-form
    target's authority is ignored, routing is by Host, so the gateway is never an open proxy)."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    if raw == "*":
        return raw
    return URL(raw, encoded=True).raw_path_qs or "/"
