"""Prometheus metrics, kept in a registry owned by the running gateway (no module-level state).

With ``--workers N`` each worker process writes its samples to a shared directory
(``PROMETHEUS_MULTIPROC_DIR``, set up by the supervisor) and the admin endpoint of any worker
exposes the sum over all of them, so a scrape is right whichever worker answers it. Facts that
are not per worker are kept from being multiplied: gauges say how their values combine
(``multiprocess_mode``), and a config reload, which every worker performs, is recorded by one
worker only (``reports_reloads``; the supervisor's worker 0).

The identity counters come in two groups of the same shape (:class:`IdentityCounters`):
``active``, what the gateway did to its sites' traffic (``gateway_identity_source_total``,
``gateway_links_decorated_total``, ...), and ``observed``, what it would have done on sites in
``observe`` mode, where it changes nothing (``gateway_observed_identity_source_total``,
``gateway_observed_links_decorated_total``, ...: the same name after ``gateway_observed_``,
the same labels). Separate names rather than a ``mode`` label keep every existing series, and
so the shipped alerts, the dashboard and the fragmentation measure, about what visitors
actually got; comparing a site observed with the same site, or another, active is comparing
two names with the same labels.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from . import html
from .consent import REFUSALS as CONSENT_REFUSALS
from .html import GAVE_UP_REASONS, GaveUpReason
from .options import Mode

DISTRIBUTION = "ajs-identity-gateway"

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

# Upstream latency: loopback upstreams answer in well under a millisecond, legacy sites
# in hundreds; the buckets span both.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_REWRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


# Why an HTML page the gateway would have rewritten went out without it (a bounded label set):
# a content coding it cannot decode, a compressed body decoding beyond proxy.max_decoded_html,
# a body corrupt in its coding, or a rewriter failure (the rest of the page sent unchanged).
_BodySkip = Literal["unknown_coding", "too_large", "decode_error", "rewrite_failed"]
HtmlSkip = _BodySkip | GaveUpReason
HTML_SKIP_REASONS: tuple[str, ...] = (*get_args(_BodySkip), *GAVE_UP_REASONS)
# Series created at start for every site, so that the first event is an increase from 0
# (rate() and increase() see nothing in a series that appears with its first count).
_SOURCES = ("url", "app", "rescue", "cookie", "shadow", "minted", "rejected")
_STORE_OPERATIONS = ("put", "take", "health")
# What the gateway does to a response about identity, besides decorating links (counted in
# links_decorated): the clean-up redirect, writing the identity cookies, injecting the bootstrap.
Action = Literal["cleanup_redirect", "set_cookie", "bootstrap"]
ACTIONS: tuple[Action, ...] = get_args(Action)


def gateway_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def implementation() -> html.Implementation:
    """Which HTML scanner the rewriter runs in this process: "compiled" (the C extension,
    gateway/html/_speedups.c) or "python" (not built, or GATEWAY_NO_EXTENSIONS set)."""
    return html.IMPLEMENTATION


def method_label(method: str) -> str:
    """Bound the label's cardinality: arbitrary extension methods are counted as OTHER."""
    return method if method in KNOWN_METHODS else "OTHER"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass(frozen=True)
class IdentityCounters:
    """The identity counters of one mode: what the gateway did (``Metrics.active``) or, on sites
    in observe mode, would have done (``Metrics.observed``)."""

    id_source: Counter
    links_decorated: Counter
    html_rewritten: Counter
    rewrite_failures: Counter
    html_skipped: Counter
    cross_domain_arrivals: Counter
    identity_refused: Counter
    actions: Counter

    def prepare(self, sites: Sequence[str], referrers: Sequence[str]) -> None:
        """Create the per-site series at 0 (see Metrics.prepare)."""
        for site in sites:
            self.html_rewritten.labels(site)
            self.rewrite_failures.labels(site)
            for reason in HTML_SKIP_REASONS:
                self.html_skipped.labels(site, reason)
            for source in _SOURCES:
                self.id_source.labels(site, source)
            for action in ACTIONS:
                self.actions.labels(site, action)
            for referrer in referrers:
                if referrer != site:
                    self.cross_domain_arrivals.labels(site, referrer, "carried")
                    self.cross_domain_arrivals.labels(site, referrer, "missing")

    @classmethod
    def create(cls, registry: CollectorRegistry, *, observed: bool) -> IdentityCounters:
        """The active counters, or with ``observed`` their ``gateway_observed_*`` twins."""

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            if observed:
                name = "gateway_observed_" + name.removeprefix("gateway_")
                doc = (
                    f"Sites in observe mode, what the gateway would have done (it changed "
                    f"nothing): as gateway_{name.removeprefix('gateway_observed_')}_total. {doc}"
                )
            return Counter(name, doc, labels, registry=registry)

        return cls(
            id_source=counter(
                "gateway_identity_source",
                "Where each request's anonymous id came from, by site (url: restored from a "
                "hand-off; app: from a link minted for an app, an email or a partner; rescue: "
                "brought back from a sibling site for an undecorated arrival; cookie; "
                "shadow: restored from the server-only copy after the readable cookie was lost; "
                "minted: a new visitor; rejected: the URL's identity was refused).",
                ("site", "source"),
            ),
            links_decorated=counter(
                "gateway_links_decorated",
                "Links and redirects decorated with identity, by site and target.",
                ("site", "target"),
            ),
            html_rewritten=counter(
                "gateway_html_rewritten", "HTML responses rewritten.", ("site",)
            ),
            rewrite_failures=counter(
                "gateway_rewrite_failures",
                "HTML responses whose rewrite failed (sent unchanged).",
                ("site",),
            ),
            html_skipped=counter(
                "gateway_html_skipped",
                "HTML responses not rewritten, or not to their end, by site and reason "
                "(unknown_coding, too_large, decode_error, rewrite_failed; and where the rewriter "
                "gave up part-way: unsupported_charset, tag_too_long, parsing_ambiguity, "
                "plaintext).",
                ("site", "reason"),
            ),
            cross_domain_arrivals=counter(
                "gateway_cross_domain_arrivals",
                "Navigations referred by another configured cross-domain, by site, referring "
                "pattern and whether the URL carried the visitor's identity (carried) or not "
                "(missing: the visitor is split, whether or not it had a cookie here). The "
                "second leg of a clean-up redirect is not counted again.",
                ("site", "referrer", "identity"),
            ),
            identity_refused=counter(
                "gateway_identity_refused",
                "Incoming identity parameters refused, by form and reason.",
                ("form", "reason"),
            ),
            actions=counter(
                "gateway_identity_actions",
                "Responses given identity, by site and action: cleanup_redirect (a 302 taking "
                "identity out of the URL), set_cookie (the identity cookies written), bootstrap "
                "(the analytics.js bootstrap injected). Decorated links are "
                "gateway_links_decorated_total.",
                ("site", "action"),
            ),
        )


@dataclass
class Metrics:
    """Every metric the gateway records, registered in one registry."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    upstream_latency: Histogram
    in_flight: Gauge
    upstream_errors: Counter
    # What identity did, and on observed sites would have done (see the module docstring).
    active: IdentityCounters
    observed: IdentityCounters
    rewrite_seconds: Histogram
    store_errors: Counter
    store_circuit_open: Gauge
    consent_refused: Counter
    speculative_requests: Counter
    rescues: Counter
    build_info: Gauge
    reloads: Counter
    events_sent: Counter
    events_dropped: Counter
    events_retried: Counter
    links_minted: Counter
    # Only in the process that reports reloads (see the module docstring).
    reload_success: Gauge | None
    reload_success_time: Gauge | None
    # Label children of `requests`, `request_duration` and `upstream_latency`, looked up once:
    # labels() takes a lock and builds a key on every call, which shows on the per-request path.
    _request_children: dict[tuple[str, str, int], Any] = field(default_factory=dict)
    _duration_children: dict[str, Any] = field(default_factory=dict)
    _upstream_children: dict[str, Any] = field(default_factory=dict)

    def observe_upstream(self, site: str, seconds: float) -> None:
        """The wait for one upstream response head, by site."""
        child = self._upstream_children.get(site)
        if child is None:
            if len(self._upstream_children) > 1_000:
                self._upstream_children.clear()
            child = self._upstream_children[site] = self.upstream_latency.labels(site)
        child.observe(seconds)

    def count_request(self, site: str, method: str, status: int, seconds: float) -> None:
        """One answered request: counted by status class, its duration observed by site."""
        key = (site, method, status)
        child = self._request_children.get(key)
        if child is None:
            if len(self._request_children) > 10_000:
                self._request_children.clear()
            child = self._request_children[key] = self.requests.labels(
                site, method_label(method), status_class(status)
            )
        child.inc()
        duration = self._duration_children.get(site)
        if duration is None:
            if len(self._duration_children) > 1_000:
                self._duration_children.clear()
            duration = self._duration_children[site] = self.request_duration.labels(site)
        duration.observe(seconds)

    def counters(self, mode: Mode) -> IdentityCounters:
        """Where a site in ``mode`` counts its identity work (``off`` counts none, so either)."""
        return self.observed if mode == "observe" else self.active

    def prepare(
        self, sites: Sequence[str], referrers: Sequence[str], observed: Sequence[str] = ()
    ) -> None:
        """Create the per-site series the shipped alerts and the status page read, at 0, for
        these site hosts and the cross-domain patterns that may refer visitors to them; and
        the observed twins for the sites in ``observed`` (those in observe mode)."""
        self.active.prepare(sites, referrers)
        self.observed.prepare(observed, referrers)
        for site in sites:
            for reason in CONSENT_REFUSALS:
                self.consent_refused.labels(site, reason)
        for operation in _STORE_OPERATIONS:
            self.store_errors.labels(operation)

    def config_loaded(self, when: float) -> None:
        """The config was loaded (at start-up or by a reload) at ``when`` (Unix time)."""
        if self.reload_success is not None and self.reload_success_time is not None:
            self.reload_success.set(1)
            self.reload_success_time.set(when)

    def config_reloaded(self, ok: bool, when: float) -> None:
        """A reload finished: counted by result, and the success gauges follow it. A no-op in
        a worker that does not report reloads, so that N workers count one reload once."""
        if self.reload_success is None:
            return
        self.reloads.labels("ok" if ok else "invalid").inc()
        if ok:
            self.config_loaded(when)
        else:
            self.reload_success.set(0)

    def store_circuit(self, store: str, is_open: bool) -> None:
        """Set ``gateway_store_circuit_open{store}``: 1 while the token store's circuit breaker
        is open (calls fail fast without trying the store), 0 while it is closed. ``store`` is
        the store's ``name`` ("redis", "memory"). The gateway sets 0 when it opens a store."""
        self.store_circuit_open.labels(store).set(1 if is_open else 0)

    @classmethod
    def create(cls, *, reports_reloads: bool = True) -> Metrics:
        """The gateway's metrics; ``reports_reloads``: whether this process records config
        reloads (every process but workers 1..N-1 of a supervisor)."""
        registry = CollectorRegistry(auto_describe=True)
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        metrics = cls(
            registry=registry,
            requests=counter(
                "gateway_requests",
                "Requests answered, by site, method and status class.",
                ("site", "method", "status_class"),
            ),
            upstream_latency=Histogram(
                "gateway_upstream_latency_seconds",
                "Time from sending the request upstream to receiving its response headers.",
                ("site",),
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            request_duration=Histogram(
                "gateway_request_duration_seconds",
                "Time from receiving a request's headers to the end of the gateway's answer "
                "(the whole body when it streams), by site; the gateway's own answers (clean-up "
                "redirects, 421, 502) included. Site '-' is a request for no configured site.",
                ("site",),
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            in_flight=in_flight,
            upstream_errors=counter(
                "gateway_upstream_errors",
                "Upstream failures by kind (connect, timeout, reset, aborted_body).",
                ("site", "kind"),
            ),
            rescues=counter(
                "gateway_rescues",
                "Undecorated arrivals from a sibling site sent there for the visitor's id, by "
                "site and outcome (sent: the round trip began here; rescued: it came back with "
                "an id; empty: without one; answered, unknown: the sibling's endpoint sent an "
                "id, or had none or no consent to send; refused: its back URL was no rescue "
                "site of this gateway).",
                ("site", "outcome"),
            ),
            active=IdentityCounters.create(registry, observed=False),
            observed=IdentityCounters.create(registry, observed=True),
            rewrite_seconds=Histogram(
                "gateway_rewrite_seconds",
                "CPU time spent rewriting one HTML response (on observed sites too, where the "
                "rewriter runs on a copy).",
                buckets=_REWRITE_BUCKETS,
                registry=registry,
            ),
            store_errors=counter(
                "gateway_store_errors",
                "Token store operations that failed or timed out.",
                ("operation",),
            ),
            store_circuit_open=Gauge(
                "gateway_store_circuit_open",
                "1 while the token store's circuit breaker is open (store calls fail fast), "
                "else 0; by store kind. With several workers: 1 if any worker's is open.",
                ("store",),
                registry=registry,
                multiprocess_mode="livemax",
            ),
            consent_refused=counter(
                "gateway_consent_refused",
                "Requests whose visitor gave no consent to an identity, by site and reason (gpc: "
                "Sec-GPC: 1; denied: the consent cookie does not grant it; missing: no consent "
                "cookie where consent.required). Nothing was minted, written or decorated.",
                ("site", "reason"),
            ),
            speculative_requests=counter(
                "gateway_speculative_requests",
                "Fetches ahead of (or instead of) a visit, by site and kind (prefetch: announced "
                "by the browser; head; preview: a link-preview bot): no token consumed, nothing "
                "minted or written; a prefetch of a URL with identity is refused.",
                ("site", "kind"),
            ),
            build_info=Gauge(
                "gateway_build_info",
                "Always 1: the gateway's version, the Python it runs on, and which HTML "
                "rewriter implementation it uses (compiled: the C extension; python: the "
                "pure-Python fallback).",
                ("version", "python", "implementation"),
                registry=registry,
                multiprocess_mode="max",
            ),
            reloads=counter(
                "gateway_config_reloads",
                "Config reloads (SIGHUP) by result (ok, invalid); once per reload, however many "
                "workers.",
                ("result",),
            ),
            reload_success=None,
            reload_success_time=None,
            events_sent=counter(
                "gateway_events_sent",
                "Server-side hand-off events the collector accepted.",
            ),
            events_dropped=counter(
                "gateway_events_dropped",
                "Server-side hand-off events given up, by reason (queue_full, rejected, "
                "retries_exhausted, too_large, shutdown, error).",
                ("reason",),
            ),
            events_retried=counter(
                "gateway_events_retried",
                "Server-side hand-off events sent again after a failed attempt.",
            ),
            links_minted=counter(
                "gateway_links_minted",
                "Links minted for apps, email and partners on the admin port, by strategy.",
                ("strategy",),
            ),
        )
        if reports_reloads:
            # Live modes: a worker that died no longer speaks for the config (the supervisor
            # removes its live files), and its replacement reports its own start-up load.
            metrics.reload_success = Gauge(
                "gateway_config_last_reload_success",
                "1 if the last config load (start-up or reload) succeeded, 0 if the last "
                "reload was refused and the previous config is still serving.",
                registry=registry,
                multiprocess_mode="livemax",
            )
            metrics.reload_success_time = Gauge(
                "gateway_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load (start-up or reload).",
                registry=registry,
                multiprocess_mode="livemax",
            )
        metrics.build_info.labels(
            gateway_version(), platform.python_version(), implementation()
        ).set(1)
        if multiprocess:
            # The values live in files shared by the workers (prometheus_client picks that
            # storage at import time from the environment); expose their sum instead.
            exposition = CollectorRegistry()
            MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
            metrics.registry = exposition
        return metrics
