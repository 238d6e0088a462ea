"""Pure: which parameters a link from this page view carries to each cross-domain target,
and the links minted on request for apps, emails and partners.

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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import CrossDomain, Strategy
from .identity import AID_PARAM, UID_PARAM, IdRules, LinkDecorator, decorate_url
from .inbound import IDENTITY_PARAMS
from .options import MAX_TOKEN_TTL, Signing, Tokens, declared_key
from .strategies import TOKEN_PARAM, SigningKeys, sign_params

# The freshness endpoint, on every site's own origin (see proxy.ProxyHandler.fresh_link). The
# name is unlikely to collide with a legacy site's own paths.
LINK_PATH = "/_ajs_gateway/link"
# An absolute http(s) URL of printable ASCII without backslashes: nothing a browser could read
# differently from us (it strips tabs and newlines and treats "\\" as "/").
_ABSOLUTE_URL = re.compile(r"(?i)https?://[\x21-\x5b\x5d-\x7e]+")


def protected_target(to: str, own_host: str, patterns: Sequence[str]) -> str | None:
    """The target pattern an absolute URL points at, or None if it is not a configured target
    other than ``own_host`` (the freshness endpoint redirects nowhere else)."""
    if not patterns or not _ABSOLUTE_URL.fullmatch(to):
        return None
    hits: list[str] = []

    def record(pattern: str, host: str) -> Sequence[tuple[str, str]]:
        hits.append(pattern)
        return [("", "")]

    LinkDecorator(own_host, f"http://{own_host}/", patterns, record).decorate(to, None)
    return hits[0] if hits else None


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
        self.strategies_used: set[Strategy] = set()

    def __call__(self, pattern: str, host: str) -> Sequence[tuple[str, str]] | None:
        strategy = self._strategy.get(pattern)
        params: Sequence[tuple[str, str]] | None = None
        if strategy == "query":
            params = self._query
        elif strategy == "token" and self._token is not None:
            params = [(TOKEN_PARAM, self._token)]
        elif strategy == "signed" and self._keys is not None:
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
            params = self._signed[host]
        if params is not None and strategy is not None:
            self.strategies_used.add(strategy)
        return params


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
