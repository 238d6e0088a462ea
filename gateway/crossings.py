"""Pure: the fragmentation measure, that is arrivals from the fleet's other sites.

An arrival is a navigation (a page or a frame, not an image, a script or a ``fetch``) whose
``Referer`` is on another configured cross-domain. It either carried the visitor's identity
in its URL (a decorated hand-off: ``carried``) or it did not (``missing``). A missing one
splits the visitor in two whether or not it already had a cookie here: a returning visitor
who keeps an older id on this site is split just as a new one who gets a minted id. So
``missing / (carried + missing)`` is the share of hand-offs that fragmented.

The one arrival that must not count is the second leg of a clean-up redirect. After a
hand-off (``/cart?ajs_aid=…``, counted once as ``carried``) the gateway answers 302 to the
clean URL, and the browser follows it with the same ``Referer`` and no identity in the URL,
which looks exactly like an undecorated arrival. So the 302 also sets a marker: a cookie,
host-only, ``HttpOnly``, ``SameSite=Lax`` (top-level navigations carry it, as they carry the
identity cookie that the same 302 sets) and short-lived (``MARKER_MAX_AGE``), whose value is
a digest of the clean ``Location``. A request for exactly that target carrying that marker is
the second leg, and is not counted. Why this mechanism:

- The marker holds no id. The digest is of the clean URL, whose identity parameters are gone,
  and it only ties the marker to its target, so that a marker set for ``/cart`` does not hide
  an arrival elsewhere. No id goes into a URL, a log or a third party's Referer.
- Marking the ``Location`` itself (a query parameter) would show in the address bar, in
  bookmarks and shared links, and reach the upstream application.
- Remembering redirects on the server would not work across workers and replicas.

What it misses, on purpose or not: the marker is not removed after use (the second leg's
response is the upstream's own, left as it is), so within ``MARKER_MAX_AGE`` a reload of that
page, or another undecorated arrival at the very same URL, is not counted either. A browser
that refuses the marker makes its second leg count as ``missing``; it refuses the identity
cookie of the same response too, so the visitor is likely split anyway. A reload later on
keeps the original ``Referer`` and counts again, like any arrival. Arrivals without a
``Referer`` (a sibling page with ``Referrer-Policy: no-referrer``) are not seen at all, on
either side of the ratio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from .config import Config
from .identity import read_cookie
from .inbound import referring_cross_domain

# Whether an arrival's URL carried the visitor's identity (the label of the metric).
ArrivalIdentity = Literal["carried", "missing"]

MARKER_COOKIE = "ajs_gw_leg"
# The browser follows a 302 at once; a minute is ample for a slow mobile network.
MARKER_MAX_AGE = 60
# Fetch Metadata destinations of a navigation (a top-level page or a frame).
_NAVIGATION_DESTS = frozenset({"document", "iframe", "frame"})


def is_navigation(
    sec_fetch_dest: str | None,
    accept: str | None,
    dests: frozenset[str] = _NAVIGATION_DESTS,
) -> bool:
    """Whether a request loads a page or a frame (``dests``: the ``Sec-Fetch-Dest`` values
    that count) rather than a subresource.

    ``Sec-Fetch-Dest`` says so where the browser sends it (Chromium and Firefox, to secure
    origins and localhost); otherwise a navigation is recognised by ``Accept``, which every
    browser sets to a list starting with ``text/html`` for documents and to something else for
    images, scripts, styles and ``fetch`` (``*/*``).
    """
    if sec_fetch_dest:
        return sec_fetch_dest.strip().lower() in dests
    return "text/html" in (accept or "").lower()


def marker_value(target: str) -> str:
    """The marker for a clean-up redirect to ``target`` (a path and query, no identity)."""
    return hashlib.sha256(target.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def marker_cookie(location: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` value that marks the clean-up redirect to ``location``."""
    attrs = f"; Path=/; Max-Age={MARKER_MAX_AGE}; HttpOnly; SameSite=Lax"
    if secure:
        attrs += "; Secure"
    return f"{MARKER_COOKIE}={marker_value(location)}{attrs}"


def is_second_leg(cookie_headers: Sequence[str], target: str) -> bool:
    """Whether this request follows a clean-up redirect to ``target`` (its marker is sent)."""
    return read_cookie(cookie_headers, MARKER_COOKIE) == marker_value(target)


def cross_domain_arrival(
    *,
    config: Config,
    own_host: str,
    target: str,
    referer: str | None,
    sec_fetch_dest: str | None,
    accept: str | None,
    cookie_headers: Sequence[str],
    carried: bool,
) -> tuple[str, ArrivalIdentity] | None:
    """The referring cross-domain pattern and whether identity was carried, for a request to
    count as an arrival; None for one that is not an arrival from a sibling site, or that is
    the second leg of a clean-up redirect.

    ``target``: the request-target as received (the second leg's has no identity parameters,
    so a first leg never matches its own marker); ``carried``: the URL proved an id.
    """
    if not is_navigation(sec_fetch_dest, accept):
        return None
    referrer = referring_cross_domain(referer, own_host, config)
    if referrer is None:
        return None
    if not carried and is_second_leg(cookie_headers, target):
        return None
    return referrer, "carried" if carried else "missing"
