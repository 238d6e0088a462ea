"""Pure: decisions about an upstream response before its body is touched.

``plan`` decides what identity does to a response (decorate its redirect, write cookies,
rewrite its HTML, or count it as skipped); around it: which responses are HTML we may rewrite
(and which content codings to ask the upstream for), how to keep a personalised response out of
shared caches, what becomes of validators, and which script nonce a Content-Security-Policy
allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from multidict import CIMultiDict

from .inbound import Arrival
from .links import LinkDecorator

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Content codings we can decode and re-encode while streaming (codings.py); anything else passes
# untouched.
DECODABLE_CODINGS = ("gzip", "deflate", "br", "zstd")
REWRITABLE_CODINGS = frozenset({"", "identity", "x-gzip", *DECODABLE_CODINGS})
_NO_BODY = frozenset({204, 206, 304})
# Targeted cache-control fields: RFC 9213's CDN-Cache-Control and the older Surrogate-Control
# (Edge Architecture 1.0), which Fastly, Akamai and Varnish setups obey over Cache-Control.
_TARGETED_CACHE_FIELDS = ("CDN-Cache-Control", "Surrogate-Control")


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """(lower-cased type/subtype, charset parameter or None) of a Content-Type value."""
    if not content_type:
        return "", None
    parts = content_type.split(";")
    charset = None
    for param in parts[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip() or None
    return parts[0].strip().lower(), charset


def content_coding(headers: CIMultiDict[str]) -> str:
    """The response's content coding, lower-cased; "" for none. Several codings are returned
    joined, so that they are never mistaken for a single one we can undo."""
    values = [
        v.strip().lower() for v in ",".join(headers.getall("Content-Encoding", ())).split(",")
    ]
    values = [v for v in values if v]
    return ",".join(values)


def accepts_coding(accept_encoding: str | None, coding: str) -> bool:
    """Whether a request's Accept-Encoding admits ``coding`` (RFC 9110 §12.5.3): listed with a
    non-zero q, or covered by ``*``; ``identity`` is acceptable unless refused outright."""
    if coding in ("", "identity"):
        coding = "identity"
    if accept_encoding is None:
        # No header: any coding is acceptable in principle, but a client that asked for
        # nothing is safest served what it can surely read.
        return coding == "identity"
    star: bool | None = None
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        aliases = {coding, "x-gzip" if coding == "gzip" else coding}
        if name in aliases:
            return q > 0
        if name == "*":
            star = q > 0
    if star is not None:
        return star
    return coding == "identity"


def decodable_accept_encoding(value: str) -> str:
    """An Accept-Encoding field value limited to the codings the gateway can decode, for the
    upstream: an HTML page it answers in any other coding could not be rewritten.

    Codings we decode and ``identity`` are kept as written (q-values and all); others are
    dropped; ``*`` stands for every coding not listed, so it becomes each decodable coding it
    covers, and ``identity`` if that is not listed either (RFC 9110 §12.5.3: ``*;q=0`` refuses
    identity too), with the star's own parameters. Left with nothing, a visitor still accepts
    ``identity``, which is not refused unless listed with q=0. An empty value (identity only)
    stays empty.
    """
    kept: list[str] = []
    stars: list[str] = []
    listed: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, semicolon, params = item.partition(";")
        name = name.strip().lower()
        if name == "*":
            stars.append(semicolon + params)
            continue
        name = "gzip" if name == "x-gzip" else name
        listed.add(name)
        if name in DECODABLE_CODINGS or name == "identity":
            kept.append(item)
    if stars:
        kept.extend(c + stars[0] for c in (*DECODABLE_CODINGS, "identity") if c not in listed)
    if not kept and (listed or stars):
        return "identity"
    return ", ".join(kept)


def is_html_page(method: str, status: int, headers: CIMultiDict[str]) -> bool:
    """An HTML response with a page for a body: not for HEAD, not 204/206/304 or 1xx."""
    if method == "HEAD" or status in _NO_BODY or status < 200:
        return False
    mtype, _ = media_type(headers.get("Content-Type"))
    return mtype in HTML_TYPES


def is_rewritable_html(method: str, status: int, headers: CIMultiDict[str]) -> bool:
    """HTML the gateway may rewrite: not for HEAD, not 204/206/304, a coding we can undo."""
    return is_html_page(method, status, headers) and content_coding(headers) in REWRITABLE_CODINGS


def make_private(headers: CIMultiDict[str]) -> None:
    """Keep a response that carries a visitor's identity out of shared caches.

    ``public`` and ``s-maxage`` go, ``private`` is added (``no-store`` and the rest stay), and
    ``Vary: Cookie`` tells any cache that the body depends on the visitor's cookie.
    Cache-Control fields aimed at CDNs go too: a CDN that honours one ignores Cache-Control
    (RFC 9213 §2.1), so ``private`` alone would not stop it sharing the page.
    """
    for targeted in _TARGETED_CACHE_FIELDS:
        headers.popall(targeted, None)
    directives: list[str] = []
    for value in headers.getall("Cache-Control", ()):
        for directive in value.split(","):
            d = directive.strip()
            name = d.split("=", 1)[0].strip().lower()
            if not d or name in ("public", "s-maxage", "private"):
                continue
            directives.append(d)
    headers.popall("Cache-Control", None)
    headers["Cache-Control"] = ", ".join(["private", *directives])
    add_vary(headers, "Cookie")


def add_vary(headers: CIMultiDict[str], field: str) -> None:
    existing = [
        v.strip() for value in headers.getall("Vary", ()) for v in value.split(",") if v.strip()
    ]
    if "*" in existing or field.lower() in (v.lower() for v in existing):
        return
    headers.popall("Vary", None)
    headers["Vary"] = ", ".join([*existing, field])


def weaken_etag(headers: CIMultiDict[str]) -> None:
    """A rewritten body is no longer byte-identical to what a strong ETag names."""
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        headers["ETag"] = "W/" + etag


# CSP source expressions (CSP Level 3 §2.3.1): 'nonce-<base64-value>'.
_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/_=-]+)'")


def script_policy(headers: CIMultiDict[str]) -> tuple[bool, str | None]:
    """(may we inject an inline script, the nonce to put on it).

    Every enforced policy must allow it (they all apply). A policy whose effective script
    directive (``script-src-elem``, else ``script-src``, else ``default-src``) lists a nonce
    allows a script carrying that nonce; one with ``'unsafe-inline'`` and no nonce or hash
    allows any inline script; a policy that allows neither blocks us, and then we do not inject
    rather than add a script the browser refuses with a console error.
    """
    nonce: str | None = None
    for policy in headers.getall("Content-Security-Policy", ()):
        for one in policy.split(","):
            directives: dict[str, str] = {}
            for directive in one.split(";"):
                name, _, value = directive.strip().partition(" ")
                if name and name.lower() not in directives:
                    directives[name.lower()] = value
            source = next(
                (
                    directives[d]
                    for d in ("script-src-elem", "script-src", "default-src")
                    if d in directives
                ),
                None,
            )
            if source is None:
                continue
            found = _NONCE.search(source)
            if found:
                if nonce is not None and found.group(1) != nonce:
                    return False, None
                nonce = found.group(1)
                continue
            lowered = source.lower()
            if (
                "'unsafe-inline'" not in lowered
                or "'sha" in lowered
                or "'strict-dynamic'" in lowered
            ):
                return False, None
    return True, nonce


@dataclass(frozen=True)
class RewritePlan:
    """How an HTML body is to be rewritten."""

    # Inject the bootstrap (the page's CSP allows it, with ``nonce`` when it names one).
    bootstrap: bool
    nonce: str | None
    # Decorate the page's links (a LinkDecorator over the configured targets).
    links: bool
    # No id is known here and none may be minted (the browser may have withheld the cookies):
    # the bootstrap runs without ids.
    idless: bool
    # The upstream's content coding, and the one to send ("": plain, for a visitor who never
    # accepted the upstream's coding).
    coding: str
    output_coding: str
    charset: str | None
    # False for HEAD: it gets the headers its GET would get, but there is no body to build.
    build_body: bool


@dataclass(frozen=True)
class OutboundPlan:
    """What the identity side does to one response, decided before its body is touched.

    The only thing left to the caller is what needs I/O or per-request objects: minting a token
    for ``redirect_target`` (a store write), rendering the bootstrap, building the body
    pipeline, and writing the cookies.
    """

    # The upstream redirects to this cross-domain pattern: its Location gets the visitor's
    # identity by that target's strategy.
    redirect_target: str | None
    # Ids to write to the visitor's cookies (None: leave them).
    cookie_aid: str | None
    cookie_uid: str | None
    rewrite: RewritePlan | None
    # An HTML page of a rewriting site that goes out unrewritten, and why.
    skipped: Literal["unknown_coding"] | None


def plan(
    *,
    method: str,
    status: int,
    headers: CIMultiDict[str],
    accept_encoding: str | None,
    arrival: Arrival,
    own_host: str,
    page_url: Callable[[], str],
    targets: Sequence[str],
    mint: bool,
    bootstrap: bool,
) -> OutboundPlan:
    """Decide what identity does to a response from the request, the site's settings
    (``targets``, ``mint``, ``bootstrap``: a write key and the site's bootstrap on) and the
    upstream's status and headers. ``page_url`` is called only when a redirect needs it."""
    html = media_type(headers.get("Content-Type"))[0] in HTML_TYPES
    redirect_target = None
    if 300 <= status < 400 and arrival.aid and targets and "Location" in headers:
        redirect_target = LinkDecorator(own_host, page_url(), targets).target_of(
            headers["Location"]
        )
    # Ids from the URL are always stored; on HTML responses the visitor's id is (re)written so
    # that a minted id sticks and a server-set cookie outlives Safari's script cap. An id just
    # handed to another domain in a redirect is stored here too, or the two would part.
    aid, uid = arrival.write_aid, arrival.write_uid
    if mint and (html or (redirect_target is not None and arrival.minted)):
        aid = aid or arrival.aid
        uid = uid or arrival.uid
    head = method == "HEAD"
    # Where the browser may have withheld the cookies, nothing was minted and the id is unknown
    # unless the URL brought one. The page still gets the bootstrap, without ids: it cleans the
    # address bar, and analytics.js keeps the id in its own cookie and storage, which the
    # browser does give the page. Links carry that id from click time (token and signed ones
    # via the freshness endpoint, a GET that has the cookies).
    idless = arrival.aid is None and arrival.cookies_withheld
    rewrite = None
    skipped: Literal["unknown_coding"] | None = None
    if (arrival.aid or idless) and is_rewritable_html("GET" if head else method, status, headers):
        inject, nonce = script_policy(headers) if bootstrap else (False, None)
        links = bool(targets) and not idless
        if inject or links:
            coding = content_coding(headers)
            # Re-encode as the upstream did, unless the visitor never accepted that coding (an
            # upstream that ignores Accept-Encoding): then send it plain.
            accepted = accepts_coding(accept_encoding, coding)
            rewrite = RewritePlan(
                bootstrap=inject,
                nonce=nonce,
                links=links,
                idless=idless,
                coding=coding,
                output_coding=coding if accepted else "",
                charset=media_type(headers.get("Content-Type"))[1],
                build_body=not head,
            )
    elif arrival.aid and is_html_page(method, status, headers) and (targets or bootstrap):
        skipped = "unknown_coding"
    return OutboundPlan(redirect_target, aid, uid, rewrite, skipped)


def prepare_for_rewrite(rewrite: RewritePlan, headers: CIMultiDict[str]) -> None:
    """The header edits a rewritten body needs: its length and strong validator no longer
    hold, and its coding may change."""
    headers.popall("Content-Length", None)
    weaken_etag(headers)
    if rewrite.coding:
        add_vary(headers, "Accept-Encoding")
        if rewrite.output_coding != rewrite.coding:
            headers.popall("Content-Encoding", None)
