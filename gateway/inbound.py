"""Pure: what a request's identity is, and what the gateway does about it before proxying.

Inputs are plain values taken from the request (method, raw target, Cookie headers, Referer);
the output says whether to answer with the clean-up redirect, what target to forward, which id
the visitor has for this response, and which cookies to (re)write.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .config import Config, Site
from .identity import (
    AID_PARAM,
    ANON_COOKIE,
    DEFAULT_ID_PATTERN,
    UID_PARAM,
    USER_COOKIE,
    IdRules,
    host_matches,
    mint_id,
    read_cookie,
    same_origin_location,
    split_identity_params,
)

IDENTITY_PARAMS = frozenset({AID_PARAM, UID_PARAM})
Source = Literal["url", "cookie", "minted", "rejected", "none"]
_REDIRECT_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Arrival:
    """The identity decision for one request."""

    # Location of the clean-up 302, or None to forward the request.
    redirect: str | None
    # The request-target to forward upstream (identity parameters removed).
    target: str
    # The visitor's ids for this response (decoration, bootstrap); None when unknown.
    aid: str | None
    uid: str | None
    # Ids that came in the URL and must be written to cookies on this response.
    store_aid: str | None
    store_uid: str | None
    # The id exists only because we minted it: write it only if the response is HTML.
    minted: bool
    source: Source


def identity_rules(config: Config) -> IdRules:
    """The id validation rules the config asks for."""
    pattern = re.compile(config.identity.id_pattern) if config.identity.id_pattern else None
    return IdRules(
        id_pattern=pattern or DEFAULT_ID_PATTERN, uid_max_len=config.identity.uid_max_length
    )


def resolve_arrival(
    *,
    method: str,
    target: str,
    cookie_headers: Sequence[str],
    site: Site,
    rules: IdRules,
    mint: bool,
) -> Arrival:
    """Decide the visitor's identity from the URL's ``ajs_aid``/``ajs_uid`` and the cookies."""
    path, sep, query = target.partition("?")
    url_ids: dict[str, str] = {}
    # Cheap pre-check: most queries carry no identity (a name may be percent-encoded).
    if sep and ("ajs" in query or "AJS" in query.upper() or "%" in query):
        cleaned, url_ids = split_identity_params(query, IDENTITY_PARAMS)
    else:
        cleaned = query
    has_params = cleaned != query
    cookie_aid = rules.valid_aid(read_cookie(cookie_headers, ANON_COOKIE))
    cookie_uid = rules.valid_uid(read_cookie(cookie_headers, USER_COOKIE))

    url_aid = rules.valid_aid(url_ids.get(AID_PARAM))
    url_uid = rules.valid_uid(url_ids.get(UID_PARAM))
    rejected = (AID_PARAM in url_ids and url_aid is None) or (
        UID_PARAM in url_ids and url_uid is None
    )
    keep_cookie = site.on_id_conflict == "cookie"
    store_aid = url_aid if url_aid and not (keep_cookie and cookie_aid) else None
    store_uid = url_uid if url_uid and not (keep_cookie and cookie_uid) else None
    aid = store_aid or cookie_aid
    uid = store_uid or cookie_uid

    source: Source
    if url_aid:
        source = "url"
    elif rejected and AID_PARAM in url_ids:
        source = "rejected"
    elif cookie_aid:
        source = "cookie"
    else:
        source = "none"
    minted = False
    if aid is None and mint:
        aid = mint_id()
        minted = True
        if source == "none":
            source = "minted"

    forward = f"{path}?{cleaned}" if cleaned else path
    redirect = None
    if has_params and method in _REDIRECT_METHODS:
        redirect = same_origin_location(path, cleaned)
    return Arrival(
        redirect=redirect,
        target=forward if has_params else target,
        aid=aid,
        uid=uid,
        store_aid=store_aid,
        store_uid=store_uid,
        minted=minted,
        source=source,
    )


def referring_cross_domain(referer: str | None, own_host: str, config: Config) -> str | None:
    """The configured cross-domain pattern a Referer comes from, if it is not this host."""
    if not referer:
        return None
    try:
        host = urlsplit(referer).hostname
    except ValueError:
        return None
    if not host or host == own_host:
        return None
    for cross in config.cross_domains:
        if host_matches(host, cross.host):
            return cross.host
    return None
