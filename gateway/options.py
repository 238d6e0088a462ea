"""Every configuration key, declared once.

Each key of the config file is a field of one of the frozen dataclasses below, and its one
declaration says everything about it: the YAML name (``key=``, when it differs from the
field's), the type (the annotation), the default, the bounds and the help text::

    ttl: int = field(
        default=300,
        metadata=option("how long a token can be exchanged", key="ttl_seconds", min=10, max=600),
    )

Everything else is derived from these declarations, as mitmproxy derives its options' use
and documentation from one ``add_option`` each:

- :mod:`gateway.config` reads every key that is not ``bespoke`` generically: the value's type
  and bounds are checked and its problem is worded from them ("a whole number from 10 to
  600"); the bespoke keys (hosts, upstreams, signing keys, the admin token, CIDRs) keep
  hand-written rules there.
- the README's configuration reference is :func:`reference_table` (``make docs`` writes it),
  its "allowed" column the words check-config uses; ``tests/test_options.py`` fails when the
  README, or the commented example ``config/domains.yaml``, disagrees with a declaration.
- the modules that need a default or a bound read it from the class (``Signing.lifetime``,
  ``Store.key_prefix``) or from a constant named here (:data:`MAX_TOKEN_TTL`).

Pure: standard library only (and the redis-free store URL check), so the core modules can
take their defaults from here without importing the reader.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from .keys import MIN_LENGTH
from .store_url import parse_store_url

__all__ = [
    "MAX_TOKEN_TTL",
    "MODES",
    "STRATEGIES",
    "Admin",
    "Analytics",
    "Consent",
    "ConsentCookie",
    "ConsentOverride",
    "CrossDomain",
    "Events",
    "FirstParty",
    "IdConflict",
    "Identity",
    "Key",
    "Mode",
    "Option",
    "Proxy",
    "Server",
    "Signing",
    "Site",
    "Store",
    "Strategy",
    "Tokens",
    "UpstreamTLS",
    "declared",
    "declared_key",
    "option",
    "reference_table",
    "walk",
    "worker_count",
]

Strategy = Literal["query", "token", "signed"]
STRATEGIES: tuple[Strategy, ...] = typing.get_args(Strategy)
IdConflict = Literal["url", "cookie"]
# What the gateway does about identity on a site (``sites[].mode``): everything, count what it
# would do and change nothing, or nothing at all.
Mode = Literal["active", "observe", "off"]
MODES: tuple[Mode, ...] = typing.get_args(Mode)

# A token is a bearer credential for the visitor's identity, so it lives 10 minutes at most;
# the store refuses longer TTLs too.
MAX_TOKEN_TTL = 600


@dataclass(frozen=True)
class Option:
    """What a field's declaration says beyond its type and default (see :func:`option`)."""

    help: str
    key: str | None = None
    min: float | None = None
    max: float | None = None
    scale: int = 1
    unit: str = ""
    check: Callable[[str], Any] | None = None
    expected: str = ""
    default_text: str = ""
    bespoke: bool = False


def option(
    help: str,
    *,
    key: str | None = None,
    min: float | None = None,
    max: float | None = None,
    scale: int = 1,
    unit: str = "",
    check: Callable[[str], Any] | None = None,
    expected: str = "",
    default_text: str = "",
    bespoke: bool = False,
) -> dict[str, Option]:
    """The ``metadata`` of a declared field.

    ``help``: what the key does (the README's "meaning"). ``key``: the YAML name, when it is not
    the field's. ``min``/``max``: bounds of a number, in the file's unit; ``scale``: file value
    times ``scale`` is the field's value (days to seconds). ``unit``: ``"s"`` or ``"bytes"``,
    for the reference. ``check``: for a string, its value or None if refused; ``expected`` says
    what it accepts. ``default_text``: the reference's default when the value alone does not say
    it (None, or an empty tuple, that means something). ``bespoke``: config.py reads the key with
    a rule of its own (it needs other keys, or more than one message).
    """
    return {
        "option": Option(help, key, min, max, scale, unit, check, expected, default_text, bespoke)
    }


# -- value checks for strings ----------------------------------------------------------------


def _matching(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern)
    return lambda v: v if compiled.fullmatch(v) else None


def _http_url(v: str) -> str | None:
    parts = urlsplit(v)
    ok = parts.scheme in ("http", "https") and parts.hostname and not parts.query
    return v.rstrip("/") if ok and not parts.fragment else None


def _regex(v: str) -> str | None:
    try:
        re.compile(v)
    except re.error:
        return None
    return v


def _store_url(v: str) -> str | None:
    try:
        parse_store_url(v)
    except ValueError:
        return None
    return v


# The cookie names the gateway writes: an RFC 6265 token, more narrowly.
_COOKIE_NAME = r"[A-Za-z0-9_-]{1,64}"
# A cookie name the gateway only reads (a consent manager's): any RFC 6265 token.
_COOKIE_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}"
_HOST = (
    "a name like www.example.com, or *.example.com, or an IP address as browsers send it "
    "(127.0.0.1, [::1]); no scheme, port or path"
)
_KEYS = f"comma-separated keys of {MIN_LENGTH}+ random characters"

# -- the declarations -------------------------------------------------------------------------


class FirstParty(NamedTuple):
    """First-party delivery switched on (``true`` or ``{path: /…}`` in the file): analytics.js,
    its settings and its tracking API served under ``path`` on each site's own origin
    (``None``: the default path, see :func:`gateway.firstparty.default_path`).

    Deliberately not a dataclass: the declarations treat a dataclass-typed key as a section of
    keys, and this is one key with three forms (false, true, a mapping)."""

    path: str | None = None


_FIRST_PARTY_FORMS = "false, true, or {path: /a/path} (letters, digits, '.', '_', '~', '-')"


@dataclass(frozen=True)
class UpstreamTLS:
    """How the gateway checks an ``https://`` upstream (``sites[].tls``). The gateway is a TLS
    client here only: visitors reach it in plain HTTP behind a TLS-terminating ingress or load
    balancer. Sites that share an upstream share its setting (connections are pooled per
    upstream), so config.py refuses two different ones."""

    verify: bool = field(
        default=True,
        metadata=option(
            "check the upstream's certificate: a chain to a trusted CA, issued to `server_name`; "
            "`false` encrypts without knowing who answers (check-config warns)"
        ),
    )
    ca_file: str | None = field(
        default=None,
        metadata=option(
            "PEM file of the CA certificate(s) the upstream's chain must end in, for a private CA",
            expected="a readable PEM file holding at least one CA certificate",
            default_text="the system's CAs",
            bespoke=True,
        ),
    )
    server_name: str | None = field(
        default=None,
        metadata=option(
            "the name sent in SNI and that the certificate must carry, when the upstream URL "
            "names the server otherwise (an IP address, a Service name)",
            expected="a host name such as legacy.internal, or an IP address",
            default_text="the upstream URL's host",
            bespoke=True,
        ),
    )


@dataclass(frozen=True)
class ConsentCookie:
    """A consent manager's cookie and the value that means "granted" (``consent.cookie``)."""

    name: str = field(
        metadata=option(
            "the consent manager's cookie, e.g. `OptanonConsent` (OneTrust), `CookieConsent` "
            "(Cookiebot) or a site's own",
            check=_matching(_COOKIE_TOKEN),
            expected="a cookie name such as OptanonConsent or euconsent-v2",
        )
    )
    granted: str = field(
        metadata=option(
            "regular expression searched in the cookie's value (URL-decoded): a match is "
            "consent, e.g. `groups=[^&]*C0002:1` for OneTrust's performance group",
            check=_regex,
            expected="a valid regular expression",
        )
    )


@dataclass(frozen=True)
class Consent:
    """Whether a visitor lets the gateway keep an identity for them (``consent``; a site may
    override each key with ``sites[].consent``). Without consent the gateway mints no id,
    writes no identity cookie, decorates no link and the bootstrap sets no id; identity
    parameters are still taken out of arriving URLs. See gateway/consent.py."""

    gpc: bool = field(
        default=True,
        metadata=option(
            "honour Global Privacy Control: a request with `Sec-GPC: 1` has no consent, "
            "whatever a consent cookie says"
        ),
    )
    required: bool = field(
        default=False,
        metadata=option(
            "`true`: no identity without a consent `cookie` that grants it; `false`: only a "
            "consent cookie that does not grant it (or GPC) refuses"
        ),
    )
    cookie: ConsentCookie | None = field(
        default=None,
        metadata=option(
            "the consent manager's cookie: `{name, granted}`",
            expected="a mapping with name and granted",
            default_text="none",
            bespoke=True,
        ),
    )


@dataclass(frozen=True)
class ConsentOverride:
    """``sites[].consent``: the keys of ``consent`` this site sets for itself; each key left
    out is the global one."""

    gpc: bool | None = field(
        default=None,
        metadata=option("`consent.gpc` for this site", default_text="`consent.gpc`"),
    )
    required: bool | None = field(
        default=None,
        metadata=option("`consent.required` for this site", default_text="`consent.required`"),
    )
    cookie: ConsentCookie | None = field(
        default=None,
        metadata=option(
            "`consent.cookie` for this site (its consent manager's)",
            expected="a mapping with name and granted",
            default_text="`consent.cookie`",
            bespoke=True,
        ),
    )


@dataclass(frozen=True)
class Site:
    """A host the gateway answers for and the upstream that serves it."""

    host: str = field(
        metadata=option(
            "exact host or `*.example.com`; an internationalized name may be written in Unicode "
            "(it is read as browsers read it, `pay.großbank.test` = `pay.xn--grobank-2va.test`)",
            expected=_HOST,
            bespoke=True,
        )
    )
    upstream: str = field(
        metadata=option(
            "`http(s)://host:port` origin; the request target is forwarded byte for byte",
            expected="an origin such as http://legacy-www:8000",
            bespoke=True,
        )
    )
    cookie_domain: str | None = field(
        default=None,
        metadata=option(
            "`Domain` of the identity cookies",
            expected="the site host or a parent domain of it, not a public suffix",
            default_text="registrable domain (PSL)",
            bespoke=True,
        ),
    )
    preserve_host: bool = field(
        default=True,
        metadata=option("upstream sees the visitor's `Host` (false: the upstream's)"),
    )
    bootstrap: bool = field(
        default=True, metadata=option("inject the analytics.js bootstrap on this site")
    )
    on_id_conflict: IdConflict = field(
        default="url",
        metadata=option(
            "`url`: an id in the URL replaces the cookie's; `cookie`: keep the existing one"
        ),
    )
    accept: tuple[Strategy, ...] = field(
        default=STRATEGIES,
        metadata=option(
            "which incoming identity forms this site trusts",
            expected=f"a list of {', '.join(STRATEGIES)}",
            default_text="all",
            bespoke=True,
        ),
    )
    mode: Mode = field(
        default="active",
        metadata=option(
            "`active`: identity on; `observe`: identity computed and counted "
            "(`gateway_observed_*`, `/status`) but the visitor gets the upstream's answer "
            "unchanged and the upstream the request as sent; `off`: a plain proxy. A reload "
            "(`SIGHUP`) switches it; see Rolling out to a site"
        ),
    )
    first_party: FirstParty | bool | None = field(
        default=None,
        metadata=option(
            "this site's own first-party delivery: `false` off, `true` on (under "
            "`analytics.first_party`'s path, else the default), `{path: /…}` on under that path",
            expected=_FIRST_PARTY_FORMS,
            default_text="as `analytics.first_party`",
            bespoke=True,
        ),
    )
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    consent: ConsentOverride = field(default_factory=ConsentOverride)
    rescue: bool = field(
        default=False,
        metadata=option(
            "an arrival from another site of this gateway without identity (a navigation made "
            "by page JavaScript) gets one round trip through that site's gateway endpoint, "
            "which sends the visitor's id back (see Rescue of undecorated arrivals)"
        ),
    )

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True)
class CrossDomain:
    """A host (or ``*.`` pattern) whose links carry identity, and how."""

    host: str = field(
        metadata=option(
            "a host (or `*.` pattern) whose links carry identity", expected=_HOST, bespoke=True
        )
    )
    strategy: Strategy = field(
        default="query",
        metadata=option(
            "how its links carry identity: `query` (`ajs_aid`), `token` (opaque, via the "
            "store) or `signed` (HMAC, expiring); see Strategies below"
        ),
    )


@dataclass(frozen=True)
class Analytics:
    write_key: str | None = field(
        default=None,
        metadata=option(
            "the Segment write key; without it no bootstrap is injected",
            check=_matching(r"[A-Za-z0-9_-]{1,128}"),
            expected="letters, digits, '_' or '-'",
        ),
    )
    cdn_url: str = field(
        default="https://cdn.segment.com",
        metadata=option(
            "where analytics.js is loaded from (by browsers; with first-party delivery, by the "
            "gateway)",
            check=_http_url,
            expected="an http(s) URL, no query",
        ),
    )
    api_url: str = field(
        default="https://api.segment.io",
        metadata=option(
            "Segment's tracking API, where first-party delivery relays events "
            "(`https://events.eu1.segmentapis.com` for an EU workspace)",
            check=_http_url,
            expected="an http(s) URL, no query",
        ),
    )
    first_party: FirstParty | None = field(
        default=None,
        metadata=option(
            "serve analytics.js, its settings and its tracking API under a path on each site's "
            "own origin, so that blockers of Segment's hosts and of `/analytics.js/v1/` do not "
            "lose the site's events (see First-party delivery below); needs `write_key`",
            expected=_FIRST_PARTY_FORMS,
            default_text="`false`",
            bespoke=True,
        ),
    )


@dataclass(frozen=True)
class Events:
    """Server-side "Cross Domain Navigation" events, sent to Segment's HTTP tracking API off
    the request path (see gateway/delivery.py). ``write_key`` is required when ``enabled``
    (checked in config.py, which sees both keys)."""

    enabled: bool = field(
        default=False,
        metadata=option(
            "send a `Cross Domain Navigation` track event for every arrival whose id came in "
            "the URL (see Server-side events below)"
        ),
    )
    write_key: str | None = field(
        default=None,
        repr=False,
        metadata=option(
            "the Segment write key the events are sent with; required when `enabled` (use "
            "`${SEGMENT_WRITE_KEY}`)",
            check=_matching(r"[A-Za-z0-9_-]{1,128}"),
            expected="letters, digits, '_' or '-'",
        ),
    )
    endpoint: str | None = field(
        default=None,
        metadata=option(
            "Segment's HTTP tracking API (or a regional endpoint, or a proxy of your own); "
            "batches are posted to `{endpoint}/v1/batch`",
            check=_http_url,
            expected="an http(s) URL, no query",
            default_text="`analytics.api_url`",
        ),
    )
    batch_size: int = field(
        default=100,
        metadata=option(
            "most events in one request (a batch also stays under Segment's 500 KB)",
            min=1,
            max=500,
        ),
    )
    flush_interval: float = field(
        default=1.0,
        metadata=option(
            "longest an event waits for its batch to fill before it is sent",
            min=0.01,
            max=60,
            unit="s",
        ),
    )
    queue_size: int = field(
        default=10000,
        metadata=option(
            "events held for delivery; when full, new events are dropped and counted "
            '(`gateway_events_dropped_total{reason="queue_full"}`)',
            min=1,
            max=1_000_000,
        ),
    )
    timeout: float = field(
        default=10.0,
        metadata=option(
            "per request to the endpoint; a request that times out is retried",
            min=0.1,
            max=120,
            unit="s",
        ),
    )


@dataclass(frozen=True)
class Identity:
    cookie_max_age: int = field(
        default=365 * 86400,
        metadata=option(
            "lifetime of the identity cookies, in days",
            key="cookie_max_age_days",
            min=1,
            max=400,
            scale=86400,
        ),
    )
    id_pattern: str | None = field(
        default=None,
        metadata=option(
            "regular expression an incoming id must match in full (a fixed safety check "
            "applies on top)",
            check=_regex,
            expected="a valid regular expression",
            default_text="a UUID or `[A-Za-z0-9._:-]{1,128}`",
        ),
    )
    uid_max_length: int = field(
        default=256, metadata=option("longest accepted `ajs_uid`", min=1, max=4096)
    )
    mint: bool = field(
        default=True,
        metadata=option(
            "mint ids for new visitors and renew the id cookies on HTML responses (server-set "
            "cookies escape Safari's 7-day cap on script cookies)"
        ),
    )
    shadow_cookie: str = field(
        default="ajs_gw_aid",
        metadata=option(
            "name of the `HttpOnly` server-only copy of the anonymous id, written next to "
            "`ajs_anonymous_id` with the same scope and lifetime; a visitor whose readable "
            "cookie is gone gets the id back from it (see Identity rules)",
            check=_matching(_COOKIE_NAME),
            expected="1-64 of letters, digits, '_' or '-', not ajs_anonymous_id or ajs_user_id",
        ),
    )


@dataclass(frozen=True)
class Store:
    url: str = field(
        default="memory://",
        metadata=option(
            "token store (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`, "
            "`redis+cluster://`); `memory://` lives in one process, so it is refused when a "
            "`token` target is served by more than one worker (`server.workers` or `--workers`)",
            check=_store_url,
            expected="memory://, redis://host:6379/0, rediss://…",
        ),
    )
    timeout_ms: int = field(
        default=50,
        metadata=option(
            "per store operation, in milliseconds; a slow store never blocks a page",
            min=1,
            max=5000,
        ),
    )
    key_prefix: str = field(
        default="ajsgw:",
        metadata=option(
            "namespace of the gateway's Redis keys",
            check=_matching(r"[A-Za-z0-9:_.-]{1,64}"),
            expected="1-64 of letters, digits, ':', '_', '-', '.'",
        ),
    )
    circuit_failures: int = field(
        default=5,
        metadata=option(
            "store failures or timeouts in a row that open the circuit breaker: store calls "
            "are then skipped (token links left undecorated, arriving tokens refused) until "
            "`circuit_cooldown` has passed, then one call probes the store",
            min=1,
            max=1000,
        ),
    )
    circuit_cooldown: float = field(
        default=10.0,
        metadata=option(
            "how long the open circuit skips store calls before probing it again",
            min=0.1,
            max=3600,
            unit="s",
        ),
    )


@dataclass(frozen=True)
class Tokens:
    """Opaque tokens for ``strategy: token`` targets. Short-lived by design: a token is a bearer
    credential for the visitor's identity, so its TTL is capped at 10 minutes."""

    ttl: int = field(
        default=300,
        metadata=option(
            "how long a token can be exchanged, in seconds",
            key="ttl_seconds",
            min=10,
            max=MAX_TOKEN_TTL,
        ),
    )
    single_use: bool = field(
        default=False, metadata=option("exchange each token at most once (`GETDEL`)")
    )


@dataclass(frozen=True)
class Signing:
    """HMAC keys for ``strategy: signed`` targets (the raw value; parsed by strategies.py)."""

    keys: str | None = field(
        default=None,
        metadata=option(
            "HMAC keys, comma-separated: the first signs, all verify (rotation); required with "
            "a `signed` target; use `${GATEWAY_SIGNING_KEYS}`. Placeholders (`REPLACE_ME`, "
            "`change-me`, `secret`, `example`…) and typed or patterned keys (`0123456789…`, "
            "repeated stretches, few distinct characters) are refused. `python -m gateway "
            "gen-key` prints one",
            expected=_KEYS,
            bespoke=True,
        ),
    )
    lifetime: int = field(
        default=600,
        metadata=option(
            "how long a signed link verifies, in seconds",
            key="lifetime_seconds",
            min=10,
            max=86400,
        ),
    )
    bind_user_agent: bool = field(
        default=False,
        metadata=option(
            "a signed link or a token is accepted only in the same browser (User-Agent hash)"
        ),
    )


@dataclass(frozen=True)
class Server:
    host: str = field(
        default="0.0.0.0",
        metadata=option("proxy listen address (`serve --host` overrides it)"),
    )
    port: int = field(
        default=8080,
        metadata=option("proxy port (`serve --port` overrides it)", min=0, max=65535),
    )
    workers: int = field(
        default=1,
        metadata=option(
            "processes sharing the port (`SO_REUSEPORT`; `serve --workers` overrides it); "
            "`auto`: one per CPU the gateway may run on, like nginx's `worker_processes auto`",
            min=1,
            max=256,
            expected="a whole number from 1 to 256, or auto",
            bespoke=True,
        ),
    )


def worker_count(raw: object, cpus: int) -> int | None:
    """``server.workers`` or ``--workers`` as a number of processes: a whole number from 1 to
    256, or ``auto`` for ``cpus`` (the CPUs the gateway may run on; at most 256); None if
    ``raw`` is neither."""
    key = declared_key(Server, "workers").option
    assert key.min is not None and key.max is not None
    if raw == "auto":
        return max(int(key.min), min(cpus, int(key.max)))
    if isinstance(raw, bool) or not isinstance(raw, int) or not key.min <= raw <= key.max:
        return None
    return raw


@dataclass(frozen=True)
class Admin:
    """The admin listener. With ``token`` set, ``/metrics``, ``POST /links`` and the detail of
    ``/readyz`` need ``Authorization: Bearer <token>``; the probes' answers stay open."""

    host: str = field(
        default="127.0.0.1",
        metadata=option("admin listen address (`/healthz`, `/readyz`, `/metrics`, `/links`)"),
    )
    port: int = field(
        default=9901, metadata=option("admin port; never reachable via the sites", min=0, max=65535)
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata=option(
            "bearer token for the admin port (use `${GATEWAY_ADMIN_TOKEN}`; placeholders "
            "refused; `python -m gateway gen-key` prints one): `/metrics` and `POST /links` "
            "then need `Authorization: Bearer <token>`, and `/readyz` shows only the status to "
            "callers "
            "without it. Set it whenever `admin.host` is not loopback",
            expected=f"{MIN_LENGTH}+ random characters",
            bespoke=True,
        ),
    )


@dataclass(frozen=True)
class Proxy:
    """Upstream connection behaviour. There is deliberately no total-time limit: it would cut
    long downloads; ``read_timeout`` bounds the silence between two reads instead."""

    connect_timeout: float = field(
        default=5.0,
        metadata=option("to open an upstream connection, then `504`", min=0.01, max=300, unit="s"),
    )
    read_timeout: float = field(
        default=60.0,
        metadata=option(
            "longest silence from the upstream, then `504` (no total limit: long downloads are "
            "not cut)",
            min=0.01,
            max=3600,
            unit="s",
        ),
    )
    pool_size: int = field(
        default=512,
        metadata=option(
            "concurrent upstream requests in total; idle connections are kept alive",
            min=1,
            max=100000,
        ),
    )
    pool_size_per_host: int | None = field(
        default=None,
        metadata=option(
            "concurrent requests per upstream, so that one slow or flooded upstream cannot "
            "take every connection (0: no separate bound)",
            min=0,
            max=100000,
            default_text="half of `pool_size`",
        ),
    )
    pool_wait_timeout: float = field(
        default=10.0,
        metadata=option(
            "longest wait for a free upstream slot, then `503`", min=0.01, max=3600, unit="s"
        ),
    )
    send_timeout: float = field(
        default=60.0,
        metadata=option(
            "a visitor that reads nothing of a streamed response this long is cut off (its "
            "upstream connection is freed)",
            min=0.1,
            max=3600,
            unit="s",
        ),
    )
    websocket_max_message: int = field(
        default=4 * 1024 * 1024,
        metadata=option(
            "largest WebSocket message relayed either way; larger closes with `1009`",
            min=1024,
            max=1 << 30,
            unit="bytes",
        ),
    )
    keepalive_timeout: float = field(
        default=30.0,
        metadata=option(
            "idle upstream connections are closed after this", min=0, max=3600, unit="s"
        ),
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(),
        metadata=option(
            "front proxies (the ingress or load balancer that ends TLS) whose `X-Forwarded-For` "
            "and `X-Forwarded-Proto` are trusted and appended to; from any other peer they are "
            "replaced, so the upstream sees `http` and the proxy's address",
            expected="a list of IP addresses or CIDRs, e.g. [10.0.0.0/8], or one comma-separated "
            "string of them (for ${ENV})",
            default_text="none",
            bespoke=True,
        ),
    )
    drain_timeout: float = field(
        default=25.0,
        metadata=option(
            "on `SIGTERM`, how long requests in flight get to finish", min=0, max=3600, unit="s"
        ),
    )
    max_header_size: int = field(
        default=16384,
        metadata=option(
            "longest header line accepted from visitors and upstreams",
            min=1024,
            max=1 << 20,
            unit="bytes",
        ),
    )
    client_idle_timeout: float = field(
        default=75.0,
        metadata=option(
            "a visitor connection idle, or sending its request head this slowly, is closed",
            min=0.1,
            max=86400,
            unit="s",
        ),
    )

    # Compressed HTML decoding to more than this is not rewritten (see proxy.py): a
    # decompression bomb never inflates whole, and one page's work stays bounded.
    max_decoded_html: int = field(
        default=32 * 1024 * 1024,
        metadata=option(
            "the most compressed HTML may decode to and be rewritten; beyond it the page is not "
            "rewritten (see Compressed HTML below)",
            min=65536,
            max=1 << 34,
            unit="bytes",
        ),
    )

    @property
    def per_host_limit(self) -> int:
        """Concurrent requests per upstream origin (0: only the pool's own bound)."""
        if self.pool_size_per_host is None:
            return max(1, self.pool_size // 2)
        return self.pool_size_per_host


# -- reading the declarations ------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One declared key: its field, its YAML name, its type without ``None`` (``base``), its
    default (``dataclasses.MISSING`` when required) and its :class:`Option`."""

    name: str
    key: str
    base: Any
    default: Any
    option: Option

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def section(self) -> type | None:
        """The declared class whose fields are this key's keys (``proxy``), if it is one."""
        return typing.cast(type, self.base) if dataclasses.is_dataclass(self.base) else None

    @property
    def items(self) -> type | None:
        """The declared class of this list's items (``sites``), if it is a list of them."""
        args = typing.get_args(self.base)
        if typing.get_origin(self.base) is tuple and args and dataclasses.is_dataclass(args[0]):
            return typing.cast(type, args[0])
        return None

    @property
    def words(self) -> tuple[str, ...]:
        """The values a key of a ``Literal`` type allows (none for any other key)."""
        if typing.get_origin(self.base) is Literal:
            return typing.get_args(self.base)
        return ()

    @property
    def file_default(self) -> Any:
        """The default as the file writes it (``365`` days, not seconds)."""
        if self.option.scale != 1 and isinstance(self.default, int):
            return self.default // self.option.scale
        return self.default

    @property
    def expected(self) -> str:
        """What a value may be, as check-config words it."""
        o = self.option
        if o.expected:
            return o.expected
        if self.base is bool:
            return "true or false"
        if self.base is int:
            return f"a whole number from {o.min:.0f} to {o.max:.0f}"
        if self.base is float:
            return f"a number from {o.min:g} to {o.max:g}"
        if typing.get_origin(self.base) is Literal:
            return " or ".join(typing.get_args(self.base))
        return "a string"

    def convert(self, raw: Any) -> Any:
        """The field value for ``raw`` (a YAML scalar), or None if it is not acceptable."""
        o, base = self.option, self.base
        if base is bool:
            return raw if isinstance(raw, bool) else None
        if base is int or base is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                return None
            if base is int and not isinstance(raw, int):
                return None
            assert o.min is not None and o.max is not None
            if not o.min <= raw <= o.max:
                return None
            return raw * o.scale if base is int else float(raw)
        if typing.get_origin(base) is Literal:
            return raw if raw in typing.get_args(base) else None
        if not isinstance(raw, str):
            return None
        if o.check is not None:
            return o.check(raw)
        return raw or None


def declared_key(cls: type, name: str) -> Key:
    """The declaration of the field ``name`` of ``cls``."""
    for k in declared(cls):
        if k.name == name:
            return k
    raise KeyError(f"{cls.__name__} declares no key {name!r}")


@functools.cache
def declared(cls: type) -> tuple[Key, ...]:
    """The keys a declared dataclass reads, in declaration order. Raises TypeError for a field
    without an :func:`option`, or one the generic reader cannot read and that is not
    ``bespoke``, so a half-declared key fails every test rather than being skipped. A field
    whose type is a declared class is a section, and needs no option. Fields whose name starts
    with ``_``, or with ``metadata={"option": None}``, are not keys."""
    hints = typing.get_type_hints(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name.startswith("_") or ("option" in f.metadata and f.metadata["option"] is None):
            continue
        o = f.metadata.get("option")
        if o is None and dataclasses.is_dataclass(hint):
            o = Option("", bespoke=True)  # a section: its own fields are the keys
        if not isinstance(o, Option):
            raise TypeError(f"{cls.__name__}.{f.name} has no option(...) in its metadata")
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
        base = args[0] if optional else hint
        generic = base in (bool, int, float, str) or typing.get_origin(base) is Literal
        if not (o.bespoke or generic):
            raise TypeError(f"{cls.__name__}.{f.name}: {hint} needs bespoke=True and a rule")
        if base in (int, float) and not o.bespoke and (o.min is None or o.max is None):
            raise TypeError(f"{cls.__name__}.{f.name}: a number needs min= and max=")
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(Key(f.name, o.key or f.name, base, default, o))
    return tuple(out)


# -- the README's configuration reference ------------------------------------------------------


def _shown_default(k: Key) -> str:
    o, value = k.option, k.file_default
    if o.default_text:
        return o.default_text
    if k.required:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    if o.unit == "bytes" and value >= 1024:
        size = f"{value >> 20} MiB" if value % (1 << 20) == 0 else f"{value >> 10} KiB"
        return f"{value} ({size})"
    return f"{value:g} {o.unit}".rstrip()


def reference_table(root: type) -> str:
    """The Markdown table of every key under ``root`` (the declared class of the whole file):
    key, default, allowed values (as check-config words them), meaning. A list of items gets a
    row of its own, then its items' keys; a section only its keys."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    lines += (_row(path, k) for path, k in walk(root))
    return "\n".join(lines) + "\n"


def walk(root: type, prefix: str = "") -> Iterator[tuple[str, Key]]:
    """Every key under ``root`` with its path (``proxy.read_timeout``, ``sites[].host``); a
    list of items (``sites[]``) comes before its items' keys, a section (``proxy``) not at all."""
    for k in declared(root):
        path = f"{prefix}{k.key}"
        if k.section is not None:
            yield from walk(k.section, f"{path}.")
        elif k.items is not None:
            yield f"{path}[]", k
            yield from walk(k.items, f"{path}[].")
        else:
            yield path, k


def _row(path: str, k: Key) -> str:
    allowed = k.expected.replace("|", "\\|")
    return f"| `{path}` | {_shown_default(k)} | {allowed} | {k.option.help} |"
