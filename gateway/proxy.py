"""The aiohttp glue: one handler that streams a request to its site's upstream and back.

What to send is decided elsewhere (identity in identity_flow.py over the pure modules, header
hygiene in headers.py, the upstream client in upstream.py); this file only moves bytes:
it routes by Host, strips hop-by-hop headers, streams bodies both ways with back-pressure,
turns upstream faults into 502/504, and aborts the client connection when an upstream body is
cut short, so that a truncated page never looks complete.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Iterator
from json.encoder import encode_basestring_ascii as _json_str

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import responses
from .body import DecodedTooLarge, HtmlBody
from .codings import STEP, DecodeError
from .config import Config, Site
from .headers import (
    REQUEST_ID,
    client_address,
    end_to_end,
    forwarded_headers,
    kept_request_id,
    routed_authority,
    upstream_target,
)
from .hosts import Authority
from .identity_flow import IdentityFlow
from .inbound import Arrival
from .links import FRESH_LINK_PATH
from .logs import LineBatch, Timestamps, write_event
from .metrics import HtmlSkip
from .relay import FirstPartyRelay
from .rescue import RESCUE_PATH
from .responses import fault, log_fault, plain_response
from .state import Outcome, ProxyState
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
# HTML decoded for one response between two yields to the event loop: decoding, rewriting and
# re-encoding are synchronous, and a page of many steps (a decompression bomb is thousands)
# must not keep the other requests of every site waiting.
_YIELD_EVERY = STEP


async def _expect_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` ourselves (the low-level server does not): the client
    then sends the body, which is streamed on to the upstream."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


class ProxyHandler:
    """The low-level aiohttp handler (no router: every path of every site is proxied)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.identity = IdentityFlow(state)
        self.relay = FirstPartyRelay(state)
        self._stamp = Timestamps()
        self._access_log = LineBatch(lambda: self.state.log)
        self._request_ids = RequestIds()

    def flush_log(self) -> None:
        """Write the access-log lines still queued (see logs.LineBatch)."""
        self._access_log.flush()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        state = self.state
        config = state.config
        start = time.monotonic()
        request_id = (
            kept_request_id(request.headers, request.remote, config.proxy.trusted_proxies)
            or self._request_ids.new()
        )
        outcome = Outcome(request_id)
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            response = await self.dispatch(request, config, outcome)
            # Responses that were streamed carry it already (see respond and the relay).
            if not response.prepared:
                response.headers[REQUEST_ID] = request_id
            return response
        except Exception:
            # aiohttp answers 500 for what escapes the handler; the log must not say otherwise.
            outcome.status = 500
            raise
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            self.record(request, outcome, start)

    async def dispatch(
        self, request: web.BaseRequest, config: Config, outcome: Outcome
    ) -> web.StreamResponse:
        """Route the request to its site (``outcome.site``) and answer it."""
        if request.method == "CONNECT":
            # A reverse proxy is never a tunnel: RFC 9110 §9.3.6 lets a server refuse it.
            outcome.status = 405
            response = plain_response(405, "405 Method Not Allowed: this is not a forward proxy")
            response.force_close()
            return response
        routed = routed_authority(request.headers.get("Host"), request.raw_path)
        if isinstance(routed, str):
            outcome.status = 400
            response = plain_response(400, f"400 Bad Request: {routed}")
            response.force_close()
            return response
        site = config.site_for(routed.host) if routed is not None else None
        if site is None or routed is None:
            outcome.status = 421
            return plain_response(421, "421 Misdirected Request: this host is not served here")
        outcome.site = site.host
        outcome.mode = site.mode
        return await self.forward(request, site, routed, config, outcome)

    async def forward(
        self,
        request: web.BaseRequest,
        site: Site,
        routed: Authority,
        config: Config,
        outcome: Outcome,
    ) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await relay_websocket(self.state, request, site, routed, outcome)
        state = self.state
        target = upstream_target(request.raw_path)
        identity = self.identity
        active = site.mode == "active"
        arrival = None
        path = target.partition("?")[0]
        if active and path == FRESH_LINK_PATH:
            response = await identity.fresh_link(request, site, target)
            outcome.status = response.status
            return response
        if active and path == RESCUE_PATH:
            response = await identity.rescue_endpoint(request, site, target)
            outcome.status = response.status
            return response
        if active:
            # First-party delivery's paths (analytics.js, its settings, the tracking API) are
            # the gateway's own, answered before identity is read: they carry none, and set
            # none. An observed or off site forwards them, as any path, to its upstream.
            relayed = await self.relay.handle(request, site, routed, target, outcome)
            if relayed is not None:
                return relayed
        if site.mode != "off":
            arrival = await identity.arrival(request, site, target)
            outcome.identity = _IDENTITY[arrival.source]
            outcome.refused_reason = arrival.refused
            if active and arrival.discard:
                response = identity.discard()
                outcome.status = response.status
                return response
            rescue = identity.rescue(request, site, arrival, target) if active else None
            if rescue is not None:
                outcome.status = rescue.status
                return rescue
            counted = identity.count_arrival(request, site, arrival, target)
            if arrival.redirect is not None:
                if active:
                    outcome.status = 302
                    return identity.cleanup_redirect(request, site, arrival, counted=counted)
                arrival = identity.observe_cleanup(request, site, arrival)
            if active:
                # Identity parameters are the gateway's: the upstream gets the target without.
                target = arrival.target
        headers = forwarded_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            trusted_proxies=config.proxy.trusted_proxies,
            site=site,
            routed=routed,
            request_id=outcome.request_id,
        )
        if active:
            identity.limit_codings(site, headers)
        body = None
        length = None
        if request.body_exists:
            await _expect_continue(request)
            body = _request_body(request)
            length = request.content_length
        sent_at = time.monotonic()
        try:
            upstream = await state.upstreams.request(
                site_origin(site), request.method, target, headers.items(), body, length
            )
        except UpstreamError as exc:
            return self.fault(site, outcome, exc)
        waited = time.monotonic() - sent_at
        state.metrics.observe_upstream(site.host, waited)
        outcome.upstream_ms = waited * 1000
        outcome.upstream_status = upstream.status
        try:
            return await self.respond(request, site, arrival, upstream, outcome)
        finally:
            upstream.release()

    async def respond(
        self,
        request: web.BaseRequest,
        site: Site,
        arrival: Arrival | None,
        upstream: UpstreamResponse,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Answer with the upstream's response: its headers edited for identity and its HTML
        rewritten on an active site; unchanged on a site observed (its HTML rewritten on the
        side, the output dropped) or off (``arrival`` None)."""
        headers = end_to_end(upstream.headers)
        headers[REQUEST_ID] = outcome.request_id
        status = upstream.status
        outcome.status = status
        body = observer = None
        if arrival is not None and site.mode == "observe":
            observer, located = self.identity.observe(request, site, arrival, status, headers)
            outcome.decorated += located
        elif arrival is not None:
            location = headers.get("Location") if 300 <= status < 400 else None
            body = await self.identity.outbound(request, site, arrival, status, headers)
            if location is not None and headers.get("Location") != location:
                outcome.decorated += 1
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        length = upstream.content_length
        if no_body:
            response = responses.StreamResponse(
                status=status, reason=upstream.reason, headers=headers
            )
            if length is not None and "Content-Length" in headers:
                # Keep a HEAD's advertised length (aiohttp would otherwise rewrite it), unless
                # the GET's body would be rewritten and so have another length.
                response.content_length = length
            await response.prepare(request)
            await response.write_eof()
            return response
        if length is not None and length <= SMALL_BODY:
            return await self._respond_whole(
                request, site, upstream, headers, body, outcome, observer
            )
        return await self._respond_streamed(
            request, site, upstream, headers, length, body, outcome, observer
        )

    async def _respond_whole(
        self,
        request: web.BaseRequest,
        site: Site,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        body: HtmlBody | None,
        outcome: Outcome,
        observer: HtmlBody | None = None,
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
            return await self._rewrite_whole(request, site, upstream, headers, body, data, outcome)
        response = responses.Response(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        response.body = data
        outcome.sent = len(data)
        if observer is not None:
            # Sent first, observed after: the visitor never waits for the observation.
            await response.prepare(request)
            try:
                await self._send(response, b"", eof=True)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                outcome.status = 499
                return response
            except TimeoutError:
                self._send_timed_out(request, site, outcome)
                return response
            if await self._observe(site, observer, data, outcome):
                self._observe_end(site, observer, outcome)
        return response

    async def _rewrite_whole(
        self,
        request: web.BaseRequest,
        site: Site,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        body: HtmlBody,
        data: bytes,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """A small body, read whole, rewritten step by step.

        The output is held and sent in one write while it stays small. While nothing is sent,
        a body that decodes beyond ``proxy.max_decoded_html`` goes out as the upstream sent it
        (counted and logged as skipped), and a corrupt one is a 502. Output too large to hold
        (a page that expands a lot) streams instead, and from then on the streamed rules apply.
        """
        steps = _steps(body, data)
        held: list[bytes] = []
        size = mark = 0
        try:
            for piece in steps:
                held.append(piece)
                size += len(piece)
                if size > SMALL_BODY:
                    break
                mark = await _pace(body, mark)
            else:
                self._rewrite_done(site, body, outcome)
                response = responses.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers
                )
                response.body = out = b"".join(held)
                outcome.sent = len(out)
                return response
        except DecodedTooLarge:
            self.identity.html_skipped(site, "too_large", body.coding)
            outcome.skipped = "too_large"
            if body.output_coding != body.coding:
                headers["Content-Encoding"] = body.coding
            response = responses.Response(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            response.body = data
            outcome.sent = len(data)
            return response
        except DecodeError as exc:
            self.identity.html_skipped(site, "decode_error", body.coding)
            outcome.skipped = "decode_error"
            return self._abort_before_headers(request, site, outcome, exc)
        stream = responses.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if request.version < (1, 1):
            stream.force_close()
        await stream.prepare(request)
        try:
            await self._send(stream, b"".join(held))
            outcome.sent += size
            held.clear()
            for piece in steps:
                mark = await _pace(body, mark)
                if piece:
                    await self._send(stream, piece)
                    outcome.sent += len(piece)
            self._rewrite_done(site, body, outcome)
            await self._send(stream, b"", eof=True)
        except DecodeError as exc:
            self._html_aborted(request, site, body, outcome, exc)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            outcome.status = 499
        except TimeoutError:
            self._send_timed_out(request, site, outcome)
        return stream

    async def _respond_streamed(
        self,
        request: web.BaseRequest,
        site: Site,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        length: int | None,
        body: HtmlBody | None,
        outcome: Outcome,
        observer: HtmlBody | None = None,
    ) -> web.StreamResponse:
        response = responses.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if length is not None and body is None:
            response.content_length = length
        elif request.version < (1, 1):
            # No chunked encoding for HTTP/1.0: the end of the body is the end of the connection.
            response.force_close()
        await response.prepare(request)
        received = mark = 0
        try:
            while True:
                chunk = await upstream.readany()
                if not chunk:
                    break
                received += len(chunk)
                if body is None:
                    await self._send(response, chunk)
                    outcome.sent += len(chunk)
                    if observer is not None and not await self._observe(
                        site, observer, chunk, outcome
                    ):
                        observer = None
                    continue
                for piece in body.feed(chunk):
                    if piece:
                        await self._send(response, piece)
                        outcome.sent += len(piece)
                    mark = await _pace(body, mark)
            if length is not None and received != length:
                raise UpstreamBodyError(f"upstream sent {received} of {length} bytes")
            if not upstream.is_eof():
                raise UpstreamBodyError("upstream body not complete")
            if body is not None:
                tail = body.close()
                self._rewrite_done(site, body, outcome)
                if tail:
                    await self._send(response, tail)
                    outcome.sent += len(tail)
            if observer is not None:
                self._observe_end(site, observer, outcome)
        except DecodeError as exc:
            # Rewritten output has gone out: neither the upstream's bytes nor the rest of the
            # page can follow it, so the response is cut (beyond the ceiling too).
            assert body is not None
            self._html_aborted(request, site, body, outcome, exc)
            return response
        except UpstreamError as exc:
            self._abort(request, site, outcome, exc)
            return response
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            # The client went away; nothing to send. Do not reuse the upstream connection.
            upstream.close()
            outcome.status = 499
            return response
        except TimeoutError:
            upstream.close()
            self._send_timed_out(request, site, outcome)
            return response
        await self._send(response, b"", eof=True)
        return response

    async def _observe(
        self, site: Site, observer: HtmlBody, chunk: bytes, outcome: Outcome
    ) -> bool:
        """Run a chunk an observed site's visitor has been sent through its rewrite on the
        side, its output dropped (pacing as a rewrite does); False once that has stopped: a
        body corrupt in its coding or decoding beyond the ceiling is counted as it would have
        been skipped, and the rest of it is not looked at. The visitor's bytes are unaffected
        either way."""
        mark = observer.decoded
        try:
            for _ in observer.feed(chunk):
                mark = await _pace(observer, mark)
        except DecodeError as exc:
            self._observer_stopped(site, observer, outcome, exc)
            return False
        return True

    def _observe_end(self, site: Site, observer: HtmlBody, outcome: Outcome) -> None:
        try:
            observer.close()
        except DecodeError as exc:
            self._observer_stopped(site, observer, outcome, exc)
            return
        self._rewrite_done(site, observer, outcome)

    def _observer_stopped(
        self, site: Site, observer: HtmlBody, outcome: Outcome, exc: DecodeError
    ) -> None:
        reason: HtmlSkip = "too_large" if isinstance(exc, DecodedTooLarge) else "decode_error"
        self.identity.html_skipped(site, reason, observer.coding)
        outcome.skipped = reason

    def _rewrite_done(self, site: Site, body: HtmlBody, outcome: Outcome) -> None:
        self.identity.rewrite_done(site, body)
        outcome.decorated += sum(body.targets_hit.values())
        if body.failed:
            outcome.skipped = "rewrite_failed"
        elif body.gave_up is not None:
            outcome.skipped = body.gave_up

    def _send_timed_out(self, request: web.BaseRequest, site: Site, outcome: Outcome) -> None:
        """The visitor stopped reading (report F5): cut it off, so that it cannot hold an
        upstream connection and a pool slot for as long as it likes."""
        self.log_event("client_send_timeout", site=site.host)
        outcome.status = 499
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _send(self, response: web.StreamResponse, data: bytes, eof: bool = False) -> None:
        """Write to the visitor; raises TimeoutError if it takes no bytes for ``send_timeout``
        (a write only waits while the visitor's socket buffer is full)."""
        async with asyncio.timeout(self.state.config.proxy.send_timeout):
            if eof:
                await response.write_eof()
            else:
                await response.write(data)

    def _html_aborted(
        self,
        request: web.BaseRequest,
        site: Site,
        body: HtmlBody,
        outcome: Outcome,
        exc: DecodeError,
    ) -> None:
        reason: HtmlSkip = "too_large" if isinstance(exc, DecodedTooLarge) else "decode_error"
        self.identity.html_skipped(site, reason, body.coding)
        outcome.skipped = reason
        self._abort(request, site, outcome, exc)

    def _abort_before_headers(
        self, request: web.BaseRequest, site: Site, outcome: Outcome, exc: BaseException
    ) -> web.StreamResponse:
        # Nothing was sent yet, but the status line would promise a body we do not have: the
        # fault's own status (a stall is a 504, anything else a 502) tells the truth.
        return self.fault(site, outcome, exc, kind=getattr(exc, "kind", "aborted_body"))

    def _abort(
        self, request: web.BaseRequest, site: Site, outcome: Outcome, exc: BaseException
    ) -> None:
        """Cut the client connection so a truncated body never looks complete."""
        self.state.metrics.upstream_errors.labels(site.host, "aborted_body").inc()
        log_fault(self.state, "upstream_body_aborted", site, "aborted_body", error=str(exc)[:200])
        outcome.status = outcome.status or 502
        transport = request.transport
        if transport is not None:
            transport.abort()

    def fault(
        self, site: Site, outcome: Outcome, exc: BaseException, kind: str | None = None
    ) -> web.Response:
        return fault(self.state, site, outcome, exc, kind)

    def record(self, request: web.BaseRequest, outcome: Outcome, start: float) -> None:
        duration = time.monotonic() - start
        label = outcome.site
        self.state.metrics.count_request(label, request.method, outcome.status, duration)
        # Written by hand rather than json.dumps(dict): this runs on every request and the
        # generic encoder costs as much as the rest of the bookkeeping together. Strings a
        # visitor controls go through the JSON string encoder; never the query string or
        # cookies, which carry identities. The request id is of a form that needs no escaping
        # (headers.kept_request_id), and identity is one of the gateway's own words.
        client = client_address(
            request.headers, request.remote, self.state.config.proxy.trusted_proxies
        )
        upstream = "null" if outcome.upstream_status is None else outcome.upstream_status
        waited = "null" if outcome.upstream_ms is None else f"{outcome.upstream_ms:.3f}"
        identity = "null" if outcome.identity is None else f'"{outcome.identity}"'
        extra = ""
        if outcome.refused_reason is not None:
            extra += f',"refused_reason":{_json_str(outcome.refused_reason)}'
        if outcome.skipped is not None:
            extra += f',"skipped":{_json_str(outcome.skipped)}'
        if outcome.mode != "active":
            # Identity on this site was observed (what the line says was not done) or off.
            extra += f',"mode":"{outcome.mode}"'
        # As Caddy does: a request the gateway or the upstream failed is an error.
        level = "error" if outcome.status >= 500 else "info"
        line = (
            f'{{"time":"{self._stamp(time.time())}","level":"{level}","event":"request",'
            f'"request_id":"{outcome.request_id}",'
            f'"client_ip":{"null" if client is None else _json_str(client)},'
            f'"site":{_json_str(label)},"method":{_json_str(request.method)},'
            f'"path":{_json_str(_log_path(request))},'
            f'"status":{outcome.status},"bytes":{outcome.sent},'
            f'"duration_ms":{duration * 1000:.3f},"upstream_ms":{waited},'
            f'"upstream_status":{upstream},"identity":{identity},'
            f'"decorated":{outcome.decorated}{extra}}}\n'
        )
        self._access_log.add(line)

    def log_event(self, event: str, **fields: object) -> None:
        write_event(self.state.log, event, **fields)


# The log's words for inbound.Arrival.source.
_IDENTITY = {
    "url": "restored",
    "app": "restored_app",
    "cookie": "cookie",
    "rescue": "restored_rescue",
    "shadow": "restored_shadow",
    "minted": "minted",
    "rejected": "refused",
    "none": "none",
}


class RequestIds:
    """Request ids for requests that came without a trusted one: 128 random bits in hex each,
    unique across workers and restarts with no coordination (a counter would be cheaper but
    would tell every visitor how busy the gateway is). The bits come from the OS's random
    source as before, 4 KiB at a time: one system call for 256 requests, not one each."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at + 16 > len(self._pool):
            self._pool = os.urandom(4096)
            at = 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


def _log_path(request: web.BaseRequest) -> str:
    """The path to log: never the query (identities) nor an absolute-form target's userinfo
    (credentials); an authority-form target (CONNECT) is not logged at all."""
    raw = request.raw_path
    if not raw.startswith("/"):
        if request.method == "CONNECT":
            return "-"
        raw = upstream_target(raw)
    return raw.split("?", 1)[0]


def _steps(body: HtmlBody, data: bytes) -> Iterator[bytes]:
    """A whole body through the pipeline, one step per item."""
    yield from body.feed(data)
    yield body.close()


async def _pace(body: HtmlBody, mark: int) -> int:
    """Yield to the event loop if a step's worth of HTML was decoded since ``mark`` (the
    value returned last time); small pages never wait for it."""
    if body.decoded - mark < _YIELD_EVERY:
        return mark
    await asyncio.sleep(0)
    return body.decoded


def make_upstreams(config: Config) -> UpstreamPool:
    """The upstream client for HTTP: pooled keep-alive connections, no total-time limit."""
    p = config.proxy
    return UpstreamPool(
        connect_timeout=p.connect_timeout,
        read_timeout=p.read_timeout,
        pool_size=p.pool_size,
        keepalive_timeout=p.keepalive_timeout,
        per_origin=p.per_host_limit,
        pool_wait_timeout=p.pool_wait_timeout,
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
        limit_per_host=p.per_host_limit,
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
