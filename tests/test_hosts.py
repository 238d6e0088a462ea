"""Tests for gateway.hosts: a table for every rule, properties against naive references.

The Host-header check (parse_authority) has its table in test_framing.py, beside the requests
it decides; the bootstrap's JavaScript copy of the wildcard rule is held to matches() in
test_bootstrap.py.
"""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hosts import (
    PATTERN,
    HostIndex,
    Patterns,
    compile_patterns,
    configured_host,
    first_match,
    hostname,
    is_ip,
    is_name,
    is_public_suffix,
    matches,
    normalize,
    parse_authority,
    referer_host,
    registrable_domain,
    split_port,
)

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# --- The normal form -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com", ("example.com", "")),
        ("example.com:8080", ("example.com", "8080")),
        ("example.com:", ("example.com", "")),
        ("[::1]:443", ("[::1]", "443")),
        ("[::1]", ("[::1]", "")),
        ("[::1", ("[::1", "")),
        ("::1", ("::1", "")),
        ("a:b:c", ("a:b:c", "")),
        ("", ("", "")),
    ],
)
def test_split_port(authority: str, expected: tuple[str, str]) -> None:
    assert split_port(authority) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM:8443", "www.example.com"),
        ("www.example.com.", "www.example.com"),
        ("www.example.com..:80", "www.example.com"),
        ("  www.example.com\t", "www.example.com"),
        ("*.Example.com.", "*.example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("::1", "[::1]"),
        ("2001:db8::1", "[2001:db8::1]"),
        # No check: what cannot be a host is still put in the form, never repaired.
        ("[::1", "[::1"),
        ("a:b]:c", "a:b]:c"),
        ("bad host", "bad host"),
        ("", ""),
        (":80", ""),
    ],
)
def test_normalize(host: str, expected: str) -> None:
    assert normalize(host) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM:8443", "www.example.com"),
        (" example.com. ", "example.com"),
        ("in_tranet", "in_tranet"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        # Browsers accept a hyphen at either end of a label; so do we, when reading.
        ("-x.example.com", "-x.example.com"),
        ("xn--grobank-2va.test", "xn--grobank-2va.test"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("127.1", "127.1"),
        ("[::1]:80", "[::1]"),
        ("::1", "[::1]"),
        ("[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"),
        ("", None),
        (".", None),
        ("a..example.com", None),
        (".example.com", None),
        ("bad host.test", None),
        ("evil.test\r\nX: y", None),
        ("a/b", None),
        ("a@b", None),
        ("a%2eb", None),
        # Internationalized names must arrive in their xn-- form (see url_domain).
        ("shöp.example", None),
        ("[::1", None),
        ("[zz]", None),
        ("[1:2]", None),
        ("[fe80::1%eth0]", None),
        ("[]", None),
        ("*.example.com", None),
    ],
)
def test_hostname(host: str, expected: str | None) -> None:
    assert hostname(host) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", True),
        ("a", True),
        ("a-b_c.d", True),
        ("Example.com", False),
        ("example.com.", False),
        ("a..b", False),
        ("example.com:80", False),
        ("[::1]", False),
        ("", False),
    ],
)
def test_is_name(text: str, expected: bool) -> None:
    assert is_name(text) is expected


# Host-ish text, without whitespace: what normalisation is for.
HOSTISH = st.text(alphabet="aAzZ09._-:[]*", max_size=24)


@given(HOSTISH)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@given(st.text(max_size=24))
def test_hostname_is_idempotent_and_in_normal_form(text: str) -> None:
    name = hostname(text)
    if name is not None:
        assert hostname(name) == name
        assert normalize(name) == name
        assert is_name(name) or (name.startswith("[") and is_ip(name))


@given(st.text(max_size=24))
def test_parse_authority_agrees_with_hostname(text: str) -> None:
    """Every Host the gateway serves is a host name in normal form, and the same one."""
    authority = parse_authority(text)
    if authority is not None:
        assert hostname(text) == authority.host


# --- IP addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1.", True),
        # The WHATWG host parser reads every name that ends in a number as IPv4 ...
        ("127.1", True),
        ("0x7f.1", True),
        ("0x7F.1", True),
        ("0177.0.0.1", True),
        ("0x", True),
        ("4294967295", True),
        # ... and fails those that are not one: not a name either.
        ("1.2.3.256", True),
        ("foo.123", True),
        ("[::1]", True),
        ("[2001:db8::1]", True),
        ("[::ffff:1.2.3.4]", True),
        ("::1", True),
        ("example.com", False),
        ("localhost", False),
        ("123.example", False),
        ("0x7f.example", False),
        ("a.0x7g", False),
        ("1a", False),
        ("a.1b", False),
        ("a.", False),
        ("", False),
        (".", False),
        # Digits that are not ASCII are not numbers to the URL parser.
        ("a.\u0661\u0662", False),
        ("[zz]", False),
        ("[1:2]", False),
        ("[::1", False),
        ("[127.0.0.1]", False),
        ("[fe80::1%eth0]", False),
        ("a:b", False),
    ],
)
def test_is_ip(host: str, expected: bool) -> None:
    assert is_ip(host) is expected


@given(st.ip_addresses(v=4))
def test_is_ip_for_every_ipv4_address(address: ipaddress.IPv4Address) -> None:
    assert is_ip(str(address))
    assert hostname(str(address)) == str(address)


@given(st.ip_addresses(v=6))
def test_is_ip_for_every_ipv6_address(address: ipaddress.IPv6Address) -> None:
    for text in (address.compressed, address.exploded):
        assert is_ip(text)
        assert is_ip(f"[{text}]")
        assert hostname(text) == f"[{text}]"


LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


@given(
    st.lists(st.text(alphabet=LABEL_CHARS, min_size=1, max_size=6), max_size=3),
    st.text(alphabet=LABEL_CHARS, min_size=1, max_size=6),
)
def test_is_ip_is_the_last_label_only(front: list[str], last: str) -> None:
    """The rule reads nothing but the last label: a number (decimal, or 0x and hex digits)."""
    name = ".".join([*front, last])
    hex_digits = set("0123456789abcdef")
    number = last.isdigit() or (last.startswith("0x") and set(last[2:]) <= hex_digits)
    assert is_ip(name) is number


@given(st.lists(st.integers(0, 999).map(str), min_size=4, max_size=4).map(".".join))
def test_a_dotted_quad_is_configured_exactly_when_ipaddress_reads_it(text: str) -> None:
    try:
        canonical = str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        canonical = False
    assert is_ip(text)
    assert (configured_host(text) == text) is canonical
    assert configured_host(text) in (text, None)


# --- Hosts from the config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("www.example.com", "www.example.com"),
        (" WWW.Example.com. ", "www.example.com"),
        ("*.shop.test", "*.shop.test"),
        ("*.Shop.Test.", "*.shop.test"),
        ("in_tranet", "in_tranet"),
        ("pay.großbank.test", "pay.xn--grobank-2va.test"),
        ("*.ΑΒΓ.test", "*.xn--mxacd.test"),
        ("пример.испытание", "xn--e1afmkfd.xn--80akhbyknj4f"),
        ("１２７.０.０.１", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        # Never sent in Host by a browser, so no site or target can be any of these.
        ("127.1", None),
        ("0x7f.0.0.1", None),
        ("127.000.0.1", None),
        ("1.2.3.256", None),
        ("foo.123", None),
        ("*.10.0.0.1", None),
        ("*.0x7f", None),
        ("[127.0.0.1]", None),
        ("[::1", None),
        ("[::1]:80", None),
        ("[fe80::1%eth0]", None),
        ("a:b:c", None),
        ("example.com:80", None),
        ("http://example.com", None),
        ("example.com/x", None),
        ("*", None),
        ("*.", None),
        ("*.*.example.com", None),
        ("a.*.example.com", None),
        ("-x.example.com", None),
        ("a" * 64 + ".example", None),
        ("bad host", None),
        ("", None),
        ("sha\u1e9e.test", None),
    ],
)
def test_configured_host(raw: str, expected: str | None) -> None:
    assert configured_host(raw) == expected


@given(st.text(max_size=24))
def test_configured_hosts_are_patterns_or_addresses_in_normal_form(raw: str) -> None:
    host = configured_host(raw)
    if host is not None:
        assert configured_host(host) == host
        assert PATTERN.fullmatch(host) or is_ip(host)
        assert host.startswith("*.") or hostname(host) == host


# --- Wildcards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com:8443", "example.COM.", True),
        ("a.example.com", "*.example.com", True),
        ("a.b.example.com", "*.example.com", True),
        ("a.example.com.", "*.Example.com", True),
        ("example.com", "*.example.com", False),
        ("www.example.com", "example.com", False),
        ("evilexample.com", "*.example.com", False),
        ("example.com.evil.net", "*.example.com", False),
        (".example.com", "*.example.com", False),
        ("a..example.com", "*.example.com", False),
        ("a.example.com", "*.", False),
        ("a.example.com", "*", False),
        ("a.example.com", "**.example.com", False),
        ("127.0.0.1:80", "127.0.0.1", True),
        ("[::1]:80", "[::1]", True),
        ("::1", "[::1]", True),
        ("[::1]", "::1", True),
        ("", "", False),
        ("bad host", "bad host", False),
    ],
)
def test_matches(host: str, pattern: str, expected: bool) -> None:
    assert matches(host, pattern) is expected


def naive_matches(host: str, pattern: str) -> bool:
    """The rule by labels: a reference that shares no code with hosts.first_match."""
    name = hostname(host)
    if name is None:
        return False
    p = pattern.strip().lower()
    if not p.startswith("*."):
        return name == hostname(p)
    suffix = hostname(p[2:])
    if suffix is None:
        return False
    labels, wanted = name.split("."), suffix.split(".")
    return len(labels) > len(wanted) and labels[-len(wanted) :] == wanted


LABELS = st.sampled_from(["a", "b", "ab", "x-y", "1", "_s", "", "A", "B"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
HOSTS = st.tuples(NAMES, st.sampled_from(["", ".", ":80", ".:443", " "])).map("".join)
PATTERNS = st.tuples(st.sampled_from(["", "*.", "*", "*.*."]), NAMES).map("".join)


@given(HOSTS, PATTERNS)
def test_matches_agrees_with_the_naive_rule(host: str, pattern: str) -> None:
    assert matches(host, pattern) is naive_matches(host, pattern)


@given(HOSTS, st.lists(PATTERNS, max_size=5))
def test_first_match_is_the_first_pattern_that_matches(host: str, patterns: list[str]) -> None:
    name = hostname(host)
    expected = next((p for p in patterns if naive_matches(host, p)), None)
    got = None if name is None else first_match(name, compile_patterns(tuple(patterns)))
    assert got == expected


def linear_first_match(name: str, patterns: Patterns) -> str | None:
    """The scan first_match was before it became dict look-ups, kept as its reference: every
    pattern in order, the first whose host is ``name`` or whose suffix ends it."""
    for text, exact, suffix in patterns.patterns:
        if name == exact or (suffix is not None and name.endswith(suffix)):
            return text
    return None


@st.composite
def host_and_patterns(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A host, and patterns of which many are the host or one of its parent domains (as exact
    hosts and as ``*.`` patterns, in any order, some twice or in another case), among others."""
    label = st.sampled_from(["a", "b", "ab", "x-y", "B", "1"])
    labels = draw(st.lists(label, min_size=1, max_size=5))

    def parent(star: str, k: int, upper: bool) -> str:
        text = star + ".".join(labels[k:])
        return text.upper() if upper else text

    related = st.builds(
        parent,
        st.sampled_from(["", "*.", "*.", " *."]),
        st.integers(0, len(labels) - 1),
        st.booleans(),
    )
    patterns = draw(st.lists(st.one_of(related, PATTERNS), max_size=10))
    return ".".join(labels), patterns


@given(st.one_of(host_and_patterns(), st.tuples(HOSTS, st.lists(PATTERNS, max_size=6))))
def test_first_match_agrees_with_the_linear_scan(case: tuple[str, list[str]]) -> None:
    host, patterns = case
    compiled = Patterns(patterns)
    assert [p.text for p in compiled.patterns] == patterns
    name = hostname(host)
    if name is not None:
        assert first_match(name, compiled) == linear_first_match(name, compiled)


def test_first_match_takes_the_first_listed_of_several_hits() -> None:
    patterns = Patterns(["*.com", "shop.example.com", "*.example.com", "*.shop.example.com"])
    assert first_match("shop.example.com", patterns) == "*.com"
    assert first_match("a.shop.example.com", patterns) == "*.com"
    later = Patterns(["*.example.com", "www.example.com", "*.www.example.com"])
    assert first_match("www.example.com", later) == "*.example.com"
    assert first_match("x.www.example.com", later) == "*.example.com"
    exact_first = Patterns(["www.example.com", "*.example.com"])
    assert first_match("www.example.com", exact_first) == "www.example.com"
    assert first_match("example.com", exact_first) is None
    assert first_match("wwwexample.com", exact_first) is None
    assert first_match("evilexample.com", Patterns(["*.example.com"])) is None
    assert first_match("a.b", Patterns([])) is None


@given(st.one_of(host_and_patterns(), st.tuples(HOSTS, st.lists(PATTERNS, max_size=6))))
def test_host_index_picks_the_most_specific(case: tuple[str, list[str]]) -> None:
    host, patterns = case
    index = HostIndex((p, p) for p in patterns)
    exact = [p for p in patterns if not p.strip().startswith("*.") and naive_matches(host, p)]
    wild = [p for p in patterns if p.strip().startswith("*.") and naive_matches(host, p)]
    # Longest suffix first; among equals (spelt alike but for case) the first listed.
    wild.sort(key=lambda p: -len(hostname(p.strip()[2:]) or ""))
    expected = exact[0] if exact else (wild[0] if wild else None)
    name = hostname(host)
    assert (None if name is None else index.get(name)) == expected


def test_host_index() -> None:
    index = HostIndex(
        [
            ("*.example.com", "any"),
            ("*.shop.example.com", "shop"),
            ("www.shop.example.com", "www"),
            ("[::1]", "loopback"),
            ("www.shop.example.com", "second"),
        ]
    )
    assert index.get("www.shop.example.com") == "www"
    assert index.get("a.shop.example.com") == "shop"
    assert index.get("a.b.shop.example.com") == "shop"
    assert index.get("shop.example.com") == "any"
    assert index.get("example.com") is None
    assert index.get("evilexample.com") is None
    assert index.get("[::1]") == "loopback"
    assert HostIndex([]).get("example.com") is None


# --- Registrable domains --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "registrable", "public"),
    [
        ("www.example.com", "example.com", False),
        ("example.com", "example.com", False),
        ("com", None, True),
        ("a.b.example.co.uk", "example.co.uk", False),
        ("co.uk", None, True),
        ("a.b.foo.github.io", "foo.github.io", False),
        ("github.io", None, True),
        # Unknown TLDs follow the default rule "*", as browsers do.
        ("www.shop.test", "shop.test", False),
        ("test", None, True),
        ("www.shop.localhost", "shop.localhost", False),
        ("localhost", None, True),
    ],
)
def test_registrable_domain(name: str, registrable: str | None, public: bool) -> None:
    assert registrable_domain(name) == registrable
    assert is_public_suffix(name) is public


def test_one_public_suffix_list() -> None:
    """Parsing the list takes a noticeable moment and memory: only hosts.py makes one."""
    makers = []
    for path in sorted(GATEWAY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PublicSuffixList":
                makers.append(path.name)
    assert makers == ["hosts.py"]


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("https://WWW.Shop.test./cart?x=1", ("https", "www.shop.test", None)),
        (" http://shop.test:8080/ ", ("http", "shop.test", 8080)),
        ("http://[::1]:81/", ("http", "[::1]", 81)),
        ("ftp://shop.test/", None),
        ("http://shop.test:99999/", None),
        ("http:///nohost", None),
        ("", None),
        (None, None),
    ],
)
def test_referer_host(referer: str | None, expected: tuple[str, str, int | None] | None) -> None:
    assert referer_host(referer) == expected


def test_the_three_readers_of_a_referer_agree_on_its_own_host() -> None:
    """Arrivals, rescue and events read the Referer the same way: the page's own host, in any
    spelling, is never another site."""
    from gateway.config import parse_config
    from gateway.events import from_domain
    from gateway.inbound import referring_cross_domain
    from gateway.rescue import sibling_origin

    config = parse_config(
        "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n  - {host: b.test, upstream: 'http://x:2'}\n",
        "f.yaml",
        {},
    )
    for referer in ("http://A.test./p", "http://a.test:8080/"):
        assert referring_cross_domain(referer, "a.test", config) is None
        assert sibling_origin(referer, "a.test", config) is None
        assert from_domain(referer, config) == "a.test"
    assert referring_cross_domain("http://B.test./p", "a.test", config) == "b.test"
    assert sibling_origin("http://B.test./p", "a.test", config) == "http://b.test"
