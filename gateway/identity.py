"""Identity rules on the wire: id validation, identity cookies, URL clean-up and decoration
(``decorate_url``; which links get decorated is :mod:`gateway.links`' LinkDecorator).

Everything here is pure (strings in, strings out, no I/O, no clocks except where a caller passes
``now``) so that the proxy glue stays thin and these rules can be tested exhaustively.

Two parsers of URLs meet here and in :mod:`gateway.links`: Python's ``urllib.parse`` (RFC
3986) and the browser's (the WHATWG URL Standard). Where they differ, the browser is the one
that navigates, so the host-finding code (links.py) follows the WHATWG rules that matter for
deciding *which host a URL goes to*: leading/trailing C0-control-or-space is trimmed, tab and
newline are removed anywhere, ``\\`` counts as ``/`` in http(s) URLs, any run of slashes after
``http:`` introduces the authority, and ``http:foo`` is relative when the base is also
``http``. We never re-serialize a URL we were given: decoration edits the original text so that
upstream applications see their own bytes. What the host text then means (UTS #46, IP
addresses) and which target it matches is :mod:`gateway.hosts`' business.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import quote, unquote

from gateway.options import Identity

from .hosts import (
    hostname,
    is_ip,
    is_name,
    is_public_suffix,
    registrable_domain,
)

ANON_COOKIE = "ajs_anonymous_id"
USER_COOKIE = "ajs_user_id"

_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# A UUID (what analytics.js mints) or a conservative token. The explicit ASCII ranges matter:
# ``\w`` would admit any Unicode letter. Always applied with ``fullmatch``.
DEFAULT_ID_PATTERN: re.Pattern[str] = re.compile(rf"{_UUID}|[A-Za-z0-9._:-]{{1,128}}")

# Safety net applied on top of any configured id pattern, so that a loose pattern can never let
# through something that breaks a cookie, a header, a URL or an HTML attribute.
_AID_HARD_MAX = 256
_AID_UNSAFE = re.compile(r"[^\x21-\x7e]|[\"'`<>\\;,%]")
# User ids are free-form in Segment, so allow any printable text but refuse what is dangerous in
# the places we put it (cookie values, query strings, HTML attributes, inline script).
_UID_FORBIDDEN = frozenset("\"'`<>;,\\")


@dataclass(frozen=True)
class IdRules:
    """Which anonymous and user ids the gateway accepts from URLs and cookies.

    Ids arrive from the visitor's URL, so they are attacker-controlled. An id that fails these
    rules is treated as absent (a fresh id is minted or the cookie is kept), never "repaired".
    """

    id_pattern: re.Pattern[str] = DEFAULT_ID_PATTERN
    uid_max_len: int = Identity.uid_max_length

    def valid_aid(self, value: str | None) -> str | None:
        """Return ``value`` if it is an acceptable anonymous id, else None.

        The configured pattern must match the whole value; independently of the pattern the value
        must be 1-256 printable ASCII characters without quotes, backquote, ``<>``, ``\\``, ``;``,
        ``,`` or ``%`` (so it can go into a cookie or a URL verbatim).
        """
        if not value or len(value) > _AID_HARD_MAX or _AID_UNSAFE.search(value):
            return None
        return value if self.id_pattern.fullmatch(value) else None

    def valid_uid(self, value: str | None) -> str | None:
        """Return ``value`` if it is an acceptable user id, else None.

        Deliberately strict: at most ``uid_max_len`` characters, all printable in the sense of
        ``str.isprintable`` (so no control, format, separator or surrogate characters other than
        the ASCII space), no leading or trailing whitespace, and none of ``"'`<>;,\\``. Non-ASCII
        letters are allowed; they are percent-encoded wherever they go on the wire.
        """
        if not value or len(value) > self.uid_max_len:
            return None
        if value != value.strip() or not value.isprintable():
            return None
        if any(c in _UID_FORBIDDEN for c in value):
            return None
        return value


def mint_id() -> str:
    """A fresh anonymous id in the form analytics.js itself uses (a random UUID)."""
    return str(uuid.uuid4())


# --- Cookies -------------------------------------------------------------------------------------


def read_cookie(cookie_headers: Sequence[str], name: str) -> str | None:
    """Return the decoded value of the first cookie called ``name`` in raw ``Cookie`` headers.

    Hand-parsed because ``http.cookies.SimpleCookie`` discards the whole header when one cookie
    in it is malformed, and other sites on the same domain set all sorts. The first occurrence
    wins, as in ``document.cookie`` readers (a more specific Path or an older cookie sorts first).

    analytics.js has written the id in several forms over the years; all decode to ``abc``:
    ``abc``, ``"abc"`` (JSON), ``%22abc%22`` (URL-encoded JSON) and URL-encoded plain text.
    The value is not validated here: that is ``IdRules``' job. Never raises.
    """
    for header in cookie_headers:
        for pair in header.split(";"):
            key, eq, value = pair.partition("=")
            # A pair without "=" is a nameless cookie to browsers; it can never be ours.
            if eq and key.strip(" \t") == name:
                return _decode_cookie_value(value.strip(" \t"))
    return None


def _decode_cookie_value(raw: str) -> str:
    value = unquote(raw) if "%" in raw else raw
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        # Not valid JSON (e.g. an RFC 6265 quoted value with a stray backslash): drop the quotes.
        value = decoded if isinstance(decoded, str) else value[1:-1]
    return value


# cookie-octet (RFC 6265 section 4.1.1) minus "%", which we use to escape everything else; so the
# written value is always a valid cookie value and a ``%`` in an id survives a decode round trip.
_COOKIE_SAFE = "!#$&'()*+/:<=>?@[]^`{|}"


def identity_cookies(
    aid: str | None,
    uid: str | None,
    *,
    domain: str | None,
    max_age: int,
    secure: bool,
    now: float,
    shadow: str | None = None,
) -> list[str]:
    """``Set-Cookie`` values that persist the ids where analytics.js will find them, and the
    anonymous id's server-only copy in the cookie called ``shadow`` (when given).

    The readable cookies are not HttpOnly: analytics.js reads them from ``document.cookie``.
    The server-only copy is the same id with the same scope and lifetime, ``HttpOnly`` so that
    no script can shorten or remove it: Safari caps every cookie a script writes to 7 days, and
    analytics.js rewrites ``ajs_anonymous_id`` through ``document.cookie`` on every event, so
    the readable one soon carries that cap whoever set it first (see
    :func:`gateway.inbound.cookie_identity` for how the two are read back).

    ``SameSite=Lax`` so the cookies come along on top-level navigations from the other domains.
    ``Expires`` accompanies ``Max-Age`` for old clients that only know the former. Values are
    written in the plain form current analytics.js writes, with anything outside cookie-octet
    percent-encoded (which analytics.js's cookie reader decodes), so no input can inject an
    attribute or a header. ``domain=None`` makes host-only cookies.
    """
    if max_age < 0:
        raise ValueError(f"max_age must be >= 0, got {max_age}")
    attrs = _attributes(domain, max_age, now, secure)
    cookies = [
        f"{name}={quote(value, safe=_COOKIE_SAFE)}{attrs}"
        for name, value in ((ANON_COOKIE, aid), (USER_COOKIE, uid))
        if value is not None
    ]
    if shadow is not None and aid is not None:
        cookies.append(f"{shadow}={quote(aid, safe=_COOKIE_SAFE)}{attrs}; HttpOnly")
    return cookies


def expired_cookie(name: str, *, domain: str | None, secure: bool) -> str:
    """A ``Set-Cookie`` value that removes the server-only cookie ``name`` (set by
    :func:`identity_cookies` with the same ``domain``): a browser matches a cookie by name,
    domain and path, and drops it on a ``Max-Age`` of 0."""
    return f"{name}={_attributes(domain, 0, 0, secure)}; HttpOnly"


def _attributes(domain: str | None, max_age: int, now: float, secure: bool) -> str:
    if domain is not None and not is_name(domain):
        raise ValueError(f"not a cookie domain: {domain!r}")
    attrs = ""
    if domain is not None:
        attrs += f"; Domain={domain}"
    attrs += f"; Path=/; Max-Age={max_age}; Expires={formatdate(now + max_age, usegmt=True)}"
    attrs += "; SameSite=Lax"
    if secure:
        attrs += "; Secure"
    return attrs


# Public Suffix List look-ups are slow next to a dict hit, and a wildcard site can bring any
# number of hosts: memoised, bounded.
@functools.lru_cache(maxsize=4096)
def cookie_domain(host: str, configured: str | None) -> str | None:
    """The ``Domain`` attribute for the identity cookies on ``host``, or None for host-only.

    - IP addresses (v4, v6, and the numeric forms browsers read as IPv4, see
      :func:`gateway.hosts.is_ip`) and single-label hosts such as ``localhost`` get host-only
      cookies: browsers refuse a Domain attribute there.
    - ``configured`` is used when ``host`` is it or a subdomain of it and it is not itself a
      public suffix. Otherwise it cannot work for this host (the browser would drop the cookie),
      so we fall back to the automatic choice below rather than lose the cookie.
    - Otherwise the registrable domain per the Public Suffix List (ICANN and private sections, as
      browsers use it). Unknown TLDs follow the list's default rule ``*``, exactly as browsers do:
      ``www.shop.test`` -> ``shop.test``. ``localhost`` is such an unknown TLD, so
      ``www.shop.localhost`` -> ``shop.localhost`` and ``a.localhost`` -> ``a.localhost``;
      Chromium's cookie code (which resolves unknown registries the same way) accepts those.
    - A host that is itself a public suffix (``github.io``) gets host-only cookies.
    """
    name = hostname(host)
    if name is None or "." not in name or is_ip(name):
        return None
    if configured:
        want = configured.strip().lower().strip(".")
        if (
            (name == want or name.endswith("." + want))
            and "." in want
            and is_name(want)
            and not is_public_suffix(want)
        ):
            return want
    return registrable_domain(name)


# --- Query strings and the clean-up redirect -----------------------------------------------------

TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")


def _param_name(segment: str) -> str:
    """The decoded name of one ``name=value`` query segment, as URLSearchParams would see it."""
    raw = TAB_OR_NEWLINE.sub("", segment.partition("=")[0])
    return unquote(raw.replace("+", " "))


def split_identity_params(raw_query: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """Remove the parameters called ``names`` from a raw query string (given without ``?``).

    Returns the cleaned query and ``{name: first decoded value}`` for the names found. Parameters
    are split on ``&`` only (as URLSearchParams does; ``;`` is data) and compared by decoded name
    (``+`` is a space). Every other segment is kept byte-for-byte and in order, including empty
    segments (``a=1&&b=2``): they are the application's bytes and cost nothing to keep.
    """
    kept: list[str] = []
    found: dict[str, str] = {}
    for segment in raw_query.split("&"):
        name = _param_name(segment)
        if name in names:
            value = segment.partition("=")[2]
            found.setdefault(name, unquote(value.replace("+", " ")))
        else:
            kept.append(segment)
    return "&".join(kept), found


C0_CONTROL_OR_SPACE = "".join(map(chr, range(0x21)))
_UNSAFE_IN_LOCATION = re.compile(r"[^\x21-\x7e]|#")


def _pct(match: re.Match[str]) -> str:
    return quote(match.group(), safe="")


def same_origin_location(raw_path: str, raw_query: str) -> str:
    """The ``Location`` for the clean-up redirect: this path with ``raw_query`` as its query.

    Whatever the input, the result is a path-absolute reference that every URL parser resolves
    to the request's own origin: the input is first normalized the way browsers read a URL (ends
    trimmed of C0 control or space, tab and newline dropped), then any leading run of ``/`` and
    ``\\`` collapses to one ``/`` so the result can never begin ``//`` or ``/\\`` (a
    scheme-relative URL to another host). A path that does not start with a slash (an
    absolute-form request target, say) gets one in front, which makes it a harmless path.
    Other bytes are kept, except that ``#`` and anything outside printable ASCII are
    percent-encoded so the header stays valid and the query stays a query.
    """
    path = TAB_OR_NEWLINE.sub("", raw_path.strip(C0_CONTROL_OR_SPACE))
    path = "/" + path.lstrip("/\\")
    location = _UNSAFE_IN_LOCATION.sub(_pct, path)
    query = _UNSAFE_IN_LOCATION.sub(_pct, TAB_OR_NEWLINE.sub("", raw_query))
    return f"{location}?{query}" if query else location


# --- Link decoration -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _encoded(
    params: tuple[tuple[str, str], ...], replace: frozenset[str]
) -> tuple[frozenset[str], str, Callable[[str], object]]:
    """The names to remove, the query text of a set of params and a search for any of the
    names (the same ones decorate every link of a page, so they are encoded once)."""
    names = frozenset(name for name, _value in params) | replace
    added = "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params)
    # One regex search, where a generator testing each name costs more than the rest of a
    # decoration (no names: a pattern that never matches).
    mentions = re.compile("|".join(map(re.escape, sorted(names))) or r"(?!)").search
    return names, added, mentions


def decorate_url(url: str, params: Sequence[tuple[str, str]], replace: Collection[str] = ()) -> str:
    """Add ``params`` to ``url``'s query, replacing every existing parameter of the same name
    (and removing any named in ``replace``: identity the page itself wrote into a link must not
    ride along with ours, e.g. a stale ``ajs_uid`` next to the visitor's ``ajs_aid``).

    The parameters go at the end of the query, before any ``#fragment``; the rest of the URL is
    kept as written (no re-quoting). Names and values are percent-encoded. Surrounding
    whitespace stays outside the URL, where the browser trims it. Idempotent for fixed params.
    """
    body = url.strip(C0_CONTROL_OR_SPACE)
    if not body:
        return url
    start = len(url) - len(url.lstrip(C0_CONTROL_OR_SPACE))
    lead, tail = url[:start], url[start + len(body) :]
    before_fragment, hash_, fragment = body.partition("#")
    path, _, query = before_fragment.partition("?")
    names, added, mentions = _encoded(tuple(params), frozenset(replace))
    # An existing parameter of the same name can only hide in a query that spells part of one
    # of them, or encodes characters.
    if query and ("%" in query or mentions(query)):
        query, _ = split_identity_params(query, names)
    if not query.strip("&"):
        # Only empty segments ("?&"): nothing to keep, and keeping them would make a second
        # decoration differ from the first.
        query = ""
    if query and not query.endswith("&"):
        query += "&"
    return f"{lead}{path}?{query}{added}{hash_}{fragment}{tail}"


__all__ = [
    "ANON_COOKIE",
    "DEFAULT_ID_PATTERN",
    "USER_COOKIE",
    "IdRules",
    "cookie_domain",
    "decorate_url",
    "expired_cookie",
    "identity_cookies",
    "mint_id",
    "read_cookie",
    "same_origin_location",
    "split_identity_params",
]
