"""Pure: what a request's identity is, and what the gateway does about it before proxying.

Inputs are plain values taken from the request (method, raw target, Cookie headers, Referer,
Sec-Fetch-Site); the output says whether to answer with the clean-up redirect, what target to
forward, which id the visitor has for this response, and which cookies to (re)write.

Three forms of identity can arrive in the URL, and a site trusts only those in its ``accept``:

- ``query``: a bare ``ajs_aid`` (and ``ajs_uid``), what analytics.js itself understands;
- ``signed``: the same plus ``ajs_exp`` and ``ajs_sig``, an HMAC only the fleet can make;
- ``token``: ``ajs_token``, an opaque key exchanged in the token store (the exchange is I/O,
  so it happens in the proxy between :func:`read_url_identity` and :func:`settle`).

A token or signed link minted for an app, an email or a partner says so in its credential; an
id restored from one has the source ``app`` rather than ``url``.

Two cookies can hold the visitor's id: ``ajs_anonymous_id``, which analytics.js reads and
rewrites, and the gateway's server-only ``HttpOnly`` copy of it (``identity.shadow_cookie``);
:func:`cookie_identity` says which of them the visitor's id is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .config import Config, Identity, Site, Strategy
from .consent import ConsentRefusal
from .hosts import hostname, matches, referer_host
from .identity import (
    ANON_COOKIE,
    DEFAULT_ID_PATTERN,
    USER_COOKIE,
    IdRules,
    mint_id,
    read_cookie,
    same_origin_location,
    split_identity_params,
)
from .params import (
    AID_PARAM,
    EXP_PARAM,
    IDENTITY_PARAMS,
    RESCUE_PARAM,
    SIG_PARAM,
    TOKEN_PARAM,
    UID_PARAM,
)
from .speculative import Speculative
from .strategies import (
    SigningKeys,
    TokenRecord,
    signed_origin,
    valid_token_syntax,
    verify_signed,
)

Source = Literal["url", "app", "rescue", "cookie", "shadow", "minted", "rejected", "none"]
_REDIRECT_METHODS = frozenset({"GET", "HEAD"})


def cookies_may_be_withheld(method: str, sec_fetch_site: str | None) -> bool:
    """Whether the browser may have sent this request without the visitor's cookies.

    Identity cookies are ``SameSite=Lax``: a browser withholds them from a cross-site request
    unless it is a top-level GET navigation, yet it accepts a ``Set-Cookie`` on a top-level
    cross-site POST navigation (a payment provider's POST-back, an OIDC ``form_post``, an
    attacker's auto-submitted form). An id minted for such a request would overwrite the
    visitor's own. Without ``Sec-Fetch-Site`` (older browsers, and every plain-HTTP origin:
    Chromium sends it to secure origins only) a cross-site request looks like a same-site one,
    so every method but GET and HEAD counts; a HEAD only when it says it is cross-site.

    A GET is always trusted: a top-level GET navigation carries Lax cookies, and a cross-site
    subresource GET that does not is also refused the ``Set-Cookie`` by the browser.
    """
    if method == "GET":
        return False
    if method == "HEAD":
        return (sec_fetch_site or "").strip().lower() == "cross-site"
    return True


@dataclass(frozen=True)
class UrlIdentity:
    """What the URL claimed, once checked: the ids it proved, or why it proved none."""

    # The form the URL used, or None when it carried no identity parameter at all.
    form: Strategy | None
    aid: str | None = None
    uid: str | None = None
    # A token still to be exchanged in the store.
    token: str | None = None
    # Why the URL's identity was refused ("invalid", "not_accepted", "expired", ...), or None.
    refused: str | None = None
    # The credential was minted for an app, an email or a partner, not for a page's links.
    app: bool = False
    # The URL is the way back from a sibling's rescue endpoint (gateway/rescue.py).
    rescued: bool = False

    def exchanged(self, record: TokenRecord | None, rules: IdRules, reason: str) -> UrlIdentity:
        """The result of the token exchange (``record`` None: unknown, expired or store down;
        ``reason`` says which for the metrics)."""
        if record is None:
            return replace(self, token=None, refused=reason)
        aid = rules.valid_aid(record.anonymous_id)
        if aid is None:
            return replace(self, token=None, refused="invalid")
        uid = rules.valid_uid(record.user_id)
        return replace(self, token=None, aid=aid, uid=uid, app=record.origin == "app")


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
    # Ids to write to the visitor's cookies on this response, whatever the response is (None:
    # leave the cookie as it is): ids that came in the URL, and an id restored from the
    # server-only copy or that copy's correction (see cookie_identity). Nothing to do with the
    # token store.
    write_aid: str | None
    write_uid: str | None
    # The id exists only because we minted it: write it only if the response is HTML.
    minted: bool
    source: Source
    # The browser may have withheld the visitor's cookies (see cookies_may_be_withheld): no id
    # was minted, and ``aid`` is None unless the URL proved one or the cookies came after all.
    cookies_withheld: bool
    # Why identity in the URL was refused, in part or whole (UrlIdentity.refused), or None.
    refused: str | None = None
    # Why the visitor has no consent (gateway.consent), or None when they have: no id, no
    # identity cookie, no decoration; only the URL's identity parameters are removed.
    no_consent: ConsentRefusal | None = None
    # Remove the server-only copy of the id on this response (consent was withdrawn).
    expire_shadow: bool = False
    # A fetch ahead of (or instead of) a visit (gateway.speculative): nothing was exchanged or
    # minted and no cookie is written; ``aid`` is the cookies' id, if they came.
    speculative: Speculative | None = None
    # Refuse it (a browser's prefetch of a URL that carries identity): a kept prefetch would
    # stand in for the visitor's click, and the click must bring the identity here.
    discard: bool = False


def identity_rules(config: Config) -> IdRules:
    """The id validation rules the config asks for."""
    pattern = re.compile(config.identity.id_pattern) if config.identity.id_pattern else None
    return IdRules(
        id_pattern=pattern or DEFAULT_ID_PATTERN, uid_max_len=config.identity.uid_max_length
    )


def split_target(target: str) -> tuple[str, str, dict[str, str], bool]:
    """(path, query without identity params, the identity params, whether any were there)."""
    path, sep, query = target.partition("?")
    # Cheap pre-check: most queries carry no identity (a name may be percent-encoded).
    if not sep or not ("ajs" in query or "%" in query or "AJS" in query.upper()):
        return path, query, {}, False
    cleaned, params = split_identity_params(query, IDENTITY_PARAMS)
    return path, cleaned, params, cleaned != query


def read_url_identity(
    params: dict[str, str],
    *,
    site: Site,
    rules: IdRules,
    host: str,
    user_agent: str | None,
    now: float,
    keys: SigningKeys | None,
    bind_user_agent: bool,
    max_lifetime: int,
) -> UrlIdentity:
    """Classify and check the URL's identity parameters (not the token exchange). The marker of
    a return from a sibling's rescue endpoint is noted, and is no identity form of its own."""
    if RESCUE_PARAM in params:
        rest = {k: v for k, v in params.items() if k != RESCUE_PARAM}
        found = read_url_identity(
            rest,
            site=site,
            rules=rules,
            host=host,
            user_agent=user_agent,
            now=now,
            keys=keys,
            bind_user_agent=bind_user_agent,
            max_lifetime=max_lifetime,
        )
        return replace(found, rescued=True)
    if not params:
        return UrlIdentity(form=None)
    form: Strategy
    app = False
    if TOKEN_PARAM in params:
        form = "token"
    elif SIG_PARAM in params or EXP_PARAM in params:
        form = "signed"
    else:
        form = "query"
    if form not in site.accept:
        return UrlIdentity(form=form, refused="not_accepted")
    if form == "token":
        token = params[TOKEN_PARAM]
        if not valid_token_syntax(token):
            return UrlIdentity(form=form, refused="malformed")
        return UrlIdentity(form=form, token=token)
    if form == "signed":
        if keys is None:
            return UrlIdentity(form=form, refused="no_keys")
        aid, uid, reason = verify_signed(
            params,
            host=host,
            now=now,
            keys=keys,
            user_agent=user_agent,
            bind_user_agent=bind_user_agent,
            max_lifetime=max_lifetime,
        )
        if reason != "ok":
            return UrlIdentity(form=form, refused=reason)
        app = signed_origin(params) == "app"
    else:
        aid, uid = params.get(AID_PARAM), params.get(UID_PARAM)
    valid_aid = rules.valid_aid(aid)
    valid_uid = rules.valid_uid(uid)
    if (aid is not None and valid_aid is None) or (uid is not None and valid_uid is None):
        # One bad value spoils the pair: never keep a user id with a refused anonymous id.
        if valid_aid is None:
            return UrlIdentity(form=form, refused="invalid")
        return UrlIdentity(form=form, aid=valid_aid, refused="invalid_uid", app=app)
    return UrlIdentity(form=form, aid=valid_aid, uid=valid_uid, app=app)


CookieId = Literal["kept", "restored", "corrected", "none"]


def cookie_identity(readable: str | None, shadow: str | None) -> tuple[str | None, CookieId]:
    """The visitor's id from their two id cookies (each already validated, None if absent or
    refused), and what must become of the cookies.

    - The readable ``ajs_anonymous_id`` wins whenever it holds a valid id. If the server-only
      copy holds another one, the page changed the id on purpose (``analytics.reset()``,
      ``setAnonymousId``): the copy follows it, written on this response whatever it is
      (``corrected``). Otherwise ``kept``: a copy that is missing (a visitor from before the
      copy existed, a response that wrote no cookies) is written with the next identity
      cookies, as on every HTML page.
    - Without a readable id, the server-only copy brings the id back (``restored``): Safari
      expired the script-written cookie after 7 days (ITP), or the visitor's storage was
      cleared by a script; the readable cookie is written again from the copy, on this
      response whatever it is.
    - Neither: no id (``none``).

    Only an HttpOnly cookie can be the copy: no script can read, shorten or remove it, so it
    outlives Safari's cap on script-written cookies. A visitor who clears all cookies for the
    site clears it too.
    """
    if readable is not None:
        return readable, "kept" if shadow in (None, readable) else "corrected"
    if shadow is not None:
        return shadow, "restored"
    return None, "none"


def settle(
    *,
    method: str,
    target: str,
    path: str,
    cleaned_query: str,
    had_params: bool,
    url: UrlIdentity,
    cookie_headers: Sequence[str],
    site: Site,
    rules: IdRules,
    mint: bool,
    cookies_withheld: bool,
    shadow_cookie: str = Identity.shadow_cookie,
    no_consent: ConsentRefusal | None = None,
    speculative: Speculative | None = None,
    rescue_guard: bool = True,
) -> Arrival:
    """Combine the URL's checked identity with the visitor's cookies.

    ``cookies_withheld`` (see :func:`cookies_may_be_withheld`): no cookie here does not mean a
    new visitor, so no id is minted; identity in the URL is taken as on any other request.
    ``shadow_cookie``: the name of the server-only copy of the id (see :func:`cookie_identity`).
    ``no_consent`` (see :mod:`gateway.consent`): the visitor's identity is neither read nor
    written (``url`` is expected to be empty: the caller does not read or exchange it), only
    the identity parameters leave the URL, and a server-only copy the visitor still has is
    expired. ``speculative`` (see :mod:`gateway.speculative`): ``url`` is expected to be empty
    too (no token is consumed); the cookies' id is used, but nothing is minted or written, and
    a prefetch of a URL with identity parameters is to be refused (``discard``).
    ``rescue_guard``: the request carries the rescue guard cookie; a return from a sibling's
    rescue endpoint without it is served in place, without the clean-up redirect, whose second
    leg would look like a new undecorated arrival to rescue (see :mod:`gateway.rescue`).
    """
    if no_consent is not None:
        forward, redirect = _cleaned(method, target, path, cleaned_query, had_params)
        return Arrival(
            redirect=None if speculative == "prefetch" else redirect,
            target=forward,
            aid=None,
            uid=None,
            write_aid=None,
            write_uid=None,
            minted=False,
            source="none",
            cookies_withheld=cookies_withheld,
            no_consent=no_consent,
            expire_shadow=speculative is None
            and read_cookie(cookie_headers, shadow_cookie) is not None,
            speculative=speculative,
            discard=speculative == "prefetch" and had_params,
        )
    readable = rules.valid_aid(read_cookie(cookie_headers, ANON_COOKIE))
    shadow = rules.valid_aid(read_cookie(cookie_headers, shadow_cookie))
    cookie_aid, kept = cookie_identity(readable, shadow)
    cookie_uid = rules.valid_uid(read_cookie(cookie_headers, USER_COOKIE))
    keep_cookie = site.on_id_conflict == "cookie"
    write_aid = url.aid if url.aid and not (keep_cookie and cookie_aid) else None
    write_uid = url.uid if url.uid and not (keep_cookie and cookie_uid) else None
    if write_aid is None and kept in ("restored", "corrected"):
        # Either cookie is out of step with the visitor's id: write both, on any response.
        write_aid = cookie_aid
    if speculative is not None:
        write_aid = write_uid = None
    aid = write_aid or cookie_aid
    uid = write_uid or cookie_uid

    source: Source
    if url.aid:
        source = "app" if url.app else "rescue" if url.rescued else "url"
    elif url.form is not None and url.refused is not None:
        source = "rejected"
    elif kept == "restored":
        source = "shadow"
    elif cookie_aid:
        source = "cookie"
    else:
        source = "none"
    minted = False
    if aid is None and mint and not cookies_withheld and speculative is None:
        aid = mint_id()
        minted = True
        if source == "none":
            source = "minted"

    forward, redirect = _cleaned(method, target, path, cleaned_query, had_params)
    if url.rescued and not rescue_guard:
        redirect = None
    discard = speculative == "prefetch" and had_params
    return Arrival(
        redirect=None if discard else redirect,
        target=forward,
        aid=aid,
        uid=uid,
        write_aid=write_aid,
        write_uid=write_uid,
        minted=minted,
        source=source,
        cookies_withheld=cookies_withheld,
        refused=url.refused,
        speculative=speculative,
        discard=discard,
    )


def _cleaned(
    method: str, target: str, path: str, cleaned_query: str, had_params: bool
) -> tuple[str, str | None]:
    """(the target to forward, the clean-up redirect's Location or None)."""
    if not had_params:
        return target, None
    forward = f"{path}?{cleaned_query}" if cleaned_query else path
    redirect = same_origin_location(path, cleaned_query) if method in _REDIRECT_METHODS else None
    return forward, redirect


def referring_cross_domain(referer: str | None, own_host: str, config: Config) -> str | None:
    """The configured cross-domain pattern a Referer comes from, if it is not this host."""
    came_from = referer_host(referer)
    if came_from is None or came_from.host == hostname(own_host):
        return None
    for cross in config.cross_domains:
        if matches(came_from.host, cross.host):
            return cross.host
    return None
