"""Pure: first-party delivery, what it serves and how (the glue is gateway/relay.py).

With ``analytics.first_party`` on, a site's own origin serves, under one path prefix, what
analytics.js would otherwise fetch from Segment's hosts: the library, its lazily loaded
bundles and destination scripts, the project settings, and the tracking API. Blockers that
refuse Segment's hosts, or URL shapes such as EasyPrivacy's ``/analytics.js/v1/*``, then no
longer lose the site's own events. This module decides every part of that which is not I/O:

- :func:`route`: which request under the prefix is which resource, and its upstream URL;
- :func:`rewrite_settings`: the settings as this origin must serve them (the Segment.io
  integration's ``apiHost``/``protocol``, the metrics host, CDN URLs);
- :func:`api_refusal`: whether a tracking API request may be relayed;
- :func:`api_headers`, :func:`asset_headers`: what the upstream is sent;
- :class:`Policy` (:data:`POLICIES`): how long each kind of resource is cached here and by
  browsers.

Guarantees, each tested in tests/test_firstparty.py (what the glue does with them in
tests/test_relay.py):

1. Only these resources are served: ``<prefix>/lib.js`` (the library), ``<prefix>/analytics-next/
   bundles/<name>.js`` (its chunks), ``<prefix>/next-integrations/…`` (destination scripts),
   ``<prefix>/v1/projects/<write key>/settings`` and ``<prefix>/v1/<t|p|i|g|a|s|b|batch|m>``.
   Any other path under the prefix is not the gateway's (it goes to the site as before); a path
   segment that could climb out (``..``, ``%2e``) or names anything unexpected is never served.
2. Only the configured write key: the library and settings are fetched for it alone, settings
   for another key are refused, and an API request is relayed only if it names a write key (in
   ``Authorization: Basic`` or the body's ``writeKey``) and every key it names is the
   configured one. The gateway is never a relay to Segment for anybody else's project.
3. Bounded: an API body over :data:`MAX_API_BODY` (Segment's own batch limit is 500 KB) is
   refused with 413, a metrics body over :data:`MAX_METRICS_BODY` too; an asset over
   :data:`MAX_ASSET_BYTES` is not served.
4. What goes to Segment is what analytics.js sent: the body byte for byte, and of the visitor's
   headers only an allow-list (``Content-Type``, ``Authorization``, ``User-Agent``,
   ``X-Retry-Count``), never cookies; plus the visitor's address in ``X-Forwarded-For``, so
   that Segment's geolocation sees the visitor rather than the gateway.
5. No visitor identity appears in any URL: no path carries an id, and the prefix is the same
   for every visitor.

The default prefix (:func:`default_path`) is derived from the write key, ``/_/`` and 12 hex
digits: it matches no rule of EasyPrivacy's general list (none of its words: analytics,
segment, track, collect, …), and, unlike a fixed name, it is not the same on every deployment,
so a single list rule cannot block them all.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from multidict import MultiMapping

from .consent import effective, refusal
from .options import Analytics, Consent, FirstParty, Site

__all__ = [
    "API_ENDPOINTS",
    "BLOCKED_PATTERNS",
    "LIBRARY",
    "MAX_API_BODY",
    "MAX_ASSET_BYTES",
    "MAX_METRICS_BODY",
    "POLICIES",
    "Api",
    "Asset",
    "Fetched",
    "Kind",
    "Policy",
    "Refused",
    "api_headers",
    "api_refusal",
    "asset_headers",
    "authority",
    "default_path",
    "delivery_allowed",
    "path_problem",
    "prefix_for",
    "rewrite_settings",
    "route",
    "upstream_url",
]

# The library's file under the prefix: a name no block list singles out (not analytics.min.js).
LIBRARY = "lib.js"
# The tracking API's endpoints: the first letter of each event type (track, page, identify,
# group, alias, screen), batches (b, batch) and the library's own metrics (m).
API_ENDPOINTS = frozenset({"t", "p", "i", "g", "a", "s", "b", "batch", "m"})
MAX_API_BODY = 512 * 1024
MAX_METRICS_BODY = 64 * 1024
MAX_ASSET_BYTES = 4 * 1024 * 1024

# EasyPrivacy's generic path rules (easylist/easylist easyprivacy/easyprivacy_general.txt)
# that hit Segment's URL shapes on any host, and those a prefix in front of our own paths
# (…/v1/t, …/lib.js) could complete: no served path may contain one.
BLOCKED_PATTERNS = (
    "/analytics.js/v1/",
    "/analytics.min.",
    ".analytics.min.",
    "/analytics-js/",
    "/analytics/track",
    "/api/v1/track/",
    "/analytics.js?",
    "/v1/analytics.js",
    "/segment/js/",
    "/segment/api/",
    "/segmentio.js",
    "/analytics/v1/",
    "/geo-location/v1",
    "/metrics/v1/",
    "/monitor/v1/",
    "/logging/v1/",
)

_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,63}"
# A prefix: one or more plain path segments (none of them "." or ".."), no trailing slash.
_PREFIX = re.compile(rf"(?:/{_SEGMENT})+")
# A webpack chunk of the standalone build: a flat file name.
_BUNDLE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.js")
# A destination or middleware script under next-integrations/: plain segments, .js or .js.gz
# (the legacy destinations are served gzip-encoded under that name).
_INTEGRATION = re.compile(
    r"(?:[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,127}/){1,6}[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.js(?:\.gz)?"
)
_SETTINGS = re.compile(r"/v1/projects/([^/]{1,128})/settings")

Kind = Literal["library", "bundle", "integration", "settings"]


@dataclass(frozen=True)
class Asset:
    """A GET from the CDN, cached here: ``upstream_path`` on ``cdn_url``."""

    kind: Kind
    upstream_path: str


@dataclass(frozen=True)
class Api:
    """A tracking API request, relayed to ``api_url``: ``upstream_path`` on it."""

    endpoint: str
    upstream_path: str


@dataclass(frozen=True)
class Refused:
    """The gateway's own answer instead of a relay (``allow``: the Allow header of a 405)."""

    status: int
    text: str
    allow: str | None = None


@dataclass(frozen=True)
class Policy:
    """How long one kind of resource is kept here (``ttl``, seconds) and by browsers and shared
    caches (``cache_control``)."""

    ttl: float
    cache_control: str


# The library is fetched per write key, so it follows the project's version pin within five
# minutes. Bundles and destination scripts have content hashes or versions in their names.
# Settings change when someone edits the workspace: a minute. None of them depends on the
# visitor, so shared caches may keep them (settings vary by origin, which is in their URL).
POLICIES: Mapping[Kind, Policy] = {
    "library": Policy(300.0, "public, max-age=300"),
    "bundle": Policy(3600.0, "public, max-age=3600"),
    "integration": Policy(3600.0, "public, max-age=3600"),
    "settings": Policy(60.0, "public, max-age=60"),
}
# The asset cache's bounds: Segment's library and its chunks for one project are well under
# 1 MiB; a gateway serving several write keys' worth of sites stays far below these.
CACHE_ENTRIES = 256
CACHE_BYTES = 32 * 1024 * 1024
# Compressing costs once per fetch, and pays only for bodies larger than a packet or two.
_GZIP_MIN = 1024
_COMPRESSIBLE = ("javascript", "json", "text/")
# The most a relayed request takes in all, connecting included; connecting to Segment's hosts
# takes a fraction of it when they are up.
RELAY_TIMEOUT = 10.0
RELAY_CONNECT_TIMEOUT = 3.0
# A failed fetch is remembered this long, so that a CDN that is down costs each page one fast
# 502 instead of a connection attempt; never longer, so that a blip is soon forgotten.
FAILURE_TTL = 5.0


@dataclass(frozen=True)
class Fetched:
    """A CDN resource as the cache keeps it: the body, its type and coding as the CDN sent
    them, and a gzip copy when the CDN sent it unencoded and compressing pays."""

    body: bytes
    content_type: str
    content_encoding: str | None
    gzipped: bytes | None

    @classmethod
    def of(cls, body: bytes, content_type: str, content_encoding: str | None) -> Fetched:
        encoding = None if content_encoding in (None, "", "identity") else content_encoding
        gzipped = None
        lowered = content_type.lower()
        if (
            encoding is None
            and len(body) >= _GZIP_MIN
            and any(word in lowered for word in _COMPRESSIBLE)
        ):
            gzipped = gzip.compress(body, compresslevel=6, mtime=0)
        return cls(body, content_type, encoding, gzipped)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


@functools.lru_cache(maxsize=64)
def default_path(write_key: str) -> str:
    """The default prefix for a write key: ``/_/`` and 12 hex digits of a SHA-256 of it (the
    write key is public, in every page; the digest only keeps the path from being the same on
    every deployment)."""
    digest = hashlib.sha256(b"ajs-gateway first-party\0" + write_key.encode("utf-8"))
    return "/_/" + digest.hexdigest()[:12]


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a prefix (None if it can): it must be plain path segments, and no
    path served under it may match one of :data:`BLOCKED_PATTERNS`."""
    if not _PREFIX.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")[1:]):
        return "is not a plain path such as /a/b (segments of letters, digits, '.', '_', '~', '-')"
    for served in _served_paths(path):
        for pattern in BLOCKED_PATTERNS:
            if pattern in served.lower():
                return f"would serve {served}, which block lists refuse ({pattern!r})"
    return None


def _served_paths(prefix: str) -> tuple[str, ...]:
    """One example of each kind of path served under ``prefix`` (what block lists would see)."""
    return (
        f"{prefix}/{LIBRARY}",
        f"{prefix}/analytics-next/bundles/ajs-destination.bundle.js",
        f"{prefix}/next-integrations/integrations/x/1.0.0/x.dynamic.js.gz",
        f"{prefix}/v1/projects/KEY/settings",
        *(f"{prefix}/v1/{e}" for e in sorted(API_ENDPOINTS)),
    )


def prefix_for(analytics: Analytics, site: Site) -> str | None:
    """The prefix first-party delivery serves under on ``site``, or None when it is off there:
    the site's own setting wins over ``analytics.first_party``; ``true`` on a site takes
    ``analytics.first_party``'s path, else the default. Off without a write key."""
    chosen: FirstParty | bool | None = site.first_party
    if chosen is None:
        chosen = analytics.first_party
    if chosen is None or chosen is False or analytics.write_key is None:
        return None
    path = None
    if isinstance(chosen, FirstParty):
        path = chosen.path
    if path is None and analytics.first_party is not None:
        path = analytics.first_party.path
    return path or default_path(analytics.write_key)


def delivery_allowed(headers: MultiMapping[str], site: Site, consent: Consent) -> bool:
    """Whether first-party delivery may serve this request at all: the bootstrap loads the
    library from the site's origin only when it is, and the relay refuses everything else.

    The consent rules decide (gateway/consent.py: ``consent`` with the site's
    ``sites[].consent``): first-party delivery must never carry the events of a visitor who
    declined. This is the one place to call them from for delivery; both callers
    (identity_flow.py, relay.py) go through it.
    """
    settings = effective(consent, site.consent)
    return (
        refusal(
            settings, sec_gpc=headers.get("Sec-GPC"), cookie_headers=headers.getall("Cookie", ())
        )
        is None
    )


def route(method: str, path: str, prefix: str, write_key: str) -> Asset | Api | Refused | None:
    """What a request for ``path`` (no query) is, under ``prefix``; None if not ours (the
    request goes on to the site)."""
    if not path.startswith(prefix + "/"):
        return None
    rest = path[len(prefix) :]
    found: Asset | Api | Refused | None = None
    if rest == "/" + LIBRARY:
        found = Asset("library", f"/analytics.js/v1/{write_key}/analytics.min.js")
    elif rest.startswith("/analytics-next/bundles/"):
        name = rest[len("/analytics-next/bundles/") :]
        if _BUNDLE.fullmatch(name) and ".." not in name:
            found = Asset("bundle", rest)
    elif rest.startswith("/next-integrations/"):
        tail = rest[len("/next-integrations/") :]
        if _INTEGRATION.fullmatch(tail) and ".." not in tail:
            found = Asset("integration", rest)
    elif (settings := _SETTINGS.fullmatch(rest)) is not None:
        if settings.group(1) != write_key:
            return Refused(403, "403 Forbidden: only this site's own write key is served here")
        found = Asset("settings", rest)
    elif rest.startswith("/v1/") and rest[4:] in API_ENDPOINTS:
        if method != "POST":
            return Refused(405, "405 Method Not Allowed: the tracking API takes POST", "POST")
        return Api(rest[4:], rest)
    if found is None:
        return None
    if method not in ("GET", "HEAD"):
        return Refused(405, "405 Method Not Allowed", "GET, HEAD")
    return found


def upstream_url(base: str, path: str) -> str:
    """``path`` on a configured base URL (``cdn_url`` or ``api_url``, which may have a path)."""
    return base.rstrip("/") + path


def api_refusal(
    endpoint: str, body: bytes, authorization: str | None, write_key: str
) -> Refused | None:
    """Why a tracking API request must not be relayed (None: relay it). See guarantee 2."""
    limit = MAX_METRICS_BODY if endpoint == "m" else MAX_API_BODY
    if len(body) > limit:
        return Refused(413, f"413 Content Too Large: at most {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Refused(400, "400 Bad Request: the body is not JSON")
    if not isinstance(data, dict):
        return Refused(400, "400 Bad Request: the body is not a JSON object")
    if endpoint == "m":
        return _metrics_refusal(data, write_key)
    named: list[object] = []
    if authorization is not None:
        named.append(_basic_user(authorization))
    if "writeKey" in data:
        named.append(data["writeKey"])
    if endpoint in ("b", "batch"):
        batch = data.get("batch")
        if not isinstance(batch, list):
            return Refused(400, "400 Bad Request: a batch needs a batch list")
        for item in batch:
            if not isinstance(item, dict):
                return Refused(400, "400 Bad Request: a batch holds JSON objects")
            if "writeKey" in item:
                named.append(item["writeKey"])
    if not named:
        return Refused(403, "403 Forbidden: the request names no write key")
    if any(key != write_key for key in named):
        return Refused(403, "403 Forbidden: only this site's own write key is relayed")
    return None


def _basic_user(authorization: str) -> str | None:
    """The user name of ``Authorization: Basic`` credentials (analytics.js sends the write key
    as the user, no password), None if it is not that."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]


def _metrics_refusal(data: dict[str, Any], write_key: str) -> Refused | None:
    """The library's own counters (``/m``) carry no write key of their own: relayed only in the
    shape analytics.js sends, Segment's allow-listed ``analytics_js.`` metrics, and any ``wk``
    tag must be ours."""
    series = data.get("series")
    if not isinstance(series, list) or not series:
        return Refused(400, "400 Bad Request: metrics need a series list")
    for item in series:
        if not isinstance(item, dict) or not str(item.get("metric", "")).startswith(
            "analytics_js."
        ):
            return Refused(400, "400 Bad Request: not an analytics.js metric")
        tags = item.get("tags")
        if isinstance(tags, dict) and "wk" in tags and tags["wk"] != write_key:
            return Refused(403, "403 Forbidden: only this site's own write key is relayed")
    return None


# The visitor's request headers that reach Segment's API; nothing else (no cookies).
_API_HEADERS = ("Content-Type", "Authorization", "User-Agent", "X-Retry-Count")


def api_headers(
    headers: Mapping[str, str], *, host: str, visitor: str | None
) -> list[tuple[str, str]]:
    """The request head for Segment's API (framing is the upstream client's): ``Host`` the
    API's, the allow-listed visitor headers, the visitor's address in ``X-Forwarded-For``."""
    out = [("Host", host)]
    for name in _API_HEADERS:
        value = headers.get(name)
        if value is not None:
            out.append((name, value))
    if visitor:
        out.append(("X-Forwarded-For", visitor))
    return out


def asset_headers(host: str) -> list[tuple[str, str]]:
    """The request head for the CDN: nothing of the visitor's (the answer is shared by all)."""
    return [("Host", host), ("Accept-Encoding", "identity"), ("User-Agent", "ajs-identity-gateway")]


def authority(url: str) -> str:
    """``host[:port]`` of a configured URL, for the Host header."""
    return urlsplit(url).netloc


def rewrite_settings(body: bytes, *, scheme: str, host: str, prefix: str, cdn_url: str) -> bytes:
    """The project settings as ``scheme://host`` serves them under ``prefix``: events go to this
    origin (the Segment.io integration's ``apiHost`` and ``protocol``, the metrics ``host``),
    and every URL under ``cdn_url`` that is served here points here. Raises ValueError for a
    body that is not a JSON object. Over plain HTTP the library's own metrics are switched off:
    analytics.js sends them over HTTPS whatever the settings say."""
    return _rewrite_settings(body, scheme, host, prefix, cdn_url.rstrip("/"))


@functools.lru_cache(maxsize=64)
def _rewrite_settings(body: bytes, scheme: str, host: str, prefix: str, cdn: str) -> bytes:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the settings are not a JSON object")
    api_host = f"{host}{prefix}/v1"
    base = f"{scheme}://{host}{prefix}"
    data = _rewrite_urls(data, cdn, base, prefix)
    integrations = data.get("integrations")
    segment = integrations.get("Segment.io") if isinstance(integrations, dict) else None
    if isinstance(segment, dict):
        segment["apiHost"] = api_host
        segment["protocol"] = scheme
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        metrics["host"] = api_host
        if scheme != "https":
            metrics["sampleRate"] = 0
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _rewrite_urls(value: Any, cdn: str, base: str, prefix: str) -> Any:
    """``value`` with every string that is a URL under ``cdn`` for something served here
    pointing at ``base`` instead; other strings as they were."""
    if isinstance(value, dict):
        return {k: _rewrite_urls(v, cdn, base, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_urls(v, cdn, base, prefix) for v in value]
    if isinstance(value, str):
        if value == cdn:
            return base
        if value.startswith(cdn + "/"):
            path = value[len(cdn) :]
            if isinstance(route("GET", prefix + path, prefix, ""), Asset):
                return base + path
    return value
