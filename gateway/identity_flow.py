"""The identity side of one exchange, between the transport (proxy.py) and the pure pieces.

On the way in: the visitor's identity from the URL (checked, token exchanged in the store) and
the cookies, the clean-up redirect, and the freshness endpoint. On the way out: decorated
redirects, identity cookies, cache safety and the HTML body pipeline (decoding, rewriting with
the link policy and the bootstrap, re-encoding). Metrics are counted here; bytes are moved by
proxy.py.

A site in ``observe`` mode goes through the same steps, counted in the observed twins of the
metrics (``Metrics.observed``), and nothing is done: no redirect, no cookie, no header edit, no
token minted or spent, and its HTML runs through the rewriter on the side (``observe``), its
output dropped. A site ``off`` never comes here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from . import firstparty, responses
from .body import HtmlBody
from .bootstrap import RefreshPlan, render_bootstrap
from .config import Config, Site
from .consent import effective as effective_consent
from .consent import refusal as consent_refusal
from .crossings import cross_domain_arrival, marker_cookie
from .headers import visitor_scheme
from .hosts import hostname
from .hosts import normalize as normalize_host
from .html import HtmlRewriter
from .identity import cookie_domain, decorate_url, expired_cookie, identity_cookies, read_cookie
from .inbound import (
    Arrival,
    cookies_may_be_withheld,
    read_url_identity,
    settle,
    split_target,
)
from .links import FRESH_LINK_PATH, LinkDecorator, TargetParams, decorate_location, protected_target
from .logs import write_event
from .metrics import HtmlSkip, IdentityCounters
from .outbound import (
    OutboundPlan,
    content_coding,
    decodable_accept_encoding,
    make_private,
    prepare_for_rewrite,
)
from .outbound import plan as outbound_plan
from .params import AID_PARAM, IDENTITY_PARAMS, RESCUE_PARAM, TOKEN_PARAM, UID_PARAM
from .rescue import (
    CREDENTIAL_TTL,
    GUARD_COOKIE,
    credential,
    eligible,
    guard_cookie,
    is_top_level_navigation,
    rescue_back,
    rescue_location,
    sibling_origin,
)
from .responses import plain_response
from .speculative import Speculative, speculative
from .state import ProxyState
from .store import StoreError
from .strategies import TokenRecord, new_token, sign_params, token_refusal

# What an observed page's rewriter injects, and its links carry for a token target: stand-ins.
# The output is dropped, so rendering the bootstrap or minting a token would be work for nothing.
_STAND_IN_SCRIPT = b"<script></script>"
_STAND_IN_TOKEN = "observed"


class IdentityFlow:
    """Identity for the requests of one gateway process (its config may be reloaded)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def counters(self, site: Site) -> IdentityCounters:
        """The metrics the site's identity work is counted in: what was done, or (observe
        mode) what would have been."""
        return self.state.metrics.counters(site.mode)

    def count_arrival(
        self, request: web.BaseRequest, site: Site, arrival: Arrival, target: str
    ) -> bool:
        """Count a navigation from another site of the fleet, with or without identity (the
        fragmentation measure, crossings.py); True if it was counted. A prefetch, a HEAD or a
        preview bot is no arrival: the visitor's own request may follow."""
        if arrival.speculative is not None:
            return False
        headers = request.headers
        found = cross_domain_arrival(
            config=self.state.config,
            own_host=normalize_host(request.host),
            target=target,
            referer=headers.get("Referer"),
            sec_fetch_dest=headers.get("Sec-Fetch-Dest"),
            accept=headers.get("Accept"),
            cookie_headers=headers.getall("Cookie", ()),
            carried=arrival.source in ("url", "app", "rescue"),
        )
        if found is None:
            return False
        referrer, identity = found
        self.counters(site).cross_domain_arrivals.labels(site.host, referrer, identity).inc()
        return True

    async def arrival(self, request: web.BaseRequest, site: Site, target: str) -> Arrival:
        """The request's identity: consent first, then URL parameters checked (token
        exchanged), then cookies.

        An observed site exchanges a token without spending it (``single_use`` or not): it
        changes nothing, in the store either."""
        state = self.state
        counters = self.counters(site)
        config = state.config
        index = state.index
        path, cleaned, params, had_params = split_target(target)
        cookie_headers = request.headers.getall("Cookie", ())
        no_consent = consent_refusal(
            effective_consent(config.consent, site.consent),
            sec_gpc=request.headers.get("Sec-GPC"),
            cookie_headers=cookie_headers,
        )
        if no_consent is not None:
            # Nothing about the visitor's identity is read, exchanged or written.
            state.metrics.consent_refused.labels(site.host, no_consent).inc()
            params = {}
        ahead = self.speculative(request, site)
        if ahead is not None:
            # Not the visitor arriving: no token is consumed, nothing minted or written.
            params = {}
        host = normalize_host(request.host)
        user_agent = request.headers.get("User-Agent")
        url = read_url_identity(
            params,
            site=site,
            rules=index.rules,
            host=host,
            user_agent=user_agent,
            now=time.time(),
            keys=index.signing_keys,
            bind_user_agent=config.signing.bind_user_agent,
            max_lifetime=config.signing.lifetime,
        )
        if url.token is not None:
            try:
                record = await state.store.take(
                    url.token, single_use=config.tokens.single_use and site.mode == "active"
                )
            except StoreError:
                state.metrics.store_errors.labels("take").inc()
                url = url.exchanged(None, index.rules, "store_unavailable")
            else:
                # A token taken at the wrong site or in the wrong browser is spent all the same
                # (single_use): one that turns up there has leaked, and is better dead.
                refusal = None
                if record is not None:
                    refusal = token_refusal(
                        record,
                        host=host,
                        user_agent=user_agent,
                        bind_user_agent=config.signing.bind_user_agent,
                    )
                if refusal is not None:
                    url = url.exchanged(None, index.rules, refusal)
                else:
                    url = url.exchanged(record, index.rules, "unknown_or_expired")
        if url.refused is not None and url.form is not None:
            counters.identity_refused.labels(url.form, url.refused).inc()
        arrival = settle(
            method=request.method,
            target=target,
            path=path,
            cleaned_query=cleaned,
            had_params=had_params,
            url=url,
            cookie_headers=cookie_headers,
            site=site,
            rules=index.rules,
            mint=config.identity.mint,
            cookies_withheld=cookies_may_be_withheld(
                request.method, request.headers.get("Sec-Fetch-Site")
            ),
            shadow_cookie=config.identity.shadow_cookie,
            no_consent=no_consent,
            speculative=ahead,
            rescue_guard=read_cookie(cookie_headers, GUARD_COOKIE) is not None,
        )
        if arrival.source != "none":
            counters.id_source.labels(site.host, arrival.source).inc()
        if url.rescued:
            outcome = "rescued" if arrival.source == "rescue" else "empty"
            state.metrics.rescues.labels(site.host, outcome).inc()
        # Server-side hand-off event (gateway/delivery.py): queued when the id came in the URL,
        # never awaited. Not from an observed site: it would change the analytics data.
        if site.mode == "active":
            state.events.handoff(request, arrival, url, config)
        return arrival

    def speculative(self, request: web.BaseRequest, site: Site) -> Speculative | None:
        """Whether the request fetches ahead of (or instead of) a visit; counted by kind."""
        headers = request.headers
        kind = speculative(
            request.method,
            sec_purpose=headers.get("Sec-Purpose"),
            purpose=headers.get("Purpose"),
            x_purpose=headers.get("X-Purpose"),
            x_moz=headers.get("X-moz"),
            user_agent=headers.get("User-Agent"),
        )
        if kind is not None:
            self.state.metrics.speculative_requests.labels(site.host, kind).inc()
        return kind

    def discard(self) -> web.Response:
        """The answer to a browser's prefetch of a URL that carries identity: an error the
        browser does not keep, so that the visitor's click comes here (gateway/speculative.py).
        """
        response = plain_response(
            503, "503 Service Unavailable: a link that carries identity is not prefetched"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def fresh_link(self, request: web.BaseRequest, site: Site, target: str) -> web.Response:
        """The freshness endpoint: mint a token or signature now and redirect to the target.

        Pages link token and signed targets with credentials minted when the page was served;
        a click after they expired is sent here by the bootstrap. It only ever redirects to a
        configured protected cross-domain (never the gateway's own host): anything else is a
        400, so it cannot serve as an open redirect.
        """
        state = self.state
        index = state.index
        own_host = normalize_host(request.host)
        to = parse_qs(target.partition("?")[2]).get("to", [""])[0]
        pattern = protected_target(to, own_host, index.protected_targets)
        if request.method not in ("GET", "HEAD") or pattern is None:
            response = plain_response(400, "400 Bad Request: not a link to a configured domain")
            response.headers["Cache-Control"] = "no-store"
            return response
        ahead = self.speculative(request, site)
        if ahead == "prefetch":
            # The browser would keep the credential's redirect and show it for the click.
            return self.discard()
        if ahead is not None:
            # A link checker or a preview bot follows the link, without a credential.
            return responses.redirect(to)
        arrival = await self.arrival(request, site, target.partition("?")[0])
        location = to
        if arrival.aid is not None and not arrival.minted:
            token_for = (pattern,) if index.strategies[pattern] == "token" else ()
            params = await self.target_params(request, arrival, token_for=token_for)
            decorated = LinkDecorator(
                own_host, to, index.protected_targets, params, replace=IDENTITY_PARAMS
            ).decorate(to, None)
            location = decorated or to
        return responses.redirect(location)

    def rescue(
        self, request: web.BaseRequest, site: Site, arrival: Arrival, target: str
    ) -> web.Response | None:
        """The first leg of a rescue (gateway/rescue.py): a ``302`` to the sibling the visitor
        came from, for an undecorated arrival that qualifies; None for every other request."""
        if not site.rescue:
            return None
        headers = request.headers
        config = self.state.config
        sibling = sibling_origin(headers.get("Referer"), normalize_host(request.host), config)
        go = eligible(
            site=site,
            method=request.method,
            top_level=is_top_level_navigation(headers.get("Sec-Fetch-Dest"), headers.get("Accept")),
            had_params=split_target(target)[3],
            has_id=arrival.aid is not None and not arrival.minted,
            guard=read_cookie(headers.getall("Cookie", ()), GUARD_COOKIE) is not None,
            sibling=sibling,
            ahead=arrival.speculative is not None,
            consent=arrival.no_consent is None,
        )
        if not go or sibling is None:
            return None
        secure = _scheme(request, config) == "https"
        back = f"{_scheme(request, config)}://{request.host}{target}"
        response = responses.redirect(rescue_location(sibling, back))
        response.headers.add("Set-Cookie", guard_cookie(secure=secure))
        self.state.metrics.rescues.labels(site.host, "sent").inc()
        return response

    async def rescue_endpoint(
        self, request: web.BaseRequest, site: Site, target: str
    ) -> web.Response:
        """The sibling's side of a rescue: send the visitor back to ``back`` with a credential
        for their id, by the returning site's ``accept``, and the marker of the way back.

        ``back`` must be a URL of a configured site with ``rescue`` on, other than this one,
        and not one of the gateway's own paths: anything else is a 400, so the endpoint is no
        open redirect and a rescue is never rescued."""
        state = self.state
        config = state.config
        own_host = normalize_host(request.host)
        back = parse_qs(target.partition("?")[2]).get("back", [""])[0]
        returning = rescue_back(back, own_host, config)
        if request.method != "GET" or returning is None:
            state.metrics.rescues.labels(site.host, "refused").inc()
            response = plain_response(
                400, "400 Bad Request: not a way back to a site of this gateway with rescue on"
            )
            response.headers["Cache-Control"] = "no-store"
            return response
        if self.speculative(request, site) is not None:
            return self.discard()
        arrival = await self.arrival(request, site, target.partition("?")[0])
        params: list[tuple[str, str]] = []
        if arrival.aid is not None and not arrival.minted:
            params = await self.rescue_params(request, arrival, back, returning)
        state.metrics.rescues.labels(site.host, "answered" if params else "unknown").inc()
        location = decorate_url(back, [*params, (RESCUE_PARAM, "1")], IDENTITY_PARAMS)
        return responses.redirect(location)

    async def rescue_params(
        self, request: web.BaseRequest, arrival: Arrival, back: str, returning: Site
    ) -> list[tuple[str, str]]:
        """The credential for the returning site, short-lived (rescue.CREDENTIAL_TTL); none if
        the store or the keys cannot make the one it accepts."""
        assert arrival.aid is not None
        config = self.state.config
        host = hostname(urlsplit(back).hostname or "")
        keys = self.state.index.signing_keys
        form = credential(returning.accept, can_sign=keys is not None)
        if host is None or form is None:
            return []
        if form == "token":
            token = await self.mint_token(request, arrival, (host,), ttl=CREDENTIAL_TTL)
            return [] if token is None else [(TOKEN_PARAM, token)]
        if form == "signed":
            assert keys is not None
            bind = config.signing.bind_user_agent
            return sign_params(
                aid=arrival.aid,
                uid=arrival.uid,
                target_host=host,
                expires=int(time.time()) + CREDENTIAL_TTL,
                keys=keys,
                user_agent=request.headers.get("User-Agent") if bind else None,
            )
        return [(AID_PARAM, arrival.aid)] + ([(UID_PARAM, arrival.uid)] if arrival.uid else [])

    async def mint_token(
        self,
        request: web.BaseRequest,
        arrival: Arrival,
        targets: Sequence[str],
        ttl: int | None = None,
    ) -> str | None:
        """One token for this page view (one store round trip), or None if the store failed.

        It is bound to the token target patterns the response may link (only sites matching
        one of them exchange it) and, with ``signing.bind_user_agent``, to this browser. It
        lives ``tokens.ttl_seconds``, or ``ttl`` when shorter."""
        state = self.state
        assert arrival.aid is not None
        token = new_token()
        bind = state.config.signing.bind_user_agent
        record = TokenRecord.bound(
            anonymous_id=arrival.aid,
            user_id=arrival.uid,
            issued_at=time.time(),
            source_host=normalize_host(request.host),
            targets=targets,
            user_agent=request.headers.get("User-Agent", "") if bind else None,
        )
        try:
            lifetime = state.config.tokens.ttl
            await state.store.put(token, record, lifetime if ttl is None else min(ttl, lifetime))
        except StoreError:
            state.metrics.store_errors.labels("put").inc()
            return None
        return token

    async def target_params(
        self, request: web.BaseRequest, arrival: Arrival, *, token_for: Sequence[str]
    ) -> TargetParams:
        """The link parameters for this response; ``token_for``: the token target patterns it
        may link (a token costs a store write, so one is minted, bound to them, only if there
        are any)."""
        token = await self.mint_token(request, arrival, token_for) if token_for else None
        return self._params(request, arrival, token)

    def _params(
        self, request: web.BaseRequest, arrival: Arrival, token: str | None
    ) -> TargetParams:
        config = self.state.config
        index = self.state.index
        assert arrival.aid is not None
        bind = config.signing.bind_user_agent
        return TargetParams(
            config.cross_domains,
            aid=arrival.aid,
            uid=arrival.uid,
            token=token,
            keys=index.signing_keys,
            expires=int(time.time()) + config.signing.lifetime,
            user_agent=request.headers.get("User-Agent") if bind else None,
        )

    def cleanup_redirect(
        self, request: web.BaseRequest, site: Site, arrival: Arrival, *, counted: bool = False
    ) -> web.Response:
        """302 to the same URL without identity parameters, keeping the id in a cookie.

        ``counted``: the request was counted as a cross-domain arrival, so the redirect marks
        its second leg, which is not to be counted again (crossings.py)."""
        assert arrival.redirect is not None
        response = responses.redirect(arrival.redirect)
        headers = response.headers
        cookies = self.cookies(request, site, arrival.write_aid, arrival.write_uid)
        self._count_cleanup(site, cookies)
        if arrival.expire_shadow:
            cookies.append(self.expired_copy(request, site))
        for cookie in cookies:
            headers.add("Set-Cookie", cookie)
        if counted:
            secure = _scheme(request, self.state.config) == "https"
            headers.add("Set-Cookie", marker_cookie(arrival.redirect, secure=secure))
        return response

    def observe_cleanup(self, request: web.BaseRequest, site: Site, arrival: Arrival) -> Arrival:
        """Count the clean-up redirect an observed site would have answered (the request goes
        to the upstream as it came), and return the arrival to observe the upstream's answer
        with: the redirect's second leg, whose cookie would carry the ids, so that the
        cookies are counted once, with the redirect, as on an active site. (That leg's
        arrival, from the cookie, is not there to be counted.)"""
        self._count_cleanup(site, self.cookies(request, site, arrival.write_aid, arrival.write_uid))
        return dataclasses.replace(arrival, redirect=None, write_aid=None, write_uid=None)

    def _count_cleanup(self, site: Site, cookies: Sequence[str]) -> None:
        actions = self.counters(site).actions
        actions.labels(site.host, "cleanup_redirect").inc()
        if cookies:
            actions.labels(site.host, "set_cookie").inc()

    def cookies(
        self, request: web.BaseRequest, site: Site, aid: str | None, uid: str | None
    ) -> list[str]:
        """The identity cookies to set, with the server-only copy of ``aid``."""
        if aid is None and uid is None:
            return []
        config = self.state.config
        return identity_cookies(
            aid,
            uid,
            domain=cookie_domain(normalize_host(request.host), site.cookie_domain),
            max_age=config.identity.cookie_max_age,
            secure=_scheme(request, config) == "https",
            now=time.time(),
            shadow=config.identity.shadow_cookie,
        )

    def expired_copy(self, request: web.BaseRequest, site: Site) -> str:
        """The removal of the server-only copy of the id (a visitor who withdrew consent)."""
        config = self.state.config
        return expired_cookie(
            config.identity.shadow_cookie,
            domain=cookie_domain(normalize_host(request.host), site.cookie_domain),
            secure=_scheme(request, config) == "https",
        )

    def page_url(self, request: web.BaseRequest, arrival: Arrival) -> str:
        scheme = _scheme(request, self.state.config)
        return f"{scheme}://{request.host}{arrival.target}"

    def _plan(
        self,
        request: web.BaseRequest,
        site: Site,
        arrival: Arrival,
        status: int,
        headers: CIMultiDict[str],
    ) -> tuple[OutboundPlan, Callable[[], str]]:
        """What identity does to this response (outbound.plan), and the page's URL."""
        config = self.state.config
        # Made only when a link or redirect needs it, and then once (a closure over a list
        # rather than functools.cache, whose wrapper costs more than most requests need).
        made: list[str] = []

        def page_url() -> str:
            if not made:
                made.append(self.page_url(request, arrival))
            return made[0]

        decided = outbound_plan(
            method=request.method,
            status=status,
            headers=headers,
            accept_encoding=request.headers.get("Accept-Encoding"),
            arrival=arrival,
            own_host=normalize_host(request.host),
            page_url=page_url,
            targets=self.state.index.targets,
            mint=config.identity.mint,
            bootstrap=bool(config.analytics.write_key and site.bootstrap),
        )
        return decided, page_url

    async def outbound(
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
        index = state.index
        counters = self.counters(site)
        own_host = normalize_host(request.host)
        decided, page_url = self._plan(request, site, arrival, status, headers)
        personal = False
        hit = decided.redirect_target
        if hit is not None:
            # A token is minted only for a redirect that needs one.
            token_for = (hit,) if index.strategies[hit] == "token" else ()
            params = await self.target_params(request, arrival, token_for=token_for)
            new = decorate_location(
                headers["Location"],
                page_url(),
                own_host=own_host,
                targets=index.targets,
                params=params,
                replace=IDENTITY_PARAMS,
            )
            if new is not None:
                headers["Location"] = new
                personal = True
                counters.links_decorated.labels(site.host, "redirect").inc()
        cookies = self.cookies(request, site, decided.cookie_aid, decided.cookie_uid)
        if arrival.expire_shadow:
            headers.add("Set-Cookie", self.expired_copy(request, site))
            personal = True
        for cookie in cookies:
            headers.add("Set-Cookie", cookie)
            personal = True
        if cookies:
            counters.actions.labels(site.host, "set_cookie").inc()
        body = None
        rewrite = decided.rewrite
        if rewrite is not None:
            inject = None
            if rewrite.bootstrap:
                assert config.analytics.write_key is not None
                inject = render_bootstrap(
                    write_key=config.analytics.write_key,
                    cdn_url=config.analytics.cdn_url,
                    anonymous_id=arrival.aid,
                    user_id=None if rewrite.idless else arrival.uid,
                    targets=index.query_targets,
                    own_host=own_host,
                    nonce=rewrite.nonce,
                    refresh=self.refresh_plan(),
                    first_party=self.first_party(request, site),
                    consent=rewrite.consent,
                )
            policy = None
            if rewrite.links:
                # The body streams, so whether it links a token target is not known yet.
                params = await self.target_params(
                    request, arrival, token_for=index.token_targets if rewrite.build_body else ()
                )
                policy = LinkDecorator(
                    own_host, page_url(), index.targets, params, replace=IDENTITY_PARAMS
                )
            if rewrite.build_body:
                body = HtmlBody(
                    HtmlRewriter(policy, inject=inject, charset=rewrite.charset),
                    rewrite.coding,
                    self.rewrite_failed(site),
                    policy,
                    output_coding=rewrite.output_coding,
                    max_decoded=config.proxy.max_decoded_html,
                )
            prepare_for_rewrite(rewrite, headers)
            personal = True
        elif decided.skipped is not None:
            self.html_skipped(site, decided.skipped, content_coding(headers))
        if personal:
            make_private(headers)
        return body

    def observe(
        self,
        request: web.BaseRequest,
        site: Site,
        arrival: Arrival,
        status: int,
        headers: CIMultiDict[str],
    ) -> tuple[HtmlBody | None, bool]:
        """What ``outbound`` would do to this response of an observed site, counted and not
        done: the headers are left as they are and no token is minted. Returns the body
        pipeline to run on a copy of the HTML, if it would be rewritten (its output is to be
        dropped: it writes no bytes, only counts), and whether the redirect's Location would
        have been decorated.

        Token links are counted as a store that answers would have them decorated (no store
        write is made to find out); the bootstrap is a stand-in of the same effect."""
        config = self.state.config
        index = self.state.index
        counters = self.counters(site)
        own_host = normalize_host(request.host)
        decided, page_url = self._plan(request, site, arrival, status, headers)
        located = False
        if decided.redirect_target is not None:
            located = (
                decorate_location(
                    headers["Location"],
                    page_url(),
                    own_host=own_host,
                    targets=index.targets,
                    params=self._observed_params(request, arrival),
                    replace=IDENTITY_PARAMS,
                )
                is not None
            )
            if located:
                counters.links_decorated.labels(site.host, "redirect").inc()
        if self.cookies(request, site, decided.cookie_aid, decided.cookie_uid):
            counters.actions.labels(site.host, "set_cookie").inc()
        rewrite = decided.rewrite
        if rewrite is None:
            if decided.skipped is not None:
                self.html_skipped(site, decided.skipped, content_coding(headers))
            return None, located
        if not rewrite.build_body:
            return None, located
        policy = None
        if rewrite.links:
            policy = LinkDecorator(
                own_host,
                page_url(),
                index.targets,
                self._observed_params(request, arrival),
                replace=IDENTITY_PARAMS,
            )
        inject = _STAND_IN_SCRIPT if rewrite.bootstrap else None
        body = HtmlBody(
            HtmlRewriter(policy, inject=inject, charset=rewrite.charset),
            rewrite.coding,
            self.rewrite_failed(site),
            policy,
            # Decoded only: the output is dropped, so there is nothing to encode.
            output_coding="",
            max_decoded=config.proxy.max_decoded_html,
        )
        return body, located

    def _observed_params(self, request: web.BaseRequest, arrival: Arrival) -> TargetParams:
        token = _STAND_IN_TOKEN if self.state.index.token_targets else None
        return self._params(request, arrival, token)

    def first_party(self, request: web.BaseRequest, site: Site) -> str | None:
        """The path the bootstrap loads analytics.js from on this page's own origin, or None
        (first-party delivery off on this site, or not allowed for this visitor)."""
        config = self.state.config
        prefix = firstparty.prefix_for(config.analytics, site)
        if prefix is None or not firstparty.delivery_allowed(request.headers, site, config.consent):
            return None
        return prefix

    def rewrites(self, site: Site) -> bool:
        """Whether the site's HTML is rewritten at all: links to decorate or a bootstrap."""
        config = self.state.config
        return bool(self.state.index.targets or (config.analytics.write_key and site.bootstrap))

    def limit_codings(self, site: Site, headers: CIMultiDict[str]) -> None:
        """Ask the upstream only for content codings whose HTML the gateway can rewrite.

        On every request of a site that rewrites, not only those for pages: whether the answer
        is HTML is known only once it comes.
        """
        values = headers.getall("Accept-Encoding", None)
        if values is not None and self.rewrites(site):
            headers["Accept-Encoding"] = decodable_accept_encoding(", ".join(values))

    def html_skipped(self, site: Site, reason: HtmlSkip, coding: str) -> None:
        """Count and log an HTML page that goes out without the rewrite it should have had
        (on an observed site: would have gone out so; the line says ``mode``)."""
        self.counters(site).html_skipped.labels(site.host, reason).inc()
        # The coding comes from the upstream's header: bounded, and never an id.
        write_event(
            self.state.log,
            "html_skipped",
            site=site.host,
            reason=reason,
            coding=coding[:64],
            **_mode_field(site),
        )

    def refresh_plan(self) -> RefreshPlan | None:
        """How the bootstrap keeps token and signed links fresh (None: no such targets)."""
        index = self.state.index
        if not index.protected_targets:
            return None
        config = self.state.config
        # Refresh a little before the earliest credential on the page can expire.
        lifetimes = []
        if index.token_targets:
            lifetimes.append(config.tokens.ttl)
        if index.signing_keys is not None:
            lifetimes.append(config.signing.lifetime)
        fresh_for = max(1, min(lifetimes, default=config.tokens.ttl) - 30)
        return RefreshPlan(
            endpoint=FRESH_LINK_PATH, targets=index.protected_targets, fresh_for=fresh_for
        )

    def rewrite_failed(self, site: Site) -> Callable[[BaseException], None]:
        def report(exc: BaseException) -> None:
            self.counters(site).rewrite_failures.labels(site.host).inc()
            # The type only: a message could quote page content, ids included.
            write_event(
                self.state.log,
                "rewrite_failed",
                site=site.host,
                error=type(exc).__name__,
                **_mode_field(site),
            )

        return report

    def rewrite_done(self, site: Site, body: HtmlBody) -> None:
        """Count what became of a page's rewrite (on an observed site, of its rewrite on the
        side)."""
        counters = self.counters(site)
        if body.failed:
            # Logged once already, as rewrite_failed.
            counters.html_skipped.labels(site.host, "rewrite_failed").inc()
        elif body.gave_up is not None:
            # The rewriter stopped part-way (lol-html's memory-limit and ambiguity bail-outs):
            # the rest of the page went out unexamined. Counted and logged once per response.
            self.html_skipped(site, body.gave_up, body.coding)
        else:
            counters.html_rewritten.labels(site.host).inc()
        if body.injected:
            counters.actions.labels(site.host, "bootstrap").inc()
        self.state.metrics.rewrite_seconds.observe(body.rewrite_seconds)
        for target, count in body.targets_hit.items():
            counters.links_decorated.labels(site.host, target).inc(count)


def _mode_field(site: Site) -> dict[str, str]:
    """For the log lines of a site not ``active``: what they tell did not happen."""
    return {} if site.mode == "active" else {"mode": site.mode}


def _scheme(request: web.BaseRequest, config: Config) -> str:
    return visitor_scheme(
        request.headers, request.remote, request.scheme, config.proxy.trusted_proxies
    )
