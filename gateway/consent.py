"""Pure: whether a visitor lets the gateway keep an identity for them.

The decision is made per request from what the browser sends, by the site's settings
(``consent``, with the keys ``sites[].consent`` overrides):

1. ``gpc`` on and ``Sec-GPC: 1``: refused (``gpc``). Global Privacy Control is the visitor's
   browser-wide opt-out, legally binding in California and Colorado; it wins over a consent
   cookie, which a consent manager may have written before the visitor turned GPC on. A site
   that reconciles the two itself (its consent manager reads ``navigator.globalPrivacyControl``)
   turns ``gpc`` off and relies on the cookie.
2. A consent ``cookie`` is configured and the visitor has it: granted if the ``granted``
   pattern is found in its value (URL-decoded, as :func:`gateway.identity.read_cookie` reads
   it), else refused (``denied``): the visitor answered the consent manager and said no.
3. No such cookie: refused (``missing``) when ``required``, granted otherwise. A visitor who has
   not answered yet is asked by the site's consent manager; ``required`` says whether the
   gateway waits for the answer.

What refusal means is decided elsewhere (inbound.settle, outbound.plan, the bootstrap): no id
is minted, no identity cookie (readable or server-only) is written, no link is decorated and
the bootstrap sets no id; identity parameters are still taken out of arriving URLs, and the
server-only copy of a visitor who withdrew consent is expired.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Literal, get_args

from .identity import read_cookie
from .options import Consent, ConsentOverride

ConsentRefusal = Literal["gpc", "denied", "missing"]
REFUSALS: tuple[ConsentRefusal, ...] = get_args(ConsentRefusal)

__all__ = ["REFUSALS", "ConsentRefusal", "effective", "refusal"]


@functools.lru_cache(maxsize=256)
def effective(base: Consent, override: ConsentOverride) -> Consent:
    """The consent settings of a site: each key its ``sites[].consent`` gives, else the global
    one (both are frozen, so the result is computed once per pair)."""
    return Consent(
        gpc=base.gpc if override.gpc is None else override.gpc,
        required=base.required if override.required is None else override.required,
        cookie=override.cookie or base.cookie,
    )


@functools.lru_cache(maxsize=64)
def _pattern(granted: str) -> re.Pattern[str]:
    return re.compile(granted)


def refusal(
    consent: Consent, *, sec_gpc: str | None, cookie_headers: Sequence[str]
) -> ConsentRefusal | None:
    """Why this request has no consent, or None when it has (see the module docstring).

    ``sec_gpc``: the request's ``Sec-GPC`` header; only the value ``1`` is a signal (the
    specification defines no other). ``cookie_headers``: its raw ``Cookie`` headers.
    """
    if consent.gpc and sec_gpc is not None and sec_gpc.strip() == "1":
        return "gpc"
    cookie = consent.cookie
    if cookie is None:
        return "missing" if consent.required else None
    value = read_cookie(cookie_headers, cookie.name)
    if value is None:
        return "missing" if consent.required else None
    return None if _pattern(cookie.granted).search(value) else "denied"
