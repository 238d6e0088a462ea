"""The aiohttp glue: one handler that streams a request to its site's upstream and back.

Everything that decides *what* to send lives in the pure modules; this file only moves bytes:
it routes by Host, strips hop-by-hop headers, streams bodies both ways with back-pressure,
turns upstream faults into 502/504, and aborts the client connection when an upstream body is
cut short, so that a truncated page never looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import TextIO
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .body import HtmlBody
from .bootstrap import RefreshPlan, render_bootstrap
from .codecs import DecodeError
from .config import Config, Site, Strategy, normalize_host
from .headers import end_to_end, forwarded_headers, upstream_target, visitor_scheme
from .identity import IdRules, LinkDecorator, cookie_domain, identity_cookies
from .inbound import (
    Arrival,
    identity_rules,
    read_url_identity,
    referring_cross_domain,
    settle,
    split_target,
)
from .links import LINK_PATH, TargetParams, protected_target
from .metrics import Metrics
from .outbound import (
    HTML_TYPES,
    accepts_coding,
    add_vary,
    content_coding,
    is_rewritable_html,
    make_private,
    media_type,
    script_policy,
    weaken_etag,
)
from .rewriter import HtmlRewriter
from .store import StoreError, TokenStore
from .strategies import SigningKeys, TokenRecord, new_token
from .upstream import (
    Origin,
    UpstreamBodyError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from .websocket import relay_websocket

# Responses to these never have a body (RFC 9110 §6.4.1).
_NO_BODY_STATUS = frozenset({204, 304})
# Bodies up to this size, with a known length, are read whole and sent in one write: for
# small pages that is markedly cheaper than a streamed response and costs little memory.
SMALL_BODY = 256 * 1024
_CHUNK = 64 * 1024


@dataclass
class Derived:
    """Values computed once per config rather than once per request."""

    rules: IdRules
    # Every cross-domain pattern, and those whose links carry the raw id (strategy "query").
    targets: tuple[str, ...]
    query_targets: tuple[str, ...]
    # Targets that must not see raw ids: their links need a fresh token or signature.
    protected_targets: tuple[str, ...]
    has_token_targets: bool
    strategies: dict[str, Strategy]
    signing_keys: SigningKeys | None
    # Public Suffix List lookups are slow next to a dict hit; a wildcard site can bring any
    # number of hosts, so the memo is bounded.
    _cookie_domains: dict[tuple[str, str | None], str | None] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config) -> Derived:
        cross = config.cross_domains
        return cls(
            rules=identity_rules(config),
            targets=tuple(c.host for c in cross),
            query_targets=tuple(c.host for c in cross if c.strategy == "query"),
            protected_targets=tuple(c.host for c in cross if c.strategy != "query"),
            has_token_targets=any(c.strategy == "token" for c in cross),
            strategies={c.host: c.strategy for c in cross},
            signing_keys=SigningKeys.parse(config.signing.keys) if config.signing.keys else None,
        )

    def cookie_domain(self, host: str, configured: str | None) -> str | None:
        key = (host, configured)
        try:
            return self._cookie_domains[key]
        except KeyError:
            pass
        if len(self._cookie_domains) >= 4096:
            self._cookie_domains.clear()
        domain = self._cookie_domains[key] = cookie_domain(host, configured)
        return domain


class ProxyState:
    """What the handler needs; swapped or mutated by app.py (reload, drain)."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        store: TokenStore,
        upstreams: UpstreamPool,
    ) -> None:
        self.session = session
        self.upstreams = upstreams
        self.metrics = metrics
        self.store = store
        self.log: TextIO = sys.stdout
        self.in_flight = 0
        self.draining = False
        self.config = config

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self.derived = Derived.of(config)
        self._config = config


async def _expect_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` ourselves (the low-level server does not): the client
    then sends the body, which is streamed on to the upstream."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


def plain_response(status: int, text: str) -> web.Response:
    return web.Response(
        status=status,
        text=text + "\n",
        headers={"Cache-Control": "no-store", "Connection": "close"} if status >= 500 else None,
    )


@dataclass
class Outcome:
    """What the access log and metrics record about one request."""

    status: int = 0
    upstream_status: int | None = None
    sent: int = 0


class ProxyHandler:
    """The low-level aiohttp handler (no router: every path of every site is proxied)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        state = self.state
        config = state.config
        start = time.monotonic()
        site = config.site_for(request.host if "Host" in request.headers else None)
        outcome = Outcome()
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            if site is None:
                outcome.status = 421
                return plain_response(421, "421 Misdirected Request: this host is not served here")
            return await self.forward(request, site, config, outcome)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            self.record(request, site, outcome, start)

    async def forward(
        self, request: web.BaseRequest, site: Site, config: Config, outcome: Outcome
    ) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await relay_websocket(self, request, site, outcome)
        state = self.state
        target = upstream_target(request)
        if target.startswith(LINK_PATH) and target[len(LINK_PATH) : len(LINK_PATH) + 1] in "?":
            return await self.fresh_link(request, site, target, outcome)
        arrival = await self.arrival(request, site, target)
        if arrival.redirect is not None:
            return self.cleanup_redirect(request, site, arrival, outcome)
        # Only a visitor who arrives with no id at all counts: right after a successful
        # hand-off the browser follows the clean-up 302 with the other domain still in Referer,
        # but by then it carries the id in its cookie.
        if arrival.source in ("minted", "none"):
            referrer = referring_cross_domain(
                request.headers.get("Referer"), normalize_host(request.host), config
            )
            if referrer is not None:
                state.metrics.unidentified_arrivals.labels(site.host, referrer).inc()
        headers = forwarded_headers(request, site, config)
        body = None
        length = None
        if request.body_exists:
            await _expect_continue(request)
            body = _request_body(request)
            length = request.content_length
        sent_at = time.monotonic()
        try:
            upstream = await state.upstreams.request(
                site_origin(site), request.method, arrival.target, headers.items(), body, length
            )
        except UpstreamError as exc:
            return self.fault(site, outcome, 504 if exc.kind == "timeout" else 502, exc.kind, exc)
        state.metrics.upstream_latency.labels(site.host).observe(time.monotonic() - sent_at)
        outcome.upstream_status = upstream.status
        try:
            return await self.respond(request, site, arrival, upstream, outcome)
        finally:
            upstream.release()

    async def arrival(self, request: web.BaseRequest, site: Site, target: str) -> Arrival:
        """The request's identity: URL parameters checked (token exchanged), then cookies."""
        state = self.state
        config = state.config
        derived = state.derived
        path, cleaned, params, had_params = split_target(target)
        url = read_url_identity(
            params,
            site=site,
            rules=derived.rules,
            host=normalize_host(request.host),
            user_agent=request.headers.get("User-Agent"),
            now=time.time(),
            keys=derived.signing_keys,
            bind_user_agent=config.signing.bind_user_agent,
            max_lifetime=config.signing.lifetime,
        )
        if url.token is not None:
            try:
                record = await state.store.take(url.token, single_use=config.tokens.single_use)
                url = url.exchanged(record, derived.rules, "unknown_or_expired")
            except StoreError:
                state.metrics.store_errors.labels("take").inc()
                url = url.exchanged(None, derived.rules, "store_unavailable")
        if url.refused is not None and url.form is not None:
            state.metrics.identity_refused.labels(url.form, url.refused).inc()
        arrival = settle(
            method=request.method,
            target=target,
            path=path,
            cleaned_query=cleaned,
            had_params=had_params,
            url=url,
            cookie_headers=request.headers.getall("Cookie", ()),
            site=site,
            rules=derived.rules,
            mint=config.identity.mint,
        )
        if arrival.source != "none":
            state.metrics.id_source.labels(arrival.source).inc()
        return arrival

    async def fresh_link(
        self, request: web.BaseRequest, site: Site, target: str, outcome: Outcome
    ) -> web.Response:
        """The freshness endpoint: mint a token or signature now and redirect to the target.

        Pages link token and signed targets with credentials minted when the page was served;
        a click after they expired is sent here by the bootstrap. It only ever redirects to a
        configured protected cross-domain (never the gateway's own host): anything else is a
        400, so it cannot serve as an open redirect.
        """
        state = self.state
        derived = state.derived
        own_host = normalize_host(request.host)
        to = parse_qs(target.partition("?")[2]).get("to", [""])[0]
        pattern = protected_target(to, own_host, derived.protected_targets)
        if request.method not in ("GET", "HEAD") or pattern is None:
            outcome.status = 400
            response = plain_response(400, "400 Bad Request: not a link to a configured domain")
            response.headers["Cache-Control"] = "no-store"
            return response
        arrival = await self.arrival(request, site, target.partition("?")[0])
        location = to
        if arrival.aid is not None and not arrival.minted:
            params = await self.target_params(
                request, arrival, mint=derived.strategies[pattern] == "token"
            )
            decorated = LinkDecorator(own_host, to, derived.protected_targets, params).decorate(
                to, None
            )
            location = decorated or to
        response = web.Response(status=302)
        response.headers["Location"] = location
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
        outcome.status = 302
        return response

    async def mint_token(self, request: web.BaseRequest, arrival: Arrival) -> str | None:
        """One token for this page view (one store round trip), or None if the store failed."""
        state = self.state
        assert arrival.aid is not None
        token = new_token()
        record = TokenRecord(
            anonymous_id=arrival.aid,
            user_id=arrival.uid,
            issued_at=time.time(),
            source_host=normalize_host(request.host),
        )
        try:
            await state.store.put(token, record, state.config.tokens.ttl)
        except StoreError:
            state.metrics.store_errors.labels("put").inc()
            return None
        return token

    async def target_params(
        self, request: web.BaseRequest, arrival: Arrival, *, mint: bool
    ) -> TargetParams:
        """The link parameters for this response; ``mint``: whether it may link a token
        target (a token costs a store write, so only then is one minted)."""
        config = self.state.config
        derived = self.state.derived
        assert arrival.aid is not None
        token = await self.mint_token(request, arrival) if mint else None
        bind = config.signing.bind_user_agent
        return TargetParams(
            config.cross_domains,
            aid=arrival.aid,
            uid=arrival.uid,
            token=token,
            keys=derived.signing_keys,
            expires=int(time.time()) + config.signing.lifetime,
            user_agent=request.headers.get("User-Agent") if bind else None,
        )

    def cleanup_redirect(
        self, request: web.BaseRequest, site: Site, arrival: Arrival, outcome: Outcome
    ) -> web.Response:
        """302 to the same URL without identity parameters, keeping the id in a cookie."""
        assert arrival.redirect is not None
        response = web.Response(status=302)
        headers = response.headers
        headers["Location"] = arrival.redirect
        headers["Cache-Control"] = "no-store"
        headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
        for cookie in self.cookies(request, site, arrival.store_aid, arrival.store_uid):
            headers.add("Set-Cookie", cookie)
        outcome.status = 302
        return response

    def cookies(
        self, request: web.BaseRequest, site: Site, aid: str | None, uid: str | None
    ) -> list[str]:
        if aid is None and uid is None:
            return []
        config = self.state.config
        return identity_cookies(
            aid,
            uid,
            domain=self.state.derived.cookie_domain(
                normalize_host(request.host), site.cookie_domain
            ),
            max_age=config.identity.cookie_max_age,
            secure=visitor_scheme(request, config) == "https",
            now=time.time(),
        )

    def page_url(self, request: web.BaseRequest, arrival: Arrival) -> str:
        scheme = visitor_scheme(request, self.state.config)
        return f"{scheme}://{request.host}{arrival.target}"

    async def outbound_identity(
        self,
        request: web.BaseRequest,
        site: Site,
        arrival: Arrival,
        status: int,
        headers: CIMultiDict[str],
    ) -> HtmlBody | None:
        """Edit the response headers for identity; return the body pipeline if the HTML body
        is to be rewritten."""
        state = self.state
        config = state.config
        derived = state.derived
        own_host = normalize_host(request.host)
        mtype, charset = media_type(headers.get("Content-Type"))
        html = mtype in HTML_TYPES
        personal = redirected = False
        targets = derived.targets
        if 300 <= status < 400 and arrival.aid and targets and "Location" in headers:
            page_url = self.page_url(request, arrival)
            location = headers["Location"]
            hits: list[str] = []

            def probe(pattern: str, host: str) -> None:
                hits.append(pattern)

            # Find the target first, so a token is minted only for a redirect that needs one.
            LinkDecorator(own_host, page_url, targets, probe).decorate(location, None)
            if hits:
                params = await self.target_params(
                    request, arrival, mint=derived.strategies[hits[0]] == "token"
                )
                new = LinkDecorator(own_host, page_url, targets, params).decorate(location, None)
                if new is not None:
                    headers["Location"] = new
                    personal = True
                    redirected = True
                    state.metrics.links_decorated.labels(site.host, "redirect").inc()
        # Ids from the URL are always stored; on HTML responses the visitor's id is (re)written
        # so that a minted id sticks and a server-set cookie outlives Safari's script cap. An id
        # just handed to another domain in a redirect is stored here too, or the two would part.
        aid, uid = arrival.store_aid, arrival.store_uid
        if config.identity.mint and (html or (redirected and arrival.minted)):
            aid = aid or arrival.aid
            uid = uid or arrival.uid
        for cookie in self.cookies(request, site, aid, uid):
            headers.add("Set-Cookie", cookie)
            personal = True
        body = None
        if arrival.aid and is_rewritable_html(request.method, status, headers):
            inject = None
            if config.analytics.write_key and site.bootstrap:
                allowed, nonce = script_policy(headers)
                if allowed:
                    inject = render_bootstrap(
                        write_key=config.analytics.write_key,
                        cdn_url=config.analytics.cdn_url,
                        anonymous_id=arrival.aid,
                        user_id=arrival.uid,
                        targets=derived.query_targets,
                        own_host=own_host,
                        nonce=nonce,
                        refresh=self.refresh_plan(),
                    )
            policy = None
            if targets:
                # The body streams, so whether it links a token target is not known yet.
                params = await self.target_params(
                    request, arrival, mint=derived.has_token_targets
                )
                policy = LinkDecorator(own_host, self.page_url(request, arrival), targets, params)
            if inject is not None or policy is not None:
                rewriter = HtmlRewriter(policy, inject=inject, charset=charset)
                coding = content_coding(headers)
                # Re-encode as the upstream did, unless the visitor never accepted that coding
                # (an upstream that ignores Accept-Encoding): then send it plain.
                accepted = accepts_coding(request.headers.get("Accept-Encoding"), coding)
                body = HtmlBody(
                    rewriter,
                    coding,
                    self.rewrite_failed(site),
                    policy,
                    output_coding=coding if accepted else "",
                )
                headers.popall("Content-Length", None)
                weaken_etag(headers)
                if coding:
                    add_vary(headers, "Accept-Encoding")
                    if not accepted:
                        headers.popall("Content-Encoding", None)
                personal = True
        if personal:
            make_private(headers)
        return body

    def refresh_plan(self) -> RefreshPlan | None:
        """How the bootstrap keeps token and signed links fresh (None: no such targets)."""
        derived = self.state.derived
        if not derived.protected_targets:
            return None
        config = self.state.config
        # Refresh a little before the earliest credential on the page can expire.
        lifetimes = []
        if derived.has_token_targets:
            lifetimes.append(config.tokens.ttl)
        if derived.signing_keys is not None:
            lifetimes.append(config.signing.lifetime)
        fresh_for = max(1, min(lifetimes, default=config.tokens.ttl) - 30)
        return RefreshPlan(
            endpoint=LINK_PATH, targets=derived.protected_targets, fresh_for=fresh_for
        )

    def rewrite_failed(self, site: Site) -> Callable[[BaseException], None]:
        def report(exc: BaseException) -> None:
            self.state.metrics.rewrite_failures.labels(site.host).inc()
            self.log_event("rewrite_failed", site=site.host, error=repr(exc)[:200])

        return report

    def rewrite_done(self, site: Site, body: HtmlBody) -> None:
        metrics = self.state.metrics
        if not body.failed:
            metrics.html_rewritten.labels(site.host).inc()
        metrics.rewrite_seconds.observe(body.rewrite_seconds)
        for target, count in body.targets_hit.items():
            metrics.links_decorated.labels(site.host, target).inc(count)

    async def respond(
        self,
        request: web.BaseRequest,
        site: Site,
        arrival: Arrival,
        upstream: UpstreamResponse,
        outcome: Outcome,
    ) -> web.StreamResponse:
        headers = end_to_end(upstream.headers)
        status = upstream.status
        outcome.status = status
        body = await self.outbound_identity(request, site, arrival, status, headers)
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        length = upstream.content_length
        if no_body:
            response = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
            if length is not None:
                # Keep a HEAD's advertised length (aiohttp would otherwise rewrite it).
                response.content_length = length
            await response.prepare(request)
            await response.write_eof()
            return response
        if length is not None and length <= SMALL_BODY:
            return await self._respond_whole(request, site, upstream, headers, body, outcome)
        return await self._respond_streamed(request, site, upstream, headers, length, body, outcome)

    async def _respond_whole(
        self,
        request: web.BaseRequest,
        site: Site,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        body: HtmlBody | None,
        outcome: Outcome,
    ) -> web.StreamResponse:
        try:
            data = await upstream.read()
        except UpstreamError as exc:
            return self._abort_before_headers(request, site, outcome, exc)
        if len(data) != upstream.content_length:
            return self._abort_before_headers(
                request, site, outcome, UpstreamBodyError("short body")
            )
        if body is not None:
            try:
                data = body.feed(data) + body.close()
            except DecodeError as exc:
                return self._abort_before_headers(request, site, outcome, exc)
            self.rewrite_done(site, body)
        response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
        response.body = data
        outcome.sent = len(data)
        return response

    async def _respond_streamed(
        self,
        request: web.BaseRequest,
        site: Site,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        length: int | None,
        body: HtmlBody | None,
        outcome: Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if length is not None and body is None:
            response.content_length = length
        elif request.version < (1, 1):
            # No chunked encoding for HTTP/1.0: the end of the body is the end of the connection.
            response.force_close()
        await response.prepare(request)
        received = 0
        try:
            while True:
                chunk = await upstream.readany()
                if not chunk:
                    break
                received += len(chunk)
                if body is not None:
                    chunk = body.feed(chunk)
                    if not chunk:
                        continue
                await response.write(chunk)
                outcome.sent += len(chunk)
            if length is not None and received != length:
                raise UpstreamBodyError(f"upstream sent {received} of {length} bytes")
            if not upstream.is_eof():
                raise UpstreamBodyError("upstream body not complete")
            if body is not None:
                tail = body.close()
                self.rewrite_done(site, body)
                if tail:
                    await response.write(tail)
                    outcome.sent += len(tail)
        except (UpstreamError, DecodeError) as exc:
            self._abort(request, site, outcome, exc)
            return response
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            # The client went away; nothing to send. Do not reuse the upstream connection.
            upstream.close()
            outcome.status = 499
            return response
        await response.write_eof()
        return response

    def _abort_before_headers(
        self, request: web.BaseRequest, site: Site, outcome: Outcome, exc: BaseException
    ) -> web.StreamResponse:
        # Nothing was sent yet, but the status line would promise a body we do not have:
        # a 502 tells the truth.
        kind = "timeout" if isinstance(exc, TimeoutError) else "aborted_body"
        return self.fault(site, outcome, 502, kind, exc)

    def _abort(
        self, request: web.BaseRequest, site: Site, outcome: Outcome, exc: BaseException
    ) -> None:
        """Cut the client connection so a truncated body never looks complete."""
        self.state.metrics.upstream_errors.labels(site.host, "aborted_body").inc()
        self.log_event("upstream_body_aborted", site=site.host, error=str(exc))
        outcome.status = outcome.status or 502
        transport = request.transport
        if transport is not None:
            transport.abort()

    def fault(
        self, site: Site, outcome: Outcome, status: int, kind: str, exc: BaseException
    ) -> web.Response:
        self.state.metrics.upstream_errors.labels(site.host, kind).inc()
        self.log_event("upstream_error", site=site.host, kind=kind, error=repr(exc)[:200])
        outcome.status = status
        text = {
            502: "502 Bad Gateway: the upstream could not be reached",
            504: "504 Gateway Timeout: the upstream did not answer in time",
        }[status]
        return plain_response(status, text)

    def record(
        self, request: web.BaseRequest, site: Site | None, outcome: Outcome, start: float
    ) -> None:
        duration = time.monotonic() - start
        label = site.host if site else "-"
        self.state.metrics.count_request(label, request.method, outcome.status)
        # Written by hand rather than json.dumps(dict): this runs on every request and the
        # generic encoder costs as much as the rest of the bookkeeping together. Strings a
        # visitor controls go through the JSON string encoder; never the query string or
        # cookies, which carry identities.
        upstream = "null" if outcome.upstream_status is None else outcome.upstream_status
        line = (
            f'{{"time":{time.time():.6f},"event":"request","site":{_json_str(label)},'
            f'"method":{_json_str(request.method)},'
            f'"path":{_json_str(request.raw_path.split("?", 1)[0])},'
            f'"status":{outcome.status},"bytes":{outcome.sent},'
            f'"duration_ms":{duration * 1000:.3f},"upstream_status":{upstream}}}\n'
        )
        with contextlib.suppress(OSError, ValueError):
            self.state.log.write(line)

    def log_event(self, event: str, **fields: object) -> None:
        line = {"time": time.time(), "event": event, **fields}
        with contextlib.suppress(OSError, ValueError):
            self.state.log.write(json.dumps(line, separators=(",", ":")) + "\n")


def make_upstreams(config: Config) -> UpstreamPool:
    """The upstream client for HTTP: pooled keep-alive connections, no total-time limit."""
    p = config.proxy
    return UpstreamPool(
        connect_timeout=p.connect_timeout,
        read_timeout=p.read_timeout,
        pool_size=p.pool_size,
        keepalive_timeout=p.keepalive_timeout,
    )


def site_origin(site: Site) -> Origin:
    return _origins(site.upstream)


@functools.lru_cache(maxsize=1024)
def _origins(upstream: str) -> Origin:
    return Origin.parse(upstream)


def make_session(config: Config) -> aiohttp.ClientSession:
    """The client for WebSocket upgrades: no decompression and no cookie jar (cookies belong
    to visitors)."""
    p = config.proxy
    connector = aiohttp.TCPConnector(
        limit=p.pool_size,
        limit_per_host=p.pool_size_per_host,
        keepalive_timeout=p.keepalive_timeout,
        ttl_dns_cache=10,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=p.connect_timeout,
        sock_connect=p.connect_timeout,
        sock_read=p.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_field_size=p.max_header_size,
        read_bufsize=_CHUNK,
    )


HandlerFactory = Callable[[ProxyState], ProxyHandler]
