"""Pure: the one place that says what a host is and when two hosts are the same.

Every host the gateway compares comes through here: the ``Host`` a visitor sends (routing,
token and signature checks), the hosts and ``*.`` patterns of the config, and the host a link
leads to as the browser reads it (link decoration, the freshness endpoint's target check).

The normal form. A host is compared lower-cased, without port and without trailing dot; an IPv6
address keeps its brackets (``[::1]``); an internationalized name is in its ``xn--`` form, as
browsers put it on the wire. :func:`normalize` makes that form and checks nothing;
:func:`hostname` also refuses what no host name can be.

Three readings, strictest first:

- :func:`parse_authority` is the ``Host`` header (RFC 9110 §7.2): strict, it decides whether a
  request is served at all.
- :func:`configured_host` is a host or ``*.`` pattern from the config: as strict, and it refuses
  what a browser would never send in ``Host`` (``127.1``, ``*.10.0.0.1``), since a site or
  target configured so would silently never match.
- :func:`url_domain` is the host of a link, as the WHATWG URL parser reads it (percent-decoding,
  UTS #46). Browsers accept more than the two above (a hyphen at either end of a label); the
  gateway reads those as they do, and only ever refuses in the safe direction.

Wildcards. ``*.example.com`` is every host with one or more labels in front of
``example.com``, never ``example.com`` itself and never a look-alike (``evilexample.com``,
``example.com.evil.net``). :func:`matches` is the rule; :func:`first_match` (over
:class:`Patterns`) and :class:`HostIndex` are it, compiled for the hot paths (a link, a
request): dicts looked up by the host and its parent domains, so their cost does not grow with
the number of patterns configured. The bootstrap's click-time ``hit`` is the same rule in
JavaScript; ``tests/test_bootstrap.py`` checks the two agree.

IP addresses: see :func:`is_ip` for the one rule (the WHATWG URL parser's). Registrable domains:
one Public Suffix List, parsed once, in :func:`registrable_domain` and :func:`is_public_suffix`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit

import idna
from publicsuffixlist import PublicSuffixList

__all__ = [
    "PATTERN",
    "Authority",
    "HostIndex",
    "Pattern",
    "Patterns",
    "compile_patterns",
    "configured_host",
    "domain_to_ascii",
    "first_match",
    "hostname",
    "is_ip",
    "is_name",
    "is_public_suffix",
    "matches",
    "normalize",
    "parse_authority",
    "registrable_domain",
    "split_port",
    "url_domain",
]

# --- Syntax ---------------------------------------------------------------------------------------

# What the gateway accepts from people (Host headers, the config): a reg-name restricted to
# what a DNS host name can be (RFC 1123 §2.1 LDH labels, up to 63 characters), plus "_", which
# real intranet names carry.
# Departure from RFC 3986's reg-name, on purpose: sub-delims and pct-encoded are valid URI
# syntax but never a host a browser sends, and every one of them has been used to confuse a
# proxy and the application behind it about which host was meant.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
"""A configured host name or ``*.`` pattern in normal form (an IP address is not one)."""
# What a host name read from a URL may be once the WHATWG host parser is done with it and we
# have lower-cased it: non-empty labels of LDH and "_" of any length (browsers accept a hyphen
# at either end of a label, and so do we). Anything else is no host of ours.
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# RFC 3986 IPv6address is hex digits, colons and a dotted IPv4 tail; the IPv6Address parse
# below does the rest. Checked first because Python also accepts a "%zone" suffix, which a
# host on the wire never has (RFC 9110 leaves it out of uri-host).
_IPV6_CHARS = re.compile(r"[0-9a-f:.]+")
# RFC 3986 port = *DIGIT; an empty port ("host:") is refused, and so is anything over 65535.
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_NAME = 253


def _is_ipv6(text: str) -> bool:
    """Whether ``text`` (lower case, no brackets) is an IPv6 address, without a zone."""
    if _IPV6_CHARS.fullmatch(text) is None:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# --- The Host header ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A checked authority: ``host`` lower-case without a trailing dot (an IPv6 literal keeps
    its brackets), ``port`` when one was given."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def effective_port(self, scheme: str) -> int:
        if self.port is not None:
            return self.port
        return 443 if scheme == "https" else 80


@functools.lru_cache(maxsize=4096)
def parse_authority(value: str) -> Authority | None:
    """``host[:port]`` as a visitor sent it (its ``Host`` header, or the authority of an
    absolute-form request-target), checked and normalised; None if it is not one.

    RFC 9110 §7.2 and RFC 3986 §3.2: ``Host = uri-host [ ":" port ]``, where ``uri-host`` is an
    IP-literal (``[v6]``), an IPv4 address or a reg-name. Browsers only ever send a host as the
    WHATWG URL parser left it: ASCII, lower- or upper-case LDH labels (IDN already in punycode),
    or an IP literal. Everything else a hostname cannot hold (userinfo ``@``, spaces, quotes,
    ``<>``, percent signs, an IPv6 zone, empty labels, non-digit or out-of-range ports) is
    refused here, so it can reach neither the routing table, nor an upstream's ``Host`` (where
    apps build absolute URLs from it: ``Host: shop:80@evil.com`` poisons password-reset links),
    nor an injected script.

    Memoised: a site's visitors send the same few values, and this runs on every request.
    """
    text = value.lower()
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or not _is_ipv6(text[1:end]):
            return None
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not host or len(host) > _MAX_NAME + 1 or _REG_NAME.fullmatch(host) is None:
            return None
        host = host.removesuffix(".")
    if not rest:
        return Authority(host)
    if rest[0] != ":" or _PORT.fullmatch(rest[1:]) is None:
        return None
    port = int(rest[1:])
    if not 0 < port <= 65535:
        return None
    return Authority(host, port)


# --- The normal form ------------------------------------------------------------------------------


def split_port(authority: str) -> tuple[str, str]:
    """``host[:port]`` split as written: ``(host, port text)``, the port text empty when there
    is none. An IPv6 literal keeps its brackets; a bare IPv6 address (more than one colon) is
    all host. Nothing is checked or changed."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            return authority, ""
        return authority[: end + 1], authority[end + 1 :].removeprefix(":")
    if authority.count(":") > 1:
        return authority, ""
    host, _, port = authority.partition(":")
    return host, port


# normalize and hostname are memoised: they run several times per request on the same Host,
# and on every link that needs the full parse; a page repeats its hosts.
@functools.lru_cache(maxsize=4096)
def normalize(host: str) -> str:
    """``host`` (a ``Host`` value, or a host with or without a port) in the normal form hosts
    are compared in: surrounding whitespace trimmed, lower case, no port, no trailing dot, an
    IPv6 address in brackets (a bare one gets them). Checks nothing: see :func:`hostname`."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h if end == -1 else h[: end + 1]
    if h.count(":") > 1:
        # A bare IPv6 address (split_port's rule); with a "]" in it, no address at all.
        return h if "]" in h else f"[{h}]"
    return h.partition(":")[0].rstrip(".")


def is_name(text: str) -> bool:
    """Whether ``text`` is a host name in normal form: non-empty dot-separated labels of
    ``a-z``, ``0-9``, ``-`` and ``_`` (no IP literal, no port, no trailing dot)."""
    return _NAME.fullmatch(text) is not None


@functools.lru_cache(maxsize=4096)
def hostname(host: str) -> str | None:
    """:func:`normalize`, or None when the result is neither a host name (:func:`is_name`) nor
    an IPv6 literal. An internationalized name must already be in its ``xn--`` form (see
    :func:`url_domain` for reading one)."""
    name = normalize(host)
    if name.startswith("["):
        return name if name.endswith("]") and _is_ipv6(name[1:-1]) else None
    return name if _NAME.fullmatch(name) else None


class RefererHost(NamedTuple):
    scheme: str
    host: str  # normal form (:func:`hostname`)
    port: int | None


def referer_host(referer: str | None) -> RefererHost | None:
    """Scheme, host and port of the page a request came from (its ``Referer``), or None when
    there is none or it is not an http(s) URL with a host. The one reading of a Referer: the
    fragmentation measure, the rescue and the hand-off events all ask it."""
    if not referer:
        return None
    try:
        parts = urlsplit(referer.strip())
        port = parts.port
    except ValueError:
        return None
    host = hostname(parts.hostname) if parts.hostname else None
    if parts.scheme not in ("http", "https") or host is None:
        return None
    return RefererHost(parts.scheme, host, port)


# --- Hosts as browsers read them ------------------------------------------------------------------

# Host code points the WHATWG host parser rejects (forbidden domain code points), plus any
# C0 control or space, which we must never pass on.
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")


def url_domain(raw: str) -> str | None:
    """The ASCII host name a browser makes of the host text ``raw`` of an http(s) URL, or None
    where it fails (or where browsers disagree; see :func:`domain_to_ascii`).

    The WHATWG host parser: percent-decode, UTF-8 decode, domain to ASCII. So
    ``gro%C3%9Fbank.test`` is ``großbank.test`` is ``xn--grobank-2va.test``, and an escape
    that is not UTF-8 fails (the browser's U+FFFD is not allowed in a host either).
    """
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
    return domain_to_ascii(raw)


# UTS #46 changed the mapping of these between versions, so browsers of different ages go to
# different hosts: U+1E9E (capital sharp s) maps to "ss" up to Unicode 15.0 (node 20's URL
# parser, older Safari) and to "ß" from 15.1 (current ICU, so Chrome, and the idna package).
# A host that means one thing to one browser and another to the next is no one's target.
_UNSTABLE_MAPPING = frozenset("\u1e9e")


def domain_to_ascii(domain: str) -> str | None:
    """``domain`` as browsers put it on the wire, or None if they refuse it (never raises).

    The WHATWG URL Standard's *domain to ASCII* (UTS #46 ToASCII, non-transitional, without
    STD3 rules, hyphen or DNS length checks; joiners and bidi checked), then its check for
    forbidden domain code points. Non-transitional matters: ``ß`` and ``ς`` stay themselves
    (``xn--grobank-2va``), where IDNA 2003 (Python's ``"idna"`` codec) maps them to ``ss`` and
    ``σ``, another registrable domain. Case, full-width forms, ideographic full stops and
    ignorable code points (soft hyphen) are mapped as browsers map them.

    - An ASCII name with no ``xn--`` label is only lower-cased: the Standard notes that this is
      all ToASCII does to one, and it keeps plain hosts off the slow path below.
    - Otherwise the name is mapped by the ``idna`` package. Its non-ASCII and ``xn--`` labels
      must also pass that package's IDNA 2008 checks, which are stricter than UTS #46 (emoji,
      ``_``, a hyphen at either end or in positions 3-4, empty or over-long labels, names over
      1024 characters): browsers accept some of those, we refuse them. That direction is safe:
      nothing is decorated or redirected to such a host, and none can be configured as a
      target (:func:`configured_host` reads hosts with this function); only a link to one under
      a ``*.`` target goes undecorated. Other ASCII labels are kept, as browsers keep them.
    - Names whose meaning changed between Unicode versions (``_UNSTABLE_MAPPING``) are refused.

    What is left is the IPv4 reading of names that end in a number, which the caller does.
    """
    if domain.isascii():
        name = domain.lower()
        if "xn--" not in name:
            return name if name and not _FORBIDDEN_HOST.search(name) else None
    elif not _UNSTABLE_MAPPING.isdisjoint(domain):
        return None
    try:
        # Non-transitional processing is the default (and since UTS #46 15.1 the only one).
        mapped = idna.uts46_remap(domain, std3_rules=False)
        name = ".".join(
            label
            if label.isascii() and not label.startswith("xn--")
            else idna.alabel(label).decode("ascii")
            for label in mapped.split(".")
        )
    except UnicodeError:  # idna.IDNAError and the codecs' errors alike
        return None
    return name if name and not _FORBIDDEN_HOST.search(name) else None


# --- IP addresses ---------------------------------------------------------------------------------

# The WHATWG IPv4 number parser's hexadecimal form: "0x" and any hex digits (none reads as 0).
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


def is_ip(host: str) -> bool:
    """Whether browsers take ``host`` (in normal form) for an IP address rather than a name.

    The one rule, the WHATWG URL Standard's host parser:

    - ``[...]`` holding an IPv6 address (a bare IPv6 address, with no brackets, counts too);
    - a name that *ends in a number*: its last label (after a trailing dot) is ASCII digits,
      or ``0x`` and hex digits. The parser reads all of these as IPv4, in decimal, octal or
      hex, one to four parts: ``127.1``, ``0x7f.1`` and ``10.0.0.1`` are addresses, and
      ``1.2.3.256`` or ``foo.123`` are failures (the browser refuses the URL). Either way
      they are not names: no ``Domain`` cookie, no registrable domain, no subdomains.

    A stricter reading (``ipaddress.ip_address``, dotted quads only) would take ``127.1`` for a
    name, and give it a registrable domain; a looser one (anything in brackets) would let a
    ``[junk]`` through as an address.
    """
    if host.startswith("["):
        return host.endswith("]") and _is_ipv6(host[1:-1])
    if ":" in host:
        return _is_ipv6(host)
    last = host.removesuffix(".").rpartition(".")[2]
    return (last.isascii() and last.isdigit()) or _HEX_NUMBER.fullmatch(last) is not None


def _canonical_ipv4(name: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(name)) == name
    except ValueError:
        return False


def configured_host(raw: str) -> str | None:
    """A host or ``*.`` pattern from the config the way browsers send it in ``Host``, or None
    if it cannot be one.

    Lower case, no trailing dot, an internationalized name in its ``xn--`` form
    (``pay.großbank.test`` is ``pay.xn--grobank-2va.test``, never ``pay.grossbank.test``),
    LDH labels (:data:`PATTERN`). An IP address only as browsers write it: a dotted-quad IPv4
    (``127.0.0.1``, not ``127.1`` or ``0x7f.0.0.1``) or an IPv6 address, which gets brackets
    (``::1`` is ``[::1]``). Never a port, and never ``*.`` in front of an address.
    """
    text = raw.strip()
    if text.startswith("[") or text.count(":") > 1:
        literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        literal = literal.lower()
        return f"[{literal}]" if _is_ipv6(literal) else None
    star = "*." if text.startswith("*.") else ""
    name = domain_to_ascii(text[len(star) :])
    if name is None:
        return None
    name = name.rstrip(".")
    if is_ip(name):
        return name if not star and _canonical_ipv4(name) else None
    return star + name if PATTERN.fullmatch(star + name) else None


# --- Wildcard patterns ----------------------------------------------------------------------------


class Pattern(NamedTuple):
    """A host pattern compiled for matching: ``text`` as configured, and either the ``exact``
    host or the ``suffix`` (``.example.com``) a ``*.`` pattern stands for, in normal form.
    Both None: the pattern matches nothing."""

    text: str
    exact: str | None
    suffix: str | None


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Pattern:
    p = pattern.strip().lower()
    if p.startswith("*."):
        suffix = hostname(p[2:])
        return Pattern(pattern, None, None if suffix is None else "." + suffix)
    return Pattern(pattern, hostname(p), None)


class Patterns:
    """Host patterns in their configured order, compiled so that finding the first one a host
    matches costs the same for three patterns as for thousands: one dict hit for the host
    itself, and one for each of its parent domains (``a.b.example.com``: ``b.example.com``,
    ``example.com``, ``com``), each looked up among the ``*.`` patterns. The hit listed first
    wins, so the answer is the linear scan's (``tests/test_hosts.py`` holds it to one).

    ``patterns``: the compiled patterns, in order. A pattern listed twice (in normal form)
    keeps its first place."""

    __slots__ = ("_exact", "_wild", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(_compile(p) for p in patterns)
        # Normal form -> (position, text as configured); a suffix without its leading dot.
        exact: dict[str, tuple[int, str]] = {}
        wild: dict[str, tuple[int, str]] = {}
        for position, (text, host, suffix) in enumerate(self.patterns):
            if host is not None:
                exact.setdefault(host, (position, text))
            elif suffix is not None:
                wild.setdefault(suffix[1:], (position, text))
        self._exact: Mapping[str, tuple[int, str]] = exact
        self._wild: Mapping[str, tuple[int, str]] = wild

    def __len__(self) -> int:
        return len(self.patterns)

    def first(self, name: str) -> str | None:
        """See :func:`first_match`."""
        best = self._exact.get(name)
        wild = self._wild
        if wild:
            dot = name.find(".")
            while dot != -1:
                hit = wild.get(name[dot + 1 :])
                if hit is not None and (best is None or hit[0] < best[0]):
                    best = hit
                dot = name.find(".", dot + 1)
        return None if best is None else best[1]


@functools.lru_cache(maxsize=64)
def compile_patterns(patterns: tuple[str, ...]) -> Patterns:
    """``patterns`` compiled for :func:`first_match`, in their order (memoised: the same
    configured targets are compiled for every page)."""
    return Patterns(patterns)


def first_match(name: str, patterns: Patterns) -> str | None:
    """The text of the first of ``patterns`` the host ``name`` matches, or None: the rule of
    :func:`matches`, for a ``name`` already checked (as :func:`hostname` or
    :func:`parse_authority` return it). A checked name has no empty label, so ending in
    ``.example.com`` is having one or more labels in front of ``example.com``: one of its
    parent domains is ``example.com``."""
    return patterns.first(name)


def matches(host: str, pattern: str) -> bool:
    """Whether ``host`` is the host ``pattern``: the same host, or for ``*.example.com`` one
    with one or more labels in front of ``example.com`` (not ``example.com`` itself, never a
    look-alike such as ``evilexample.com`` or ``example.com.evil.net``).

    Both sides are compared in normal form (case, port and a trailing dot do not matter); a
    ``host`` that is no host name (:func:`hostname`) matches nothing.
    """
    name = hostname(host)
    if name is None:
        return False
    _, exact, suffix = _compile(pattern)
    return name == exact or (suffix is not None and name.endswith(suffix))


_V = TypeVar("_V")


class HostIndex(Generic[_V]):
    """Values by host or ``*.`` pattern, for looking hosts up on every request: an exact host
    is one dict hit; otherwise the most specific matching ``*.`` pattern (the longest suffix,
    so ``*.shop.example.com`` wins over ``*.example.com``) decides, found by looking the host's
    parent domains up from the longest down. A host listed twice keeps its first value."""

    def __init__(self, items: Iterable[tuple[str, _V]]) -> None:
        exact: dict[str, _V] = {}
        # By suffix without its leading dot (``*.Example.com`` and ``*.example.com`` are one).
        wild: dict[str, _V] = {}
        for host, value in items:
            pattern = _compile(host)
            if pattern.suffix is not None:
                wild.setdefault(pattern.suffix[1:], value)
            elif pattern.exact is not None:
                exact.setdefault(pattern.exact, value)
        self._exact: Mapping[str, _V] = exact
        self._wild: Mapping[str, _V] = wild

    def get(self, name: str) -> _V | None:
        """The value for the host ``name``, or None. ``name`` must be checked, as
        :func:`hostname` and :func:`parse_authority` return it (see :func:`first_match`)."""
        value = self._exact.get(name)
        if value is not None or not self._wild:
            return value
        dot = name.find(".")
        while dot != -1:
            value = self._wild.get(name[dot + 1 :])
            if value is not None:
                return value
            dot = name.find(".", dot + 1)
        return None


# --- Registrable domains --------------------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    # The bundled list, parsed once on first use (it takes a noticeable moment) and never
    # changed after: the one instance every caller shares.
    return PublicSuffixList()


def is_public_suffix(name: str) -> bool:
    """Whether the host name ``name`` (normal form) is a public suffix (``com``, ``co.uk``,
    ``github.io``), on which browsers refuse cookies. ICANN and private sections both count,
    as browsers use them, and unknown TLDs follow the list's default rule ``*``."""
    return bool(_psl().is_public(name))


def registrable_domain(name: str) -> str | None:
    """The registrable domain (eTLD+1) of the host name ``name`` (normal form, not an IP
    address), or None when it is itself a public suffix: ``www.shop.example.co.uk`` ->
    ``example.co.uk``, ``a.b.foo.github.io`` -> ``foo.github.io``, ``www.shop.test`` ->
    ``shop.test`` (the default rule ``*``, as browsers apply it), ``github.io`` -> None."""
    domain: str | None = _psl().privatesuffix(name)
    return domain
