"""Pure: which parameters a link from this page view carries to each cross-domain target.

Targets differ by strategy: ``query`` links carry the raw ids, ``token`` links an opaque token
minted once for the page view, ``signed`` links the ids with an expiring HMAC that also covers
the target host (so each host gets its own signature). A target whose strategy cannot be served
right now (no token because the store is down, no signing keys) gets no parameters at all:
never a fall-back to raw ids for a target that asked not to see them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .config import CrossDomain, Strategy
from .identity import LinkDecorator
from .params import AID_PARAM, TOKEN_PARAM, UID_PARAM
from .strategies import SigningKeys, sign_params

# The freshness endpoint, on every site's own origin (see identity_flow.IdentityFlow.fresh_link).
# The name is unlikely to collide with a legacy site's own paths.
LINK_PATH = "/_ajs_gateway/link"
# An absolute http(s) URL of printable ASCII without backslashes: nothing a browser could read
# differently from us (it strips tabs and newlines and treats "\\" as "/").
_ABSOLUTE_URL = re.compile(r"(?i)https?://[\x21-\x5b\x5d-\x7e]+")


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
