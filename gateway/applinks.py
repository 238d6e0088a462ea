"""Links for apps, email and partners: a visitor's identity handed to a configured cross-domain
from outside any page the gateway served.

A mobile app opening web content, a confirmation email, a partner's site: each knows the
visitor's ``anonymousId`` (and maybe ``userId``) but serves no page through the gateway, so no
link of theirs is ever decorated. They ask for one instead, with ``python -m gateway link`` or
``POST /links`` on the admin port, and get a link that carries the ids by the target's own
strategy: ``ajs_aid`` for a ``query`` target, a signed link (mode ``v1app``) for a ``signed``
one, a token kept in the configured store for a ``token`` one. Tokens and signatures are bound
to their target, as a page's are, and to no browser (the one that will open the link is not
known); a token can be exchanged until it expires, more than once unless
``tokens.single_use``. Arrivals through such links count as ``app`` in
``gateway_identity_source_total`` and in the hand-off events.

The checks are :func:`gateway.links.plan_app_link`'s; this module stores the token.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, Strategy
from .links import AppLinkPlan, app_link_url, plan_app_link
from .state import ConfigIndex
from .store import TokenStore
from .strategies import TokenRecord, new_token


@dataclass(frozen=True)
class AppLink:
    url: str
    strategy: Strategy
    # Unix seconds; None for a query link, which does not expire.
    expires_at: int | None


def plan(
    config: Config,
    index: ConfigIndex,
    *,
    to: str,
    anonymous_id: str,
    user_id: str | None,
    ttl: int | None,
    now: float,
) -> AppLinkPlan:
    """Check a request for a link against ``config``; raises LinkRefused."""
    return plan_app_link(
        to,
        anonymous_id=anonymous_id,
        user_id=user_id,
        ttl=ttl,
        cross_domains=config.cross_domains,
        rules=index.rules,
        token_ttl=config.tokens.ttl,
        signed_lifetime=config.signing.lifetime,
        now=now,
    )


async def mint(plan: AppLinkPlan, index: ConfigIndex, store: TokenStore, *, now: float) -> AppLink:
    """The link for a checked ``plan``; a token target's token is stored first (raises
    StoreError when the store does not take it)."""
    token = None
    if plan.strategy == "token":
        assert plan.ttl is not None
        token = new_token()
        record = TokenRecord.bound(
            anonymous_id=plan.aid,
            user_id=plan.uid,
            issued_at=now,
            source_host="",
            targets=(plan.pattern,),
            user_agent=None,
            origin="app",
        )
        await store.put(token, record, plan.ttl)
    url = app_link_url(plan, token=token, keys=index.signing_keys)
    return AppLink(url, plan.strategy, plan.expires_at)
