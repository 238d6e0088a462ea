"""Pure: requests that fetch a page before (or instead of) the visitor opening it.

Browsers prefetch and prerender links the page or the browser expects to be followed; mail
systems and chat apps fetch every link to scan it or to show a preview; link checkers send
``HEAD``. None of them is the visitor arriving, yet each one looks like a navigation. If the
gateway treated them as one, a ``single_use`` token would be spent before the visitor clicks
(then the click carries no identity), a scanner or preview bot would be given an id and cookies
of its own, and the visitor's browser could be handed cookies for a page it never showed.

So such a request never consumes a token (no URL identity is read at all), never gets a minted
id and never gets an identity cookie (inbound.settle). What it is answered depends on who asks:

- ``prefetch``: the browser announces it (``Sec-Purpose: prefetch``, also ``prefetch;prerender``;
  the legacy ``Purpose: prefetch``; Safari's ``X-Purpose: preview``; Firefox's
  ``X-moz: prefetch``). A prefetched response is kept and shown when the visitor clicks, so the
  click would never reach the gateway: a prefetch of a URL that carries identity is refused
  with ``503`` and ``Cache-Control: no-store``. Browsers do not keep an error response for
  later (Chromium keeps only 2xx answers in its prefetch cache; an uncacheable response is not
  in the HTTP cache for a ``<link rel=prefetch>`` either), so the real click comes to the
  gateway with its token intact and is handled as an arrival. A prefetch of a URL without
  identity is served as usual, with the visitor's cookie id if the browser sent it (a
  prerendered page is decorated for the visitor who will see it), but nothing is written.
- ``head``: any ``HEAD``. Link checkers and scanners (Microsoft Safe Links sends ``HEAD`` then
  ``GET``) use it; browsers navigate with ``GET``. The clean-up redirect still comes, without
  cookies.
- ``preview``: a link-preview bot by its User-Agent (Slack, X/Twitter, Facebook and iMessage,
  LinkedIn, Discord, WhatsApp, Telegram, Teams and Skype, Outlook, Pinterest, Reddit, Mastodon,
  Embedly, Iframely). It gets the clean-up redirect without cookies, then the page: the preview
  shows the real page and the token stays good for the person who clicks. The list is short
  and names only products that fetch links to unfurl them; crawler lists cover search engines,
  which are not the point here, and a scanner that poses as a browser cannot be told by its
  User-Agent at all (its token is safe only with ``tokens.single_use: false``, the default).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Speculative = Literal["prefetch", "head", "preview"]
KINDS: tuple[Speculative, ...] = get_args(Speculative)

__all__ = ["KINDS", "Speculative", "is_preview_bot", "speculative"]

# Product tokens of link-preview fetchers, matched case-insensitively as words in the
# User-Agent (e.g. "Slackbot-LinkExpanding 1.0", "facebookexternalhit/1.1", "WhatsApp/2.23").
_PREVIEW_BOTS = re.compile(
    r"(?i)(?<![a-z])(?:slackbot|slack-imgproxy|twitterbot|facebookexternalhit|facebot|"
    r"linkedinbot|discordbot|whatsapp|telegrambot|skypeuripreview|microsoftpreview|"
    r"pinterestbot|redditbot|mastodon|embedly|iframely)(?![a-z])"
)
# Values of the legacy and vendor headers that announce a speculative fetch.
_PURPOSE = frozenset({"prefetch", "prerender", "preview"})


def _announced(
    sec_purpose: str | None, purpose: str | None, x_purpose: str | None, x_moz: str | None
) -> bool:
    """Whether the headers say the browser fetches ahead of a navigation.

    ``Sec-Purpose`` is a Structured Field list (RFC 8941) whose items are tokens with
    parameters: ``prefetch``, ``prefetch;prerender``, ``prefetch;anonymous-client-ip``. Any item
    whose token is ``prefetch`` counts.
    """
    if sec_purpose:
        for item in sec_purpose.split(","):
            if item.split(";", 1)[0].strip().lower() == "prefetch":
                return True
    for value in (purpose, x_purpose, x_moz):
        if value is not None and value.strip().lower() in _PURPOSE:
            return True
    return False


def is_preview_bot(user_agent: str | None) -> bool:
    """Whether the User-Agent names a link-preview fetcher (see the module docstring)."""
    return bool(user_agent) and _PREVIEW_BOTS.search(user_agent or "") is not None


def speculative(
    method: str,
    *,
    sec_purpose: str | None,
    purpose: str | None,
    x_purpose: str | None,
    x_moz: str | None,
    user_agent: str | None,
) -> Speculative | None:
    """What kind of fetch ahead of (or instead of) a visit this request is, or None for a
    visit. A prefetch announced by the browser is one whatever its method."""
    if _announced(sec_purpose, purpose, x_purpose, x_moz):
        return "prefetch"
    if method == "HEAD":
        return "head"
    if is_preview_bot(user_agent):
        return "preview"
    return None
