"""Prometheus metrics, kept in a registry owned by the running gateway (no module-level state).

With ``--workers N`` each worker process writes its samples to a shared directory
(``PROMETHEUS_MULTIPROC_DIR``, set up by the supervisor) and the admin endpoint of any worker
exposes the sum over all of them, so a scrape is right whichever worker answers it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from .html import GaveUpReason

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
HtmlSkip = Literal["unknown_coding", "too_large", "decode_error", "rewrite_failed"] | GaveUpReason


def method_label(method: str) -> str:
    """Bound the label's cardinality: arbitrary extension methods are counted as OTHER."""
    return method if method in KNOWN_METHODS else "OTHER"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass
class Metrics:
    """Every metric the gateway records, registered in one registry."""

    registry: CollectorRegistry
    requests: Counter
    upstream_latency: Histogram
    in_flight: Gauge
    upstream_errors: Counter
    id_source: Counter
    links_decorated: Counter
    html_rewritten: Counter
    rewrite_failures: Counter
    html_skipped: Counter
    rewrite_seconds: Histogram
    unidentified_arrivals: Counter
    store_errors: Counter
    identity_refused: Counter
    reloads: Counter
    events_sent: Counter
    events_dropped: Counter
    events_retried: Counter
    links_minted: Counter
    # Label children of `requests`, looked up once: labels() takes a lock and builds a key on
    # every call, which shows on the per-request path.
    _request_children: dict[tuple[str, str, int], Any] = field(default_factory=dict)

    def count_request(self, site: str, method: str, status: int) -> None:
        key = (site, method, status)
        child = self._request_children.get(key)
        if child is None:
            if len(self._request_children) > 10_000:
                self._request_children.clear()
            child = self._request_children[key] = self.requests.labels(
                site, method_label(method), status_class(status)
            )
        child.inc()

    @classmethod
    def create(cls) -> Metrics:
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
            in_flight=in_flight,
            upstream_errors=counter(
                "gateway_upstream_errors",
                "Upstream failures by kind (connect, timeout, reset, aborted_body).",
                ("site", "kind"),
            ),
            id_source=counter(
                "gateway_identity_source",
                "Where each request's anonymous id came from (url, app, cookie, minted, rejected).",
                ("source",),
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
            rewrite_seconds=Histogram(
                "gateway_rewrite_seconds",
                "CPU time spent rewriting one HTML response.",
                buckets=_REWRITE_BUCKETS,
                registry=registry,
            ),
            unidentified_arrivals=counter(
                "gateway_unidentified_cross_domain_arrivals",
                "Arrivals referred by another configured domain that carried no identity.",
                ("site", "referrer"),
            ),
            store_errors=counter(
                "gateway_store_errors",
                "Token store operations that failed or timed out.",
                ("operation",),
            ),
            identity_refused=counter(
                "gateway_identity_refused",
                "Incoming identity parameters refused, by form and reason.",
                ("form", "reason"),
            ),
            reloads=counter("gateway_config_reloads", "Config reloads by result.", ("result",)),
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
        if multiprocess:
            # The values live in files shared by the workers (prometheus_client picks that
            # storage at import time from the environment); expose their sum instead.
            exposition = CollectorRegistry()
            MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]
            metrics.registry = exposition
        return metrics
