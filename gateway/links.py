"""Pure: which links carry identity, and what they carry; and the links minted on request for
apps, emails and partners.

``LinkDecorator`` decides, for each link of a page (or a redirect's Location), whether it goes to
a configured cross-domain target, following the WHATWG URL parser where it decides the host
(see :mod:`gateway.identity`), and decorates it; ``TargetParams`` says which parameters a link
from this page view carries to each target.

Targets differ by strategy: ``query`` links carry the raw ids, ``token`` links an opaque token
minted once for the page view, ``signed`` links the ids with an expiring HMAC that also covers
the target host (so each host gets its own signature). A target whose strategy cannot be served
right now (no token because the store is down, no signing keys) gets no parameters at all:
never a fall-back to raw ids for a target that asked not to see them.

A link minted on request (``python -m gateway link``, ``POST /links``: see
:mod:`gateway.applinks`) goes to a configured cross-domain only and carries the ids by that
target's strategy, as a page's link would; its token or signature says it was minted for an
app (:data:`gateway.strategies.Origin`). :func:`plan_app_link` checks the request and
:func:`app_link_url` writes the link once the token (if any) is stored.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from .config import CrossDomain, Strategy
from .hosts import Patterns, compile_patterns, first_match, hostname, url_domain
from .identity import C0_CONTROL_OR_SPACE, TAB_OR_NEWLINE, IdRules, decorate_url
from .options import MAX_TOKEN_TTL, Signing, Tokens, declared_key
from .params import AID_PARAM, IDENTITY_PARAMS, TOKEN_PARAM, UID_PARAM
from .strategies import SigningKeys, sign_params

# The freshness endpoint, on every site's own origin (see identity_flow.IdentityFlow.fresh_link).
# The name is unlikely to collide with a legacy site's own paths.
FRESH_LINK_PATH = "/_ajs_gateway/link"
# An absolute http(s) URL of printable ASCII without backslashes: nothing a browser could read
# differently from us (it strips tabs and newlines and treats "\\" as "/").
_ABSOLUTE_URL = re.compile(r"(?i)https?://[\x21-\x5b\x5d-\x7e]+")


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_WEB_SCHEMES = ("http", "https")
_Origin = tuple[str, str]  # (scheme, host)


def _web_target(url: str, base: _Origin | None) -> _Origin | None:
    """Scheme and host an http(s) link goes to, resolved against ``base``; None if not http(s).

    Follows the WHATWG URL parser where it decides the host (see the module docstring). Only
    scheme and host are needed, so relative references simply inherit the base's.
    """
    s = TAB_OR_NEWLINE.sub("", url.strip(C0_CONTROL_OR_SPACE)).replace("\\", "/")
    m = _SCHEME.match(s)
    if m:
        scheme = m.group(1).lower()
        if scheme not in _WEB_SCHEMES:
            return None
        rest = s[m.end() :]
        if base is not None and base[0] == scheme and not rest.startswith("//"):
            return base
        return _authority(scheme, rest.lstrip("/"))
    if base is None:
        return None
    if s.startswith("//"):
        return _authority(base[0], s.lstrip("/"))
    return base


def _authority(scheme: str, s: str) -> _Origin | None:
    auth = re.split(r"[/?#]", s, maxsplit=1)[0].rpartition("@")[2]
    if auth.startswith("["):
        end = auth.find("]")
        if end < 0:
            return None
        host, port = auth[: end + 1], auth[end + 1 :]
        if port and not port.startswith(":"):
            return None
        port = port[1:]
        if not re.fullmatch(r"\[[0-9a-fA-F:.]+\]", host):
            return None
    else:
        raw_host, _, port = auth.partition(":")
        host = url_domain(raw_host)
        if host is None:
            return None
    if port and not (port.isdigit() and port.isascii() and int(port) <= 65535):
        return None
    return scheme, host.lower()


_MEMO_LIMIT = 4096


@functools.lru_cache(maxsize=1024)
def _no_target(host: str, own: str | None, patterns: Patterns) -> bool:
    return host == own or first_match(host, patterns) is None


def _quick_page_host(page_url: str) -> str | None:
    """The host of a plain absolute page URL without the full parse (None: parse it)."""
    m = _QUICK_ABSOLUTE.match(page_url)
    if m is None or not page_url[: m.start(1)].lower().startswith(("http:", "https:")):
        return None
    authority = _QUICK_AUTHORITY.fullmatch(m.group(1))
    if authority is None:
        return None
    host = authority.group(1).lower()
    return None if "xn--" in host else host


ParamsFor = Callable[[str, str], Sequence[tuple[str, str]] | None]
"""(matched target pattern, target host) -> the params for a link there, or None for none."""


class LinkDecorator:
    """The rewriter's link policy: add the identity params to links that leave for a target site.

    A URL is decorated when it resolves (against ``<base href>``, itself resolved against the
    page URL) to an http(s) URL whose host matches one of ``targets`` and is not ``own_host``.
    Everything else (``javascript:``, ``mailto:``, same-site links, unparsable URLs) is left
    alone. ``params`` is either the params for every target, or a function of the matched
    pattern and host (targets differ by strategy: raw id, token, or a signature that covers the
    target host). ``targets_hit`` counts decorations per matched target pattern, for metrics.
    Hosts match targets as :func:`gateway.hosts.matches` says, the first target listed first.
    """

    def __init__(
        self,
        own_host: str,
        page_url: str,
        targets: Sequence[str],
        params: Sequence[tuple[str, str]] | ParamsFor = (),
        *,
        replace: Collection[str] = (),
    ) -> None:
        self._own = hostname(own_host)
        # A frozenset once here, so decorate_url's own frozenset() of it costs nothing per link.
        self._replace = frozenset(replace)
        self._page_url = page_url
        self._page_parsed: _Origin | object | None = _UNKNOWN
        self._patterns = compile_patterns(tuple(targets))
        # Relative links resolve to the page's host: they can skip the full parse only when
        # that host is no target (it normally is the site's own).
        page_host = _quick_page_host(page_url)
        if page_host is None:
            page = self._page
            page_host = hostname(page[1]) if page is not None else None
        self._page_host = page_host
        self._relative_is_safe = page_host is not None and _no_target(
            page_host, self._own, self._patterns
        )
        # The host each <base href> of the page resolves to (a page has one, and it applies
        # to every link after it), None where it resolves to no http(s) origin, _UNKNOWN
        # where it cannot be parsed.
        self._base_hosts: dict[str, str | object | None] = {}
        if callable(params):
            self._params_for: ParamsFor = params
        else:
            fixed = tuple(params)
            self._params_for = lambda pattern, host: fixed
        self.targets_hit: collections.Counter[str] = collections.Counter()
        # By the URL alone where there is no <base> (no tuple to build and hash per link).
        self._memo: dict[str | tuple[str, str], tuple[str | None, str | None]] = {}

    @property
    def _page(self) -> _Origin | None:
        """The page URL parsed in full, only when a link needs the full parse."""
        if self._page_parsed is _UNKNOWN:
            try:
                self._page_parsed = _web_target(self._page_url, None)
            except (UnicodeError, ValueError):
                self._page_parsed = None
        return self._page_parsed  # type: ignore[return-value]

    def decorate(self, url: str, base: str | None) -> str | None:
        """The original ``url`` text with the params added, or None to leave it as it is."""
        # Pages repeat their links (navigation, footers): decide each distinct one once.
        key = url if base is None else (url, base)
        memo = self._memo.get(key)
        if memo is not None:
            result, pattern = memo
            if pattern is not None:
                self.targets_hit[pattern] += 1
            return result
        result = pattern = None
        target = self._target(url, base) if url.strip(C0_CONTROL_OR_SPACE) else None
        if target is not None:
            params = self._params_for(*target)
            if params:
                pattern = target[0]
                self.targets_hit[pattern] += 1
                result = decorate_url(url, params, self._replace)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[key] = (result, pattern)
        return result

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        """Hidden inputs for a GET form submitting to a target (its query is replaced by them)."""
        if not action.strip(C0_CONTROL_OR_SPACE):  # submits to the page itself
            return None
        return self._params(action, base)

    def target_of(self, url: str, base: str | None = None) -> str | None:
        """The target pattern ``url`` leads to, the one :meth:`decorate` would decorate it for
        (whatever the params), or None. Counts nothing."""
        if not url.strip(C0_CONTROL_OR_SPACE):
            return None
        target = self._target(url, base)
        return None if target is None else target[0]

    def _target(self, url: str, base: str | None) -> tuple[str, str] | None:
        """(the target pattern, the host) of a link that leaves for a target, else None."""
        host = _quick_host(url)
        if base is not None and not isinstance(self._base_host(base), str):
            host = _UNKNOWN  # a <base> of no http(s) origin: the full parse decides
        elif host is _RELATIVE:
            # The page's host, or its <base>'s.
            if base is None:
                if self._relative_is_safe:
                    return None
                host = self._page_host
            else:
                host = self._base_host(base)
        if host is _UNKNOWN:
            try:
                page = self._page
                base_origin = page if base is None else (_web_target(base, page) or page)
                target = _web_target(url, base_origin)
            except (UnicodeError, ValueError):
                return None
            host = None if target is None else hostname(target[1])
        if not isinstance(host, str) or host == self._own:
            return None
        pattern = first_match(host, self._patterns)
        return None if pattern is None else (pattern, host)

    def _base_host(self, base: str) -> str | object | None:
        """The host ``<base href=base>`` makes relative links lead to (see _base_hosts)."""
        host = self._base_hosts.get(base, _UNKNOWN)
        if host is _UNKNOWN:
            try:
                page = self._page
                origin = _web_target(base, page) or page
                host = None if origin is None else hostname(origin[1])
            except (UnicodeError, ValueError):
                host = _UNKNOWN
            if len(self._base_hosts) < _MEMO_LIMIT:
                self._base_hosts[base] = host
        return host

    def _params(self, url: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        target = self._target(url, base)
        if target is None:
            return None
        pattern, host = target
        params = self._params_for(pattern, host)
        if not params:
            return None
        self.targets_hit[pattern] += 1
        return params


_UNKNOWN = object()
# A relative reference: it leads to the page's host, or its <base>'s.
_RELATIVE = object()
_QUICK_ABSOLUTE = re.compile(r"(?i)(?:https?:)?//([^/?#]*)")
_QUICK_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# Authorities the quick path reads exactly as the WHATWG URL parser does: optional userinfo of
# plain characters, an ASCII domain whose last label is not numeric (no IPv4 number forms),
# an optional decimal port. Anything else (%, non-ASCII, brackets, odd ports, and ``xn--``
# labels, see _quick_host) is parsed fully.
_QUICK_AUTHORITY = re.compile(
    r"(?:[A-Za-z0-9._~!$&'()*+,;=:-]*@)?"
    r"((?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]*[A-Za-z-][A-Za-z0-9-]*)\.?(?::([0-9]{0,5}))?"
)


@functools.lru_cache(maxsize=_MEMO_LIMIT)
def _quick_host(url: str) -> str | object | None:
    """The host ``url`` leads to, _RELATIVE for a relative reference (the host of the page or
    its <base>), None when it is no target's for sure, or _UNKNOWN when only the full parse
    can tell. Most links on a page are relative, other schemes, or plain absolute URLs, and
    the full URL parse costs several times the rewriting of the tag. Memoised across pages
    (it does not depend on the page): a site's pages repeat their navigation and footers."""
    u = url.strip(C0_CONTROL_OR_SPACE)
    if "\\" in u or "\t" in u or "\n" in u or "\r" in u:
        return _UNKNOWN
    m = _QUICK_ABSOLUTE.match(u)
    if m is None:
        scheme = _QUICK_SCHEME.match(u)
        if u.startswith("/") or scheme is None:
            return _RELATIVE
        # Other schemes are never decorated; "http:x" forms depend on the page's scheme.
        return None if scheme.group(1).lower() not in ("http", "https") else _UNKNOWN
    authority = _QUICK_AUTHORITY.fullmatch(m.group(1))
    if authority is None:
        return _UNKNOWN
    port = authority.group(2)
    if port and int(port) > 65535:
        return None  # the browser cannot follow it either
    host = authority.group(1).lower()
    # An xn-- label is only a host if its Punycode is valid: hosts.domain_to_ascii checks that.
    return _UNKNOWN if "xn--" in host else host


def decorate_location(
    location: str,
    request_url: str,
    *,
    own_host: str,
    targets: Sequence[str],
    params: Sequence[tuple[str, str]] | ParamsFor,
    replace: Collection[str] = (),
) -> str | None:
    """Decorate an upstream redirect's ``Location`` the way a link on that page would be.

    A relative ``Location`` resolves against the request URL. Returns the new header value, or
    None to leave the header unchanged.
    """
    decorator = LinkDecorator(own_host, request_url, targets, params, replace=replace)
    return decorator.decorate(location, None)


def protected_target(to: str, own_host: str, patterns: Sequence[str]) -> str | None:
    """The target pattern an absolute URL points at, or None if it is not a configured target
    other than ``own_host`` (the freshness endpoint redirects nowhere else)."""
    if not patterns or not _ABSOLUTE_URL.fullmatch(to):
        return None
    return LinkDecorator(own_host, f"http://{own_host}/", patterns).target_of(to)


class TargetParams:
    """``(pattern, host) -> params`` for one page view; see identity.LinkDecorator."""

    def __init__(
        self,
        cross_domains: Sequence[CrossDomain],
        *,
        aid: str,
        uid: str | None,
        token: str | None,
        keys: SigningKeys | None,
        expires: int,
        user_agent: str | None,
    ) -> None:
        self._strategy: Mapping[str, Strategy] = {c.host: c.strategy for c in cross_domains}
        self._query = [(AID_PARAM, aid)] + ([(UID_PARAM, uid)] if uid else [])
        self._aid = aid
        self._uid = uid
        self._token = token
        self._keys = keys
        self._expires = expires
        self._user_agent = user_agent
        # A signature covers its target host: one per host and page view.
        self._signed: dict[str, Sequence[tuple[str, str]] | None] = {}

    def __call__(self, pattern: str, host: str) -> Sequence[tuple[str, str]] | None:
        strategy = self._strategy.get(pattern)
        if strategy == "query":
            return self._query
        if strategy == "token":
            return None if self._token is None else [(TOKEN_PARAM, self._token)]
        if strategy != "signed" or self._keys is None:
            return None
        if host not in self._signed:
            try:
                self._signed[host] = sign_params(
                    aid=self._aid,
                    uid=self._uid,
                    target_host=host,
                    expires=self._expires,
                    keys=self._keys,
                    user_agent=self._user_agent,
                )
            except ValueError:
                self._signed[host] = None
        return self._signed[host]


# --- Links minted on request, for apps, emails and partners ----------------------------------

_TOKEN_TTL = declared_key(Tokens, "ttl")
_SIGNED_LIFETIME = declared_key(Signing, "lifetime")


class LinkRefused(ValueError):
    """A link that cannot be minted: the message says what was wrong and what would be right
    (and never repeats an id)."""


def configured_target(to: str, patterns: Sequence[str]) -> tuple[str, str] | None:
    """``(pattern, host)`` of the configured cross-domain an absolute http(s) URL leads to, as
    a browser reads the URL; None for anything else."""
    if not patterns or not _ABSOLUTE_URL.fullmatch(to):
        return None
    hits: list[tuple[str, str]] = []

    def record(pattern: str, host: str) -> Sequence[tuple[str, str]]:
        hits.append((pattern, host))
        return [("", "")]

    # No page and no host of its own: every configured target is a target.
    LinkDecorator("", "about:blank", patterns, record).decorate(to, None)
    return hits[0] if hits else None


@dataclass(frozen=True)
class AppLinkPlan:
    """A checked request for a link: where it goes, how, with which ids, until when."""

    to: str
    pattern: str
    host: str
    strategy: Strategy
    aid: str
    uid: str | None
    # Seconds a token is kept or a signature verifies; None for a query link.
    ttl: int | None
    # Unix seconds; None for a query link, which does not expire.
    expires_at: int | None


def plan_app_link(
    to: str,
    *,
    anonymous_id: str,
    user_id: str | None,
    ttl: int | None,
    cross_domains: Sequence[CrossDomain],
    rules: IdRules,
    token_ttl: int,
    signed_lifetime: int,
    now: float,
) -> AppLinkPlan:
    """Check a request for a link to ``to`` and say how it will be made; raises LinkRefused.

    ``ttl`` defaults to the target's own credential lifetime (``token_ttl``, from
    ``tokens.ttl_seconds``, or ``signed_lifetime``, from ``signing.lifetime_seconds``) and may
    not exceed what the fleet accepts: tokens live at most the store's cap, signatures at most
    ``signing.lifetime_seconds`` (longer ones are refused on arrival). A query link carries the
    raw id and does not expire, so ``ttl`` does not apply to it.
    """
    patterns = [c.host for c in cross_domains]
    hit = configured_target(to, patterns)
    if hit is None:
        listed = ", ".join(patterns) or "none are configured"
        raise LinkRefused(
            f"{to[:200]!r} is not an http(s) link to a configured cross-domain (the "
            f"cross_domains are: {listed})"
        )
    pattern, host = hit
    aid = rules.valid_aid(anonymous_id)
    if aid is None:
        raise LinkRefused(
            "the anonymous id is not valid (a UUID, or 1-128 of letters, digits and . _ : -, "
            "or what identity.id_pattern allows)"
        )
    uid = None
    if user_id is not None:
        uid = rules.valid_uid(user_id)
        if uid is None:
            raise LinkRefused(
                f"the user id is not valid (1-{rules.uid_max_len} printable characters, "
                "none of \" ' ` < > ; , \\, no space at either end; leave it out when there is "
                "none)"
            )
    strategy = {c.host: c.strategy for c in cross_domains}[pattern]
    if strategy == "query":
        return AppLinkPlan(to, pattern, host, strategy, aid, uid, None, None)
    if strategy == "token":
        # A token is a bearer credential for the visitor's identity: an app's lives no longer
        # than a page's may (the store refuses longer TTLs too).
        low, high, what = int(_TOKEN_TTL.option.min or 1), MAX_TOKEN_TTL, "a token"
        default = token_ttl
    else:
        low, high, what = int(_SIGNED_LIFETIME.option.min or 1), signed_lifetime, "a signed link"
        default = signed_lifetime
    if ttl is None:
        ttl = default
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not low <= ttl <= high:
        raise LinkRefused(
            f"ttl must be a whole number of seconds from {low} to {high} for {host}, whose "
            f"links carry {what} (strategy {strategy}); got {ttl!r}"
        )
    return AppLinkPlan(to, pattern, host, strategy, aid, uid, ttl, int(now) + ttl)


def app_link_url(plan: AppLinkPlan, *, token: str | None, keys: SigningKeys | None) -> str:
    """The link for ``plan``: ``to`` with the identity parameters of its strategy (any it
    already had replaced). ``token``: the one stored for it (strategy token)."""
    params: Sequence[tuple[str, str]]
    if plan.strategy == "query":
        params = [(AID_PARAM, plan.aid)] + ([(UID_PARAM, plan.uid)] if plan.uid else [])
    elif plan.strategy == "token":
        if token is None:
            raise ValueError("a token link needs its stored token")
        params = [(TOKEN_PARAM, token)]
    else:
        if keys is None:
            raise LinkRefused("signing.keys is not set, so no signed link can be made")
        assert plan.expires_at is not None
        params = sign_params(
            aid=plan.aid,
            uid=plan.uid,
            target_host=plan.host,
            expires=plan.expires_at,
            keys=keys,
            user_agent=None,
            origin="app",
        )
    return decorate_url(plan.to, params, IDENTITY_PARAMS)
