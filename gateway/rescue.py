"""Pure: rescuing an arrival that came from a sibling site without the visitor's identity.

A navigation that page JavaScript makes (``location.href = …``, ``location.assign``,
``window.open``), a link inside an upstream's script bundle, a link the rewriter could not see:
none of them is decorated, so the visitor arrives at site B from its sibling A with no identity
in the URL, and, new to B, gets a new id. On a site with ``rescue: true`` such an arrival gets
one round trip through the sibling it came from, before the page is served:

1. B, the first leg: a top-level ``GET`` navigation (:func:`eligible`) with no identity
   parameters, no id cookie (readable or server-only), consent, no guard cookie, and a
   ``Referer`` whose origin is another site of this gateway's configuration. B answers ``302``
   to A's endpoint, :data:`RESCUE_PATH` on the ``Referer``'s origin, with its own URL in
   ``back`` (:func:`rescue_location`), and sets a short-lived guard cookie (:func:`guard_cookie`).
2. A, the gateway's endpoint (it never reaches A's upstream): ``back`` must be an absolute
   http(s) URL of a *configured site with rescue on* other than A, and not one of the
   gateway's own paths (:func:`rescue_back`; anything else is a ``400``: never an open
   redirect, never a rescue of a rescue). With the visitor's consent, A reads its own cookie and
   redirects to ``back`` with a credential for B, by B's ``accept`` rules (:func:`credential`):
   a token (bound to B, alive :data:`CREDENTIAL_TTL` seconds) where B takes tokens, else a
   signed link (as short-lived), else the plain id where B takes only that. Without an id or
   consent at A, it redirects to ``back`` without one. Either way :data:`RESCUE_PARAM` goes on
   the URL: the marker of the way back.
3. B, the way back: the marker makes it a return, never a new rescue (it is an identity
   parameter, so ``eligible`` refuses it), and the id it brings is counted as the source
   ``rescue``. The usual clean-up ``302`` follows; its second leg carries the guard cookie, so
   it is not rescued again either. A browser that did not keep the guard cookie would be
   (its second leg looks exactly like a first leg), so without the guard a return is served in
   place, without the clean-up redirect (inbound.settle, ``rescue_guard``): the bootstrap takes
   the parameters out of the address bar.

Exactly one attempt: the marker, the guard and the endpoint's refusal to go anywhere but a
configured rescue site make a second round trip impossible. Never for unsafe methods (only
``GET``), never for a prefetch, a ``HEAD`` or a preview bot, never without consent. Bounded in
the visitor's experience: both extra hops are answered by the gateway itself, never by an
upstream; the one store write (A) and the one store read (B) each have ``store.timeout_ms``;
a failure on the way means a return without a credential, not a wait; and the credential dies
after :data:`CREDENTIAL_TTL` seconds, so a return replayed from history later brings nothing.

Chrome's bounce-tracking mitigation clears the storage of a site that a navigation only
bounced through (a redirect that touched its cookies) unless the visitor used it recently, but
it never counts the navigation's initial and final sites as bounces (privacycg
nav-tracking-mitigations, "record bounces"). The rescue chain starts on A (the page that
navigated) and ends on B, and passes only through B and A: there is no third site, so there is
no bounce, and a visitor's use of A and B is what it always was. A fleet must not put a third
"identity hub" site in the middle: that site would be a bounce tracker to Chrome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import quote, urlsplit

from .config import Config, Site, Strategy
from .crossings import is_navigation
from .hosts import hostname, referer_host
from .links import FRESH_LINK_PATH

# The sibling's endpoint, next to the freshness endpoint under the gateway's own path prefix.
GATEWAY_PREFIX: Final = FRESH_LINK_PATH.rsplit("/", 1)[0] + "/"
RESCUE_PATH: Final = GATEWAY_PREFIX + "rescue"
# Set by the first leg, host-only and HttpOnly; long enough for two redirects on a slow network,
# short enough that a later undecorated arrival is rescued again.
GUARD_COOKIE: Final = "ajs_gw_rescue"
GUARD_MAX_AGE: Final = 60
# How long a credential the endpoint sends back can be exchanged: the browser follows a redirect
# at once, and a return replayed later must bring nothing.
CREDENTIAL_TTL: Final = 30
# Fetch Metadata's destination of a top-level navigation. A frame is not rescued: the sibling's
# cookies are third-party there.
_TOP_LEVEL = frozenset({"document"})

__all__ = [
    "CREDENTIAL_TTL",
    "GATEWAY_PREFIX",
    "GUARD_COOKIE",
    "GUARD_MAX_AGE",
    "RESCUE_PATH",
    "credential",
    "eligible",
    "guard_cookie",
    "rescue_back",
    "rescue_location",
    "sibling_origin",
]


def is_top_level_navigation(sec_fetch_dest: str | None, accept: str | None) -> bool:
    """A page load in the tab itself: ``Sec-Fetch-Dest: document`` where the browser sends it
    (secure origins), else an ``Accept`` that asks for HTML first, as every browser's
    navigations do (frames cannot be told apart then; their sibling cookies are third-party and
    the rescue simply comes back without an id)."""
    return is_navigation(sec_fetch_dest, accept, _TOP_LEVEL)


def sibling_origin(referer: str | None, own_host: str, config: Config) -> str | None:
    """``scheme://host[:port]`` of the ``Referer`` when it is another site of this gateway's
    configuration (the page the visitor navigated from), else None."""
    came_from = referer_host(referer)
    if came_from is None or came_from.host == hostname(own_host):
        return None
    if config.site_for(came_from.host) is None:
        return None
    host = came_from.host
    name = f"[{host}]" if ":" in host else host
    port = came_from.port
    return f"{came_from.scheme}://{name}" + (f":{port}" if port is not None else "")


def eligible(
    *,
    site: Site,
    method: str,
    top_level: bool,
    had_params: bool,
    has_id: bool,
    guard: bool,
    sibling: str | None,
    ahead: bool,
    consent: bool,
) -> bool:
    """Whether this arrival gets the round trip (see the module docstring): the site asks for
    it, the request is a top-level ``GET`` navigation of the visitor (not a prefetch, a
    ``HEAD`` or a preview bot: ``ahead``) with consent, its URL has no identity parameter (the
    way back has the marker), the visitor has no id cookie, no attempt was made in the last
    :data:`GUARD_MAX_AGE` seconds (``guard``), and it came from a sibling site."""
    return (
        site.rescue
        and method == "GET"
        and top_level
        and not had_params
        and not has_id
        and not guard
        and sibling is not None
        and not ahead
        and consent
    )


def rescue_location(sibling: str, back: str) -> str:
    """The first leg's ``Location``: the sibling's endpoint with this URL to come back to."""
    return f"{sibling}{RESCUE_PATH}?back={quote(back, safe='')}"


def guard_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` of the first leg: no second attempt while it lives."""
    attrs = f"; Path=/; Max-Age={GUARD_MAX_AGE}; HttpOnly; SameSite=Lax"
    return f"{GUARD_COOKIE}=1{attrs}" + ("; Secure" if secure else "")


def rescue_back(back: str, own_host: str, config: Config) -> Site | None:
    """The site ``back`` returns to, if the endpoint may redirect there: an absolute http(s)
    URL of printable ASCII (nothing a browser could read otherwise: no backslash, no control
    characters, no spaces), whose host is a configured site with ``rescue`` on other than this
    one, and whose path is not one of the gateway's own (no rescue of a rescue)."""
    if not back.isascii() or not back.isprintable() or " " in back or "\\" in back:
        return None
    try:
        parts = urlsplit(back)
        parts.port  # noqa: B018 (read for the ValueError a bad port raises)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not back.lower().startswith(parts.scheme + "://"):
        return None
    if parts.username is not None or parts.password is not None:
        return None
    host = hostname(parts.hostname) if parts.hostname else None
    if host is None or host == hostname(own_host):
        return None
    if (parts.path or "/").startswith(GATEWAY_PREFIX):
        return None
    site = config.site_for(host)
    return site if site is not None and site.rescue else None


def credential(accept: Sequence[Strategy], *, can_sign: bool) -> Strategy | None:
    """Which credential the way back carries, by the returning site's ``accept``: a token
    (never a raw id in the URL) where it takes tokens, else a signed link where the fleet has
    keys, else the plain id where that is all it takes; None if it takes nothing we can make."""
    if "token" in accept:
        return "token"
    if "signed" in accept and can_sign:
        return "signed"
    if "query" in accept:
        return "query"
    return None
