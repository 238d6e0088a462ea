"""Cross-domain identity encodings beyond the plain ``ajs_aid`` query: ``token`` and ``signed``.

Pure: strings, bytes and numbers in and out, no I/O and no clocks (callers pass ``now``). The
token store that backs the ``token`` strategy lives in :mod:`gateway.store`.

``token``
    A link carries ``ajs_token=<opaque>`` and no id. The token names a :class:`TokenRecord` kept
    in the store for a short TTL; any gateway of the fleet exchanges it on arrival, but only on a
    site the token was minted for (and, with ``bind_user_agent``, in the same browser): see
    :func:`token_refusal`. One token per page view serves every link of that page. A token
    minted for an app, an email or a partner (``python -m gateway link``, ``POST /links``) is
    bound to its target the same way, and its record says it came from there (``origin``).

``signed``
    A link carries the ids themselves plus an expiry and an HMAC-SHA256 over them and the target
    host, so no shared store is needed, only shared keys::

        ?ajs_aid=<id>[&ajs_uid=<user id>]&ajs_exp=<unix seconds>&ajs_sig=<mode>.<mac>

    ``mode`` is ``v1``, ``v1ua`` (the link is bound to a hash of the browser's User-Agent) or
    ``v1app`` (minted for an app, an email or a partner, for whatever browser opens it: see
    :func:`sign_params`).
    The mode travels with the link, rather than being assumed from local configuration, so that
    a fleet whose members disagree about UA binding for a while still verifies what the others
    signed; the mode is inside the MAC, so it cannot be changed in flight. ``mac`` is the full
    32-byte HMAC-SHA256 in URL-safe base64 without padding (43 characters): truncation would save
    21 bytes of URL and buy nothing else.

    The MAC is computed over netstrings (``<byte length>:<bytes>,``, UTF-8) of, in order:
    ``ajs-gateway-link``, the mode, the anonymous id, the user id (empty when there is none),
    the expiry exactly as written in the URL, the target host (in normal form, as
    :func:`gateway.hosts.hostname` gives it: lower case, no port, no trailing dot, an IPv6
    address in brackets) and the hex SHA-256 of the User-Agent (empty in mode ``v1``). Length
    prefixes make the encoding unambiguous whatever characters the fields hold, and the first
    field keeps these MACs from ever colliding with anything else signed with the same keys.
    Encodings are canonical (an expiry has no leading zeros, an empty ``ajs_uid`` is refused,
    the MAC text is compared, not its decoded bytes), so no second spelling of a signed link
    verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.hosts import hostname, matches
from gateway.keys import GEN_KEY_ADVICE, check_signing_key, parse_signing_keys
from gateway.options import Signing
from gateway.params import AID_PARAM, EXP_PARAM, SIG_PARAM, UID_PARAM

# Where a credential was minted: for the links of a page the gateway served, or on request for
# an app, an email or a partner (python -m gateway link, POST /links on the admin port).
Origin = Literal["page", "app"]

# Tolerated clock difference between the gateway that signs and the one that verifies, when
# deciding whether an expiry is further ahead than any gateway would have signed.
CLOCK_SKEW = 60

# 24 random bytes give 32 URL-safe characters (192 bits). Arrivals accept 22-64 so a fleet can
# change the length without refusing its own links mid-rollout; 22 characters are 132 bits.
_TOKEN_BYTES = 24
_TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9_-]{22,64}")


def new_token() -> str:
    """A fresh, unguessable token for one page view (192 bits from :mod:`secrets`)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def valid_token_syntax(token: str) -> bool:
    """Whether ``token`` could be one of ours: checked before any store round trip, so that
    junk from the URL costs nothing and never reaches Redis as a key."""
    return isinstance(token, str) and _TOKEN_SYNTAX.fullmatch(token) is not None


# A stored record is small and read once; anything bigger is not ours. It names the token
# targets it is bound to: a fleet with a few hundred of them still fits.
_RECORD_MAX_BYTES = 65536


_RECORD_KEYS = frozenset({"a", "u", "t", "h", "d", "b", "o"})
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TokenRecord:
    """What a token stands for: the visitor's ids when the page was served, where, and where and
    in which browser it may be exchanged."""

    anonymous_id: str
    user_id: str | None
    issued_at: float
    source_host: str
    # The cross-domain patterns (hosts or ``*.`` patterns, as configured) of the links the token
    # was minted for. None only in records written before tokens were bound to their targets.
    targets: tuple[str, ...] | None = None
    # Hex SHA-256 of the User-Agent the token was minted for (``bind_user_agent``), or None.
    user_agent_hash: str | None = None
    # "app": minted on request for a link in an app, an email or a partner's site, not for a
    # page; its source_host is empty and it is bound to no browser.
    origin: Origin = "page"

    @classmethod
    def bound(
        cls,
        *,
        anonymous_id: str,
        user_id: str | None,
        issued_at: float,
        source_host: str,
        targets: Sequence[str],
        user_agent: str | None,
        origin: Origin = "page",
    ) -> TokenRecord:
        """A record for links to the cross-domain patterns ``targets`` (at least one), bound to
        the browser sending ``user_agent`` unless that is None. An ``app`` record is bound to
        no browser (the one that will open it is unknown)."""
        if not targets:
            raise ValueError("a token is minted for at least one target pattern")
        if origin == "app" and user_agent is not None:
            raise ValueError("a token minted for an app is bound to no browser")
        ua = None if user_agent is None else _ua_hash(user_agent)
        return cls(anonymous_id, user_id, issued_at, source_host, tuple(targets), ua, origin)

    def to_bytes(self) -> bytes:
        """Compact JSON with one-letter keys: ``a`` anonymous id, ``u`` user id, ``t`` issue
        time, ``h`` source host, ``d`` target patterns, ``b`` User-Agent hash, ``o`` the origin
        when it is not a page (``"app"``). The store keeps one of these per page view, so bytes
        matter. ASCII-only output, so any string survives."""
        data: dict[str, object] = {
            "a": self.anonymous_id,
            "t": self.issued_at,
            "h": self.source_host,
        }
        if self.user_id is not None:
            data["u"] = self.user_id
        if self.targets is not None:
            data["d"] = list(self.targets)
        if self.user_agent_hash is not None:
            data["b"] = self.user_agent_hash
        if self.origin != "page":
            data["o"] = self.origin
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenRecord | None:
        """The record in ``data``, or None for anything that is not exactly what
        :meth:`to_bytes` writes. Never raises: the store's contents are not trusted.

        Records without ``d`` and ``b`` (written by gateways from before tokens were bound) are
        read, as unbound records; see :func:`token_refusal` for what that allows. Records
        without ``o`` are a page's, as every record was before links were minted for apps."""
        if not isinstance(data, bytes) or len(data) > _RECORD_MAX_BYTES:
            return None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not obj.keys() <= _RECORD_KEYS:
            return None
        aid, uid, issued, host = obj.get("a"), obj.get("u"), obj.get("t"), obj.get("h")
        if not isinstance(aid, str) or not aid or not isinstance(host, str):
            return None
        if uid is not None and (not isinstance(uid, str) or not uid):
            return None
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            return None
        # Absent, not null: to_bytes leaves out what a record does not have.
        targets, ua = obj.get("d"), obj.get("b")
        if "d" in obj and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
        ):
            return None
        if "b" in obj and not (isinstance(ua, str) and _HEX_SHA256.fullmatch(ua)):
            return None
        # Absent for a page's record; "app" the only other origin (and never bound to a UA).
        origin: Origin = "page"
        if "o" in obj:
            if obj["o"] != "app" or ua is not None:
                return None
            origin = "app"
        try:
            when = float(issued)
        except OverflowError:
            return None
        if not math.isfinite(when):
            return None
        return cls(aid, uid, when, host, None if targets is None else tuple(targets), ua, origin)


TokenRefusal = Literal["wrong_target", "wrong_browser"]


def token_refusal(
    record: TokenRecord, *, host: str, user_agent: str | None, bind_user_agent: bool
) -> TokenRefusal | None:
    """Why the site ``host`` (its Host header) must not exchange ``record`` for the browser
    sending ``user_agent``, or None when it may.

    - ``wrong_target``: ``host`` matches none of the record's target patterns, or is the host
      whose page minted it (links there are never decorated). A token that leaks from one
      target (its logs, a shared link) is worth nothing at the other sites of the fleet.
    - ``wrong_browser``: the record is bound to another User-Agent, or it is not bound while
      ``bind_user_agent`` requires binding (as for signed links). A bound record is checked
      even when ``bind_user_agent`` is off here: the gateway that minted it asked for it. A
      record minted for an app (``origin`` "app") is the exception: it is meant for whatever
      browser opens the link, so it is never bound; only the operator can mint one.

    A record from before tokens were bound (``targets`` None) can only exist while a fleet is
    being upgraded, and for at most the token TTL after; it is exchanged anywhere but at its
    source host, as it always was, unless ``bind_user_agent`` requires binding.
    """
    if matches(host, record.source_host):
        return "wrong_target"
    if record.targets is not None and not any(matches(host, t) for t in record.targets):
        return "wrong_target"
    if record.user_agent_hash is None:
        return "wrong_browser" if bind_user_agent and record.origin != "app" else None
    if not hmac.compare_digest(record.user_agent_hash, _ua_hash(user_agent or "")):
        return "wrong_browser"
    return None


# --- Signing keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKeys:
    """The HMAC keys of the ``signed`` strategy: the first signs, every one verifies.

    Rotation: put the new key first and keep the old one after it for at least the link
    lifetime, then drop it. ``repr`` never shows key material.
    """

    all: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.all:
            raise ValueError(f"no signing keys given; {GEN_KEY_ADVICE}")
        for i, key in enumerate(self.all, 1):
            check_signing_key(key, i, len(self.all))

    @property
    def signing_key(self) -> bytes:
        """The key new links are signed with."""
        return self.all[0]

    @classmethod
    def parse(cls, value: str) -> SigningKeys:
        """Keys from a ``signing.keys`` value, as :func:`gateway.keys.parse_signing_keys` reads
        them. Error messages say which key is wrong, never what it is."""
        return cls(parse_signing_keys(value))


# --- Signed links --------------------------------------------------------------------------------

_DOMAIN = "ajs-gateway-link"
_MODE_PLAIN = "v1"
_MODE_UA = "v1ua"
_MODE_APP = "v1app"
_SIG_SYNTAX = re.compile(r"(v1|v1ua|v1app)\.[A-Za-z0-9_-]{43}")
_EXP_SYNTAX = re.compile(r"[1-9][0-9]{0,11}")
# Longer than any id the identity rules accept; bounds the work spent on hostile input.
_FIELD_MAX = 4096

VerifyReason = Literal["ok", "missing", "malformed", "expired", "bad_signature"]


def _ua_hash(user_agent: str | None) -> str:
    return hashlib.sha256((user_agent or "").encode("utf-8", "surrogatepass")).hexdigest()


def _mac(key: bytes, mode: str, aid: str, uid: str, exp: str, host: str, ua: str) -> str:
    message = b"".join(
        b"%d:%s," % (len(raw), raw)
        for raw in (
            f.encode("utf-8", "surrogatepass") for f in (_DOMAIN, mode, aid, uid, exp, host, ua)
        )
    )
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_params(
    *,
    aid: str,
    uid: str | None,
    target_host: str,
    expires: int,
    keys: SigningKeys,
    user_agent: str | None,
    origin: Origin = "page",
) -> list[tuple[str, str]]:
    """The query parameters that carry ``aid``/``uid`` to ``target_host`` until ``expires``
    (Unix seconds), signed with the first key.

    Pass the browser's ``user_agent`` to bind the link to it (mode ``v1ua``), or None. With
    ``origin`` "app" the link is for an app, an email or a partner (mode ``v1app``): it is
    accepted in any browser even where ``bind_user_agent`` requires binding, since the one
    that will open it is unknown, and the arrival is counted as an app's. Raises ValueError
    for arguments that could only produce a link no gateway would accept (an empty id, an
    empty user id, a host that is not an ASCII host name, an expiry that is not a positive
    integer) and for an app link bound to a User-Agent.
    """
    host = hostname(target_host)
    if host is None:
        raise ValueError(f"cannot sign for target host {target_host!r}: not an ASCII host name")
    if not aid:
        raise ValueError("cannot sign an empty anonymous id")
    if uid == "":
        raise ValueError("the user id must be None or non-empty")
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        raise ValueError(f"expires must be a positive integer (Unix seconds), not {expires!r}")
    if origin == "app" and user_agent is not None:
        raise ValueError("a link minted for an app is bound to no browser")
    exp = str(expires)
    mode = _MODE_APP if origin == "app" else _MODE_PLAIN if user_agent is None else _MODE_UA
    ua = "" if user_agent is None else _ua_hash(user_agent)
    mac = _mac(keys.signing_key, mode, aid, uid or "", exp, host, ua)
    params = [(AID_PARAM, aid)]
    if uid is not None:
        params.append((UID_PARAM, uid))
    params += [(EXP_PARAM, exp), (SIG_PARAM, f"{mode}.{mac}")]
    return params


def signed_origin(params: Mapping[str, str]) -> Origin:
    """Who a signed link was minted for: ``app`` for mode ``v1app``. Meaningful only once
    :func:`verify_signed` has said "ok" (the mode is covered by the MAC)."""
    return "app" if params.get(SIG_PARAM, "").startswith(_MODE_APP + ".") else "page"


def verify_signed(
    params: Mapping[str, str],
    *,
    host: str,
    now: float,
    keys: SigningKeys,
    user_agent: str | None,
    bind_user_agent: bool,
    max_lifetime: int = Signing.lifetime,
) -> tuple[str | None, str | None, VerifyReason]:
    """Check a signed arrival: ``(aid, uid, "ok")`` or ``(None, None, reason)``.

    ``params`` are the decoded identity parameters of the request (see
    :func:`gateway.identity.split_identity_params`) and ``host`` its Host header. Reasons:

    - ``missing``: there is no ``ajs_sig``; nothing was signed (the other parameters, if any,
      are the caller's business).
    - ``malformed``: ``ajs_sig`` is there but the rest is not well-formed: ``ajs_aid`` or
      ``ajs_exp`` missing or mis-spelled, an empty ``ajs_uid``, an over-long field, or an
      expiry more than ``max_lifetime`` + :data:`CLOCK_SKEW` seconds ahead, which no gateway of
      ours signs (so a leaked key cannot mint long-lived links for a fleet that checks this).
    - ``bad_signature``: the MAC does not match under any key. Tampering, an unknown or retired
      key, another target host, another browser, and an unbound link where ``bind_user_agent``
      requires binding all look the same: telling them apart would need the signer's intent,
      which only an authentic MAC could vouch for. A link bound to a User-Agent is checked
      against it even when ``bind_user_agent`` is off, since its MAC covers the hash. An app's
      link (mode ``v1app``) is bound to no browser and accepted whatever ``bind_user_agent``
      says; :func:`signed_origin` tells it apart once verified.
    - ``expired``: authentic, but ``now`` is at or past the expiry. Checked after the MAC so
      that the count of expired links only counts genuine ones.

    Authentication only: the caller still applies its id rules to what comes back. Never
    raises on any ``params``.
    """
    sig = params.get(SIG_PARAM)
    if sig is None:
        return None, None, "missing"
    aid, uid, exp = params.get(AID_PARAM), params.get(UID_PARAM), params.get(EXP_PARAM)
    if (
        not aid
        or exp is None
        or uid == ""
        or not _SIG_SYNTAX.fullmatch(sig)
        or not _EXP_SYNTAX.fullmatch(exp)
        or len(aid) > _FIELD_MAX
        or (uid is not None and len(uid) > _FIELD_MAX)
    ):
        return None, None, "malformed"
    expires = int(exp)
    # Both time checks are written to fail closed should ``now`` ever be NaN.
    if not expires <= now + max_lifetime + CLOCK_SKEW:
        return None, None, "malformed"
    mode, _, mac = sig.partition(".")
    canonical = hostname(host)
    if canonical is None or (mode == _MODE_PLAIN and bind_user_agent):
        return None, None, "bad_signature"
    ua = _ua_hash(user_agent) if mode == _MODE_UA else ""
    # Every key is tried (no early exit) so the time taken does not say which one matched.
    matched = False
    for key in keys.all:
        expected = _mac(key, mode, aid, uid or "", exp, canonical, ua)
        matched |= hmac.compare_digest(expected, mac)
    if not matched:
        return None, None, "bad_signature"
    if not now < expires:
        return None, None, "expired"
    return aid, uid, "ok"


__all__ = [
    "CLOCK_SKEW",
    "Origin",
    "SigningKeys",
    "TokenRecord",
    "TokenRefusal",
    "VerifyReason",
    "new_token",
    "sign_params",
    "signed_origin",
    "token_refusal",
    "valid_token_syntax",
    "verify_signed",
]
