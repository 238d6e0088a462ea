"""Pure: the server-side "Cross Domain Navigation" event, and the decisions of its sender.

When a visitor's identity is restored from the URL (a decorated link, a token, a signed link,
a link minted for an app or an email), the gateway can record the hand-off itself, through
Segment's HTTP tracking API, under the anonymousId the pages will go on using. This is the
guide's client-side "Cross-Domain Navigation" check (``from_domain``, ``to_domain``,
``anonymousId_source``) made by the one party that saw the hand-off happen, so it is recorded
even where analytics.js is blocked or never loads.

This module builds the events and makes the sender's decisions (when a batch is due, what goes
in it, which answers are retried and after how long); :mod:`gateway.delivery` does the I/O.
Its guarantees, each tested in ``tests/test_events.py``:

- **No identity parameter in an event**: the page URL is the cleaned one (what the clean-up
  redirect leads to); the ids travel only in ``anonymousId`` and ``userId``.
- **Only configured hosts are named**: ``from_domain`` is the Referer's host when it is a site
  or a cross-domain of the configuration, else null; any other Referer is the visitor's
  business, not the collector's.
- **Bounded batches**: a batch holds at most ``events.batch_size`` events and at most
  Segment's 500 KB; an event over Segment's 32 KB per call is never sent (it would make its
  whole batch fail).
- **Due when full or old**: a batch is due once the queue holds ``batch_size`` events, once
  its oldest event has waited ``flush_interval``, and at once while the gateway drains.
- **Retried only when it may help**: 5xx, 408, 429, timeouts and connection errors are retried
  after an exponentially growing, jittered delay, at most :data:`MAX_ATTEMPTS` times; any
  other answer (4xx: a bad write key or payload, which no retry fixes; 3xx: a wrong endpoint)
  drops the batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from .config import Config, Strategy
from .hosts import matches, referer_host

EVENT_NAME = "Cross Domain Navigation"
# Segment's HTTP tracking API: "32KB per call", "500KB per batch request"
# (segment.com/docs/connections/sources/catalog/libraries/server/http-api/#max-request-size).
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# Attempts per batch, and the delay before the n-th retry: RETRY_BASE * 2**(n-1) capped at
# RETRY_CAP, so that all of them span about half a minute: a collector that comes back within
# that gets the batch; a longer outage costs the batch rather than every later one.
MAX_ATTEMPTS = 8
RETRY_BASE = 0.25
RETRY_CAP = 30.0

# Where the id of a hand-off came from: the URL form, a link minted for an app or an email
# (``python -m gateway link``, ``POST /links``), whose credential says so, or the round trip
# through a sibling that rescued an undecorated arrival (gateway/rescue.py).
HandoffSource = Literal["query", "token", "signed", "app", "rescue"]
Outcome = Literal["sent", "retry", "rejected"]


def handoff_source(method: str, source: str, form: Strategy | None) -> HandoffSource | None:
    """The ``anonymousId_source`` of an arrival, or None when it is no hand-off to report.

    ``source`` is the arrival's (:data:`gateway.inbound.Source`) and ``form`` the identity form
    its URL used. Only an id taken from the URL is a hand-off. A HEAD is not reported: browsers
    navigate with GET (and POST), and HEADs come from link checkers and the scanners of mail
    systems, which fetch links before (or instead of) a person.
    """
    if method == "HEAD":
        return None
    if source == "app":
        return "app"
    if source == "rescue":
        return "rescue"
    if source == "url" and form is not None:
        return form
    return None


def from_domain(referer: str | None, config: Config) -> str | None:
    """The Referer's host if the configuration knows it (a site or a cross-domain), else None."""
    came_from = referer_host(referer)
    if came_from is None:
        return None
    name = came_from.host
    if config.site_for(name) is not None or any(
        matches(name, c.host) for c in config.cross_domains
    ):
        return name
    return None


@dataclass(frozen=True)
class Handoff:
    """What the gateway knows about one hand-off, as plain values taken from the request."""

    anonymous_id: str
    user_id: str | None
    source: HandoffSource
    from_domain: str | None
    to_domain: str
    # The page's URL as the visitor will see it: without identity parameters.
    url: str
    ip: str | None
    user_agent: str | None


def iso_timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Segment's libraries write ``timestamp``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track_event(
    handoff: Handoff, *, message_id: str, timestamp: float, library: Mapping[str, str]
) -> dict[str, Any]:
    """The Segment ``track`` call for ``handoff``; ``message_id`` lets Segment drop the copy
    a retry may deliver twice."""
    parts = urlsplit(handoff.url)
    context: dict[str, Any] = {
        "page": {
            "url": handoff.url,
            "path": parts.path or "/",
            "search": f"?{parts.query}" if parts.query else "",
        },
        "library": dict(library),
    }
    # Without an ip, Segment would record the gateway's own address as the visitor's.
    if handoff.ip is not None:
        context["ip"] = handoff.ip
    if handoff.user_agent is not None:
        context["userAgent"] = handoff.user_agent
    event: dict[str, Any] = {
        "type": "track",
        "event": EVENT_NAME,
        "anonymousId": handoff.anonymous_id,
        "messageId": message_id,
        "timestamp": iso_timestamp(timestamp),
        "properties": {
            "from_domain": handoff.from_domain,
            "to_domain": handoff.to_domain,
            "anonymousId_source": handoff.source,
        },
        "context": context,
    }
    if handoff.user_id is not None:
        event["userId"] = handoff.user_id
    return event


def encode_event(event: Mapping[str, Any]) -> bytes | None:
    """Compact ASCII JSON for one event, or None if it is over Segment's per-call limit."""
    data = json.dumps(event, separators=(",", ":"), allow_nan=False).encode("ascii")
    return data if len(data) <= MAX_EVENT_BYTES else None


def send_due(
    queued: int, oldest_age: float, *, batch_size: int, flush_interval: float, draining: bool
) -> float:
    """Seconds until the queue is to be sent: 0 for now, ``inf`` when there is nothing to send.

    ``oldest_age``: how long the oldest queued event has waited."""
    if queued <= 0:
        return math.inf
    if draining or queued >= batch_size:
        return 0.0
    return max(0.0, flush_interval - oldest_age)


_BATCH_HEAD = b'{"batch":['
_BATCH_TAIL = b'],"sentAt":"%s"}'
# The envelope around the events, with a timestamp as long as iso_timestamp writes.
_ENVELOPE = len(_BATCH_HEAD) + len(_BATCH_TAIL % iso_timestamp(0).encode())


class Batch:
    """Encoded events for one request: at most ``limit`` of them and :data:`MAX_BATCH_BYTES`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: list[bytes] = []
        self.size = _ENVELOPE

    def __len__(self) -> int:
        return len(self.events)

    @property
    def full(self) -> bool:
        return len(self.events) >= self.limit

    def add(self, encoded: bytes) -> bool:
        """Take ``encoded`` if it fits (False: it goes in the next batch). An empty batch takes
        any event :func:`encode_event` returned, so every event fits in some batch."""
        grown = self.size + len(encoded) + (1 if self.events else 0)
        if self.full or (self.events and grown > MAX_BATCH_BYTES):
            return False
        self.events.append(encoded)
        self.size = grown
        return True

    def body(self, sent_at: float) -> bytes:
        """The request body, ``{"batch": [...], "sentAt": ...}``; ``sentAt`` is the time of this
        attempt, which Segment uses to correct the sender's clock."""
        tail = _BATCH_TAIL % iso_timestamp(sent_at).encode()
        return _BATCH_HEAD + b",".join(self.events) + tail


def outcome(status: int | None) -> Outcome:
    """What an answer means for its batch; ``status`` None: timed out or could not connect."""
    if status is None or status >= 500 or status in (408, 429):
        return "retry"
    if 200 <= status < 300:
        return "sent"
    return "rejected"


def retry_delay(attempt: int, jitter: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): the ceiling
    RETRY_BASE * 2**(attempt-1), capped at RETRY_CAP, its upper half spread by ``jitter`` in
    [0, 1) so that the gateways of a fleet do not all retry in step when the collector
    returns."""
    doublings = min(max(attempt, 1) - 1, 32)
    ceiling = min(RETRY_CAP, RETRY_BASE * float(1 << doublings))
    return ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0)


__all__ = [
    "EVENT_NAME",
    "MAX_ATTEMPTS",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "Batch",
    "Handoff",
    "HandoffSource",
    "Outcome",
    "encode_event",
    "from_domain",
    "handoff_source",
    "iso_timestamp",
    "outcome",
    "retry_delay",
    "send_due",
    "track_event",
]
