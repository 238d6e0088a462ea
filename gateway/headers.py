"""Pure: header hygiene for both directions (hop-by-hop stripping, X-Forwarded-*), the host a
request is routed on and the request-target it is forwarded with. Functions over header
multidicts and strings; the aiohttp request is read by the caller."""

from __future__ import annotations

import functools
import ipaddress
import re

from multidict import CIMultiDict, CIMultiDictProxy

from .config import Site
from .hosts import Authority, parse_authority

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
Headers = CIMultiDictProxy[str] | CIMultiDict[str]
# Where the authority of an absolute-form target ends (RFC 3986 §3.2).
_AUTHORITY_END = re.compile(r"[/?#]")

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


def connection_tokens(headers: Headers) -> frozenset[str]:
    """Header names listed in Connection: hop-by-hop for this message only."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


# Connection may name any header as hop-by-hop (RFC 9110 §7.6.1), but never one that frames or
# routes the message: a visitor who lists Content-Length there would otherwise have the gateway
# drop the length and send the body unframed, where the upstream reads it as the next request
# (request smuggling). Framing is always generated anew, and Host from the routed host.
_NEVER_HOP = frozenset({"content-length", "transfer-encoding", "host"})

# Headers through which a client names its own address (or the host and scheme it used). From a
# peer that is not a trusted proxy they are claims anybody can forge: removed, and the
# X-Forwarded-* set replaced by the gateway's own.
CLIENT_ADDRESS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-original-forwarded-for",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-appengine-user-ip",
        "x-azure-clientip",
        "x-azure-socketip",
    }
)


# The request id a front proxy may send and the gateway passes on, returns and logs: the form
# nginx's $request_id, Envoy's x-request-id and Heroku's router ids all take (hex, UUIDs,
# dotted or colon-separated hops), and nothing that could carry a line break or a quote.
REQUEST_ID = "X-Request-Id"
_REQUEST_ID_FORM = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def end_to_end(headers: Headers) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones, keeping order and repetitions (Set-Cookie)."""
    extra = connection_tokens(headers) - _NEVER_HOP
    drop = HOP_BY_HOP | extra if extra else HOP_BY_HOP
    # Built from one list: CIMultiDict takes it in one call, where add() per header is a call
    # each (this runs twice per request).
    kept = [(name, value) for name, value in headers.items() if name.lower() not in drop]
    return CIMultiDict(kept)


# Asked several times per request (forwarding headers, the log's client address, the visitor's
# scheme) about the same few peers: memoised, bounded.
@functools.lru_cache(maxsize=1024)
def is_trusted(peer: str | None, trusted: Networks) -> bool:
    if not peer or not trusted:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def kept_request_id(headers: Headers, peer: str | None, trusted_proxies: Networks) -> str | None:
    """The request id to keep: ``X-Request-Id`` as a trusted front proxy sent it, if it has
    the form of one (1-128 of ``[A-Za-z0-9._:-]``). None: the gateway makes its own, as for
    any id a visitor sends directly, which could be chosen to confuse the logs."""
    value = headers.get(REQUEST_ID)
    if value is None or not _REQUEST_ID_FORM.fullmatch(value):
        return None
    return value if is_trusted(peer, trusted_proxies) else None


def client_address(headers: Headers, peer: str | None, trusted_proxies: Networks) -> str | None:
    """The visitor's address, as far as it can be believed: the peer's, unless the peer is a
    trusted proxy; then the right-most address of X-Forwarded-For that is not a trusted proxy.

    Each trusted proxy appends the address it saw, so the chain is walked from the right, over
    the trusted hops, to the first address none of them vouches for. Anything to the left of
    it is the visitor's own claim (a client may send any X-Forwarded-For it likes), so the
    left-most entry is taken only when every entry is a trusted proxy. An entry that is not
    an IP address ends the walk at the last hop that was one.
    """
    if not is_trusted(peer, trusted_proxies):
        return peer
    believed = peer
    for entry in reversed(",".join(headers.getall("X-Forwarded-For", ())).split(",")):
        try:
            addr = ipaddress.ip_address(entry.strip())
        except ValueError:
            return believed
        believed = str(addr)
        if not any(addr in net for net in trusted_proxies):
            return believed
    return believed


def forwarded_headers(
    headers: Headers,
    *,
    peer: str | None,
    scheme: str,
    trusted_proxies: Networks,
    site: Site,
    routed: Authority,
    request_id: str,
) -> CIMultiDict[str]:
    """The request headers as the upstream should see them, for a request from ``peer`` over
    ``scheme`` routed on ``routed``, known as ``request_id`` (sent as X-Request-Id, in place
    of any the request had). Never a framing header: the upstream client writes the framing
    of the body it actually sends."""
    out = end_to_end(headers)
    out.popall("Content-Length", None)
    # We answer Expect ourselves (see proxy._expect_continue); the upstream gets the body anyway.
    out.popall("Expect", None)
    trusted = is_trusted(peer, trusted_proxies)
    xff = headers.get("X-Forwarded-For") if trusted else None
    proto = headers.get("X-Forwarded-Proto") if trusted else None
    if not trusted:
        for name in [n for n in out if n.lower() in CLIENT_ADDRESS]:
            out.popall(name, None)
    out["X-Forwarded-For"] = f"{xff}, {peer}" if xff else (peer or "")
    out["X-Forwarded-Proto"] = proto or scheme
    # Host and X-Forwarded-Host name the host the request was routed on, checked and
    # normalised (hosts.parse_authority), never the raw value the visitor sent.
    out["X-Forwarded-Host"] = str(routed)
    out[REQUEST_ID] = request_id
    out["Host"] = str(routed) if site.preserve_host else _authority_of(site.upstream)
    return out


def _authority_of(origin: str) -> str:
    """``host[:port]`` of a configured upstream origin (``http://legacy:8000``: ``legacy:8000``)."""
    return origin.partition("://")[2].split("/", 1)[0]


def routed_authority(host_header: str | None, raw_target: str) -> Authority | str | None:
    """The authority to route a request on: its Host, checked (None when it has none).

    A string is the reason the request must be refused with 400: a Host that is not a host,
    or an absolute-form request-target naming another authority than Host. RFC 9112 §3.2.2
    lets a server replace Host with the target's authority; the gateway refuses the
    disagreement instead, since no browser sends it and a proxy in front that routed on the
    other value would be bypassed.
    """
    if not host_header:
        return None
    routed = parse_authority(host_header)
    if routed is None:
        return "the Host header is not a valid host[:port]"
    if not raw_target.startswith("/") and raw_target != "*":
        scheme, sep, rest = raw_target.partition("://")
        named = parse_authority(_AUTHORITY_END.split(rest, 1)[0]) if sep else None
        scheme = scheme.lower()
        if (
            named is None
            or scheme not in ("http", "https")
            or named.host != routed.host
            or named.effective_port(scheme) != routed.effective_port(scheme)
        ):
            return "the request-target names another host than the Host header"
    return routed


def visitor_scheme(
    headers: Headers, peer: str | None, scheme: str, trusted_proxies: Networks
) -> str:
    """https when the visitor's own connection was TLS, directly or per a trusted front proxy."""
    if is_trusted(peer, trusted_proxies):
        proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return scheme


def upstream_target(raw_target: str) -> str:
    """The request-target to forward, byte for byte (origin-form only: an absolute-form
    target's authority is dropped, routing is by Host, so the gateway is never an open proxy;
    its path and query are kept as sent, "/" when it has none)."""
    if raw_target.startswith("/") or raw_target == "*":
        return raw_target
    _, sep, rest = raw_target.partition("://")
    if not sep:
        return "/"
    parts = _AUTHORITY_END.split(rest, 1)
    tail = rest[len(parts[0]) :].split("#", 1)[0]
    return tail if tail.startswith("/") else "/" + tail
