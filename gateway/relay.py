"""The aiohttp glue of first-party delivery: what firstparty.py routes, fetched and answered.

Assets (the library, bundles, destination scripts, settings) come from ``analytics.cdn_url``
through the process's :class:`~gateway.asset_cache.AssetCache`; tracking API requests go to
``analytics.api_url`` as they arrive. Both use a pool of the gateway's own upstream client
(upstream.py) of their own: the API relay runs once per event a visitor sends, the hot path
the lean client was written for (bench/proxy.py), and a pool apart from the sites' means a
slow or unreachable Segment never takes a connection slot from a legacy site, nor the other
way round.

Failures are fast: a fetch gets :data:`RELAY_TIMEOUT` seconds in all, then the browser gets a
502 or 504 (analytics.js retries events on its own; a page's library load fails and the next
page tries again). The page itself never waits: the bootstrap loads the library
asynchronously.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from . import firstparty
from .config import Site
from .firstparty import (
    MAX_API_BODY,
    MAX_ASSET_BYTES,
    MAX_METRICS_BODY,
    POLICIES,
    RELAY_TIMEOUT,
    Api,
    Asset,
    Fetched,
    Refused,
    api_headers,
    api_refusal,
    asset_headers,
    authority,
    prefix_for,
    rewrite_settings,
    route,
    upstream_url,
)
from .headers import client_address, visitor_scheme
from .hosts import Authority
from .logs import write_event
from .outbound import accepts_coding
from .responses import Response
from .state import Outcome, ProxyState
from .upstream import Origin, UpstreamError, UpstreamResponse

# Segment's API answers with a few bytes of JSON; more is not read.
_MAX_API_ANSWER = 64 * 1024


class AssetMissing(Exception):
    """The CDN answered, but not with the resource (its status is passed on)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the CDN answered {status}")
        self.status = status


class FirstPartyRelay:
    """Answers the requests under a site's first-party prefix; None for every other."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def handle(
        self,
        request: web.BaseRequest,
        site: Site,
        routed: Authority,
        target: str,
        outcome: Outcome,
    ) -> web.StreamResponse | None:
        analytics = self.state.config.analytics
        prefix = prefix_for(analytics, site)
        if prefix is None or analytics.write_key is None:
            return None
        found = route(request.method, target.partition("?")[0], prefix, analytics.write_key)
        if found is None:
            return None
        if not firstparty.delivery_allowed(request.headers, site):
            found = Refused(403, "403 Forbidden: first-party delivery is off for this request")
        if isinstance(found, Refused):
            response = _refused(found)
        elif isinstance(found, Api):
            response = await self.api(request, site, found, outcome)
        else:
            response = await self.asset(request, site, routed, prefix, found, outcome)
        outcome.status = response.status
        outcome.sent = response.content_length or 0
        return response

    async def asset(
        self,
        request: web.BaseRequest,
        site: Site,
        routed: Authority,
        prefix: str,
        asset: Asset,
        outcome: Outcome,
    ) -> web.Response:
        cdn_url = self.state.config.analytics.cdn_url
        url = upstream_url(cdn_url, asset.upstream_path)
        policy = POLICIES[asset.kind]
        try:
            fetched = await self.state.assets.get(url, policy.ttl, lambda: self._fetch(url))
        except AssetMissing as exc:
            outcome.upstream_status = exc.status
            if exc.status == 404:
                return _refused(Refused(404, f"404 Not Found: the CDN has no such {asset.kind}"))
            text = f"502 Bad Gateway: the CDN answered {exc.status} for the {asset.kind}"
            return _refused(Refused(502, text))
        except (UpstreamError, TimeoutError) as exc:
            return self._failed(site, asset.kind, exc)
        outcome.upstream_status = 200
        if asset.kind == "settings":
            config = self.state.config
            scheme = visitor_scheme(
                request.headers, request.remote, request.scheme, config.proxy.trusted_proxies
            )
            try:
                body = rewrite_settings(
                    fetched.body, scheme=scheme, host=str(routed), prefix=prefix, cdn_url=cdn_url
                )
            except ValueError as exc:
                return self._failed(site, asset.kind, exc)
            fetched = Fetched(body, fetched.content_type, None, None)
        return _asset_response(request, fetched, policy.cache_control)

    async def _fetch(self, url: str) -> Fetched:
        async with asyncio.timeout(RELAY_TIMEOUT):
            upstream = await self.state.relay_upstreams.request(
                Origin.parse(url), "GET", _target(url), asset_headers(authority(url)), None, None
            )
            try:
                if upstream.status != 200:
                    raise AssetMissing(upstream.status)
                body = await _read_limited(upstream, MAX_ASSET_BYTES)
            finally:
                upstream.release()
        return Fetched.of(
            body,
            upstream.headers.get("Content-Type", "application/javascript"),
            upstream.headers.get("Content-Encoding"),
        )

    async def api(
        self, request: web.BaseRequest, site: Site, api: Api, outcome: Outcome
    ) -> web.Response:
        config = self.state.config
        analytics = config.analytics
        assert analytics.write_key is not None
        limit = MAX_METRICS_BODY if api.endpoint == "m" else MAX_API_BODY
        length = request.content_length
        if length is not None and length > limit:
            response = _refused(Refused(413, f"413 Content Too Large: at most {limit} bytes"))
            response.force_close()  # the body was not read
            return response
        body = await _read_body(request, limit)
        if body is None:
            response = _refused(Refused(413, f"413 Content Too Large: at most {limit} bytes"))
            response.force_close()
            return response
        refusal = api_refusal(
            api.endpoint, body, request.headers.get("Authorization"), analytics.write_key
        )
        if refusal is not None:
            return _refused(refusal)
        url = upstream_url(analytics.api_url, api.upstream_path)
        visitor = client_address(request.headers, request.remote, config.proxy.trusted_proxies)
        headers = api_headers(request.headers, host=authority(url), visitor=visitor)
        try:
            async with asyncio.timeout(RELAY_TIMEOUT):
                upstream = await self.state.relay_upstreams.request(
                    Origin.parse(url), "POST", _target(url), headers, _one(body), len(body)
                )
                try:
                    answer = await _read_limited(upstream, _MAX_API_ANSWER)
                finally:
                    upstream.release()
        except (UpstreamError, TimeoutError) as exc:
            return self._failed(site, "api", exc)
        outcome.upstream_status = upstream.status
        response = Response(status=upstream.status, body=answer)
        for name in ("Content-Type", "Retry-After"):
            value = upstream.headers.get(name)
            if value is not None:
                response.headers[name] = value
        response.headers["Cache-Control"] = "no-store"
        return response

    def _failed(self, site: Site, what: str, exc: BaseException) -> web.Response:
        """A fast answer for a CDN or API that failed: 504 for a timeout, else 502; logged as
        the relay's, not the site's (its upstream is fine)."""
        timeout = isinstance(exc, TimeoutError) or getattr(exc, "kind", "") == "timeout"
        status = 504 if timeout else 502
        write_event(
            self.state.log,
            "firstparty_error",
            site=site.host,
            resource=what,
            error=repr(exc)[:200],
        )
        text = "504 Gateway Timeout" if timeout else "502 Bad Gateway"
        return _refused(Refused(status, f"{text}: Segment's {what} could not be reached"))


def _target(url: str) -> str:
    """The request-target of a configured upstream URL (its path; they have no query)."""
    return urlsplit(url).path or "/"


def _refused(refused: Refused) -> web.Response:
    response = Response(status=refused.status, text=refused.text + "\n")
    response.headers["Cache-Control"] = "no-store"
    if refused.allow is not None:
        response.headers["Allow"] = refused.allow
    return response


def _asset_response(request: web.BaseRequest, fetched: Fetched, cache_control: str) -> web.Response:
    headers = {
        "Content-Type": fetched.content_type,
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
    }
    body = fetched.body
    if fetched.content_encoding is not None:
        headers["Content-Encoding"] = fetched.content_encoding
    elif fetched.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
        if accepts_coding(request.headers.get("Accept-Encoding"), "gzip"):
            headers["Content-Encoding"] = "gzip"
            body = fetched.gzipped
    # For HEAD, aiohttp sends the head only, with this body's Content-Length.
    response = Response(status=200, headers=headers)
    response.body = body
    return response


async def _read_limited(upstream: UpstreamResponse, limit: int) -> bytes:
    """The whole body, or UpstreamError when it is longer than ``limit``."""
    if upstream.content_length is not None and upstream.content_length > limit:
        upstream.close()
        raise UpstreamError(f"the answer is larger than {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while chunk := await upstream.readany():
        size += len(chunk)
        if size > limit:
            upstream.close()
            raise UpstreamError(f"the answer is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The visitor's body, or None when it is longer than ``limit`` (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body
