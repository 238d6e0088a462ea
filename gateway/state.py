"""The proxy's shared state, on its own so that every part of the edge can import it without
importing each other: the handler (proxy.py), the identity glue (identity_flow.py), the WebSocket
relay and the admin endpoints all take a ProxyState; none of them imports another's module to
reach it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol, TextIO

import aiohttp

from .asset_cache import AssetCache
from .config import Config, Strategy
from .delivery import EventSender
from .firstparty import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    FAILURE_TTL,
    RELAY_CONNECT_TIMEOUT,
    RELAY_TIMEOUT,
    Fetched,
)
from .identity import IdRules
from .inbound import identity_rules
from .logs import Throttle
from .metrics import Metrics
from .options import UpstreamTLS
from .store import TokenStore
from .strategies import SigningKeys
from .upstream import Origin, UpstreamPool


@dataclass
class ConfigIndex:
    """What the identity side needs of a config, computed once per config (at start and at
    each reload) rather than once per request."""

    rules: IdRules
    # Every cross-domain pattern, and those whose links carry the raw id (strategy "query").
    targets: tuple[str, ...]
    query_targets: tuple[str, ...]
    # Targets that must not see raw ids: their links need a fresh token or signature.
    protected_targets: tuple[str, ...]
    # Those of strategy "token": a page's token is bound to them.
    token_targets: tuple[str, ...]
    strategies: dict[str, Strategy]
    signing_keys: SigningKeys | None

    @classmethod
    def of(cls, config: Config) -> ConfigIndex:
        cross = config.cross_domains
        return cls(
            rules=identity_rules(config),
            targets=tuple(c.host for c in cross),
            query_targets=tuple(c.host for c in cross if c.strategy == "query"),
            protected_targets=tuple(c.host for c in cross if c.strategy != "query"),
            token_targets=tuple(c.host for c in cross if c.strategy == "token"),
            strategies={c.host: c.strategy for c in cross},
            signing_keys=SigningKeys.parse(config.signing.keys) if config.signing.keys else None,
        )


class OpenRelay(Protocol):
    """An open WebSocket relay (websocket.py's ``Relay``), as a shutdown sees it."""

    def going_away(self) -> None:
        """Close both sides with 1001 Going Away."""


@dataclass
class Outcome:
    """What the access log and metrics record about one request."""

    # The id the request is known by upstream, to the visitor and in the log line.
    request_id: str = ""
    # The host of the site it was routed to ("-": none).
    site: str = "-"
    status: int = 0
    upstream_status: int | None = None
    sent: int = 0
    # Until the upstream's response head arrived, in milliseconds (None: not asked).
    upstream_ms: float | None = None
    # What the gateway did about identity: "restored" (from the URL, a hand-off), "cookie",
    # "restored_shadow" (the cookie's id, from its server-only copy), "minted", "refused" (the
    # URL's identity was not taken: ``refused_reason`` says why) or "none"; None when the
    # request never reached the identity step.
    identity: str | None = None
    refused_reason: str | None = None
    # Links (and redirect Locations) given identity in the response.
    decorated: int = 0
    # Why an HTML page that should have been rewritten went out (in part) without it.
    skipped: str | None = None
    # The site's mode (sites[].mode): on an observed site, identity and decorated and skipped
    # say what would have been done.
    mode: str = "active"


class ProxyState:
    """The state every part of the proxy shares: config and its index, the upstream pool, the
    WebSocket session, metrics, the token store, the hand-off event sender, the log, and
    first-party delivery's pool and asset cache; changed by app.py (reload, drain)."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        store: TokenStore,
        upstreams: UpstreamPool,
        events: EventSender,
        relay_upstreams: UpstreamPool | None = None,
    ) -> None:
        self.session = session
        self.upstreams = upstreams
        # Segment's CDN and API (relay.py): a pool apart from the sites', made when first used
        # unless given.
        self._relay_upstreams = relay_upstreams
        self.assets: AssetCache[Fetched] = AssetCache(
            max_entries=CACHE_ENTRIES,
            max_bytes=CACHE_BYTES,
            failure_ttl=FAILURE_TTL,
            size=lambda fetched: fetched.size,
        )
        self.metrics = metrics
        self.store = store
        self.events = events
        self.log: TextIO = sys.stdout
        # Repeated faults: at most one line a second per (event, site, kind); responses.py.
        self.faults: Throttle[tuple[str, str, str]] = Throttle(interval=1.0)
        self.in_flight = 0
        self.draining = False
        # WebSocket relays open right now (each is also a request in flight).
        self.relays: set[OpenRelay] = set()
        self.reconfigure(config)

    @property
    def relay_upstreams(self) -> UpstreamPool:
        if self._relay_upstreams is None:
            self._relay_upstreams = UpstreamPool(
                connect_timeout=RELAY_CONNECT_TIMEOUT,
                read_timeout=RELAY_TIMEOUT,
                pool_size=self._config.proxy.pool_size,
                keepalive_timeout=30.0,
                per_origin=0,
                pool_wait_timeout=RELAY_TIMEOUT,
            )
        return self._relay_upstreams

    async def close_relay(self) -> None:
        if self._relay_upstreams is not None:
            await self._relay_upstreams.close()

    @property
    def config(self) -> Config:
        return self._config

    def reconfigure(self, config: Config) -> None:
        """Swap in a (reloaded) config together with its index: requests that start from now
        on see both; those in flight keep the ones they started with. The upstream pool takes
        the sites' TLS settings for its new connections."""
        self.index = ConfigIndex.of(config)
        self._config = config
        self.upstreams.configure_tls(upstream_tls(config))


def upstream_tls(config: Config) -> dict[Origin, UpstreamTLS]:
    """The TLS setting of each https upstream origin (config.py has made sure that sites
    sharing an upstream share its setting)."""
    return {
        Origin.parse(site.upstream): site.tls
        for site in config.sites
        if site.upstream.startswith("https://")
    }
