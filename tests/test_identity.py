"""Tests for gateway.identity: table tests for the edge cases, properties for the invariants."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from gateway.hosts import domain_to_ascii, url_domain
from gateway.hosts import matches as host_matches
from gateway.identity import (
    ANON_COOKIE,
    DEFAULT_ID_PATTERN,
    USER_COOKIE,
    IdRules,
    cookie_domain,
    decorate_url,
    identity_cookies,
    mint_id,
    read_cookie,
    same_origin_location,
    split_identity_params,
)
from gateway.links import LinkDecorator, decorate_location, protected_target
from gateway.params import AID_PARAM, UID_PARAM

RULES = IdRules()
UUID = "0b6e6f5a-1c2d-4e3f-8a9b-0c1d2e3f4a5b"

# --- IdRules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [UUID, UUID.upper(), "a", "abc-123", "a.b:c_d-e", "x" * 128, "anon:42"],
)
def test_valid_aid_accepts(value: str) -> None:
    assert RULES.valid_aid(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "x" * 129,
        "a b",
        " abc",
        "abc\n",
        "abc\r\nSet-Cookie: x=y",
        'a"b',
        "a'b",
        "a<b",
        "a>b",
        "a;b",
        "a,b",
        "a%20b",
        "a/b",
        "\x00",
        "abc\x7f",
        "ü",
        "{" + UUID + "}",
    ],
)
def test_valid_aid_rejects(value: str | None) -> None:
    assert RULES.valid_aid(value) is None


def test_valid_aid_hard_limits_apply_to_loose_patterns() -> None:
    loose = IdRules(id_pattern=re.compile(r".*", re.DOTALL))
    assert loose.valid_aid("anything-goes") == "anything-goes"
    for bad in ["a<b", 'a"b', "a\r\nb", "a b", "x" * 257, "é"]:
        assert loose.valid_aid(bad) is None


def test_default_pattern_is_anchored_by_fullmatch() -> None:
    assert DEFAULT_ID_PATTERN.fullmatch(UUID)
    assert not DEFAULT_ID_PATTERN.fullmatch("abc\n")


@pytest.mark.parametrize(
    "value", ["42", "user@example.com", "Jörg Müller", "a b", "x" * 256, "ACME|1234", "100%"]
)
def test_valid_uid_accepts(value: str) -> None:
    assert RULES.valid_uid(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "x" * 257,
        " lead",
        "trail ",
        "a\tb",
        "a\nb",
        "a\x00b",
        "a\u2028b",
        "a\u200bb",
        "a\u00a0b",
        'a"b',
        "a'b",
        "a`b",
        "a<b",
        "a>b",
        "a;b",
        "a,b",
        "a\\b",
        "\ud800",
    ],
)
def test_valid_uid_rejects(value: str | None) -> None:
    assert RULES.valid_uid(value) is None


def test_uid_max_len_is_configurable() -> None:
    assert IdRules(uid_max_len=3).valid_uid("abcd") is None
    assert IdRules(uid_max_len=3).valid_uid("abc") == "abc"


def test_mint_id_is_a_valid_uuid4() -> None:
    value = mint_id()
    assert uuid.UUID(value).version == 4
    assert RULES.valid_aid(value) == value
    assert mint_id() != value


# --- read_cookie -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([f"{ANON_COOKIE}=abc"], "abc"),
        ([f'{ANON_COOKIE}="abc"'], "abc"),
        ([f"{ANON_COOKIE}=%22abc%22"], "abc"),
        ([f"{ANON_COOKIE}=a%3Ab"], "a:b"),
        ([f"x=1; {ANON_COOKIE}=abc; y=2"], "abc"),
        ([f"x=1;{ANON_COOKIE}=abc"], "abc"),
        ([f"  {ANON_COOKIE} = abc  ; y=2"], "abc"),
        ([f"{ANON_COOKIE}=first; {ANON_COOKIE}=second"], "first"),
        (["x=1", f"{ANON_COOKIE}=later-header"], "later-header"),
        ([f"{ANON_COOKIE}=one", f"{ANON_COOKIE}=two"], "one"),
        ([f"bad cookie; =; ;; {ANON_COOKIE}=abc"], "abc"),
        ([f"{ANON_COOKIE}"], None),
        ([f"{ANON_COOKIE}x=abc", f"x{ANON_COOKIE}=abc"], None),
        ([f"{ANON_COOKIE}="], ""),
        ([f'{ANON_COOKIE}="a\\"b"'], 'a"b'),
        ([f'{ANON_COOKIE}="a\\qb"'], "a\\qb"),
        ([f"{ANON_COOKIE}=a=b"], "a=b"),
        ([f"{ANON_COOKIE}=%E0%A4%A"], "\ufffd%A"),
        ([], None),
    ],
)
def test_read_cookie(headers: list[str], expected: str | None) -> None:
    assert read_cookie(headers, ANON_COOKIE) == expected


def test_read_cookie_name_is_case_sensitive() -> None:
    assert read_cookie([f"{ANON_COOKIE.upper()}=abc"], ANON_COOKIE) is None


@given(st.lists(st.text()), st.text())
def test_read_cookie_never_raises(headers: list[str], name: str) -> None:
    result = read_cookie(headers, name)
    assert result is None or isinstance(result, str)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_cookie_written_is_read_back(value: str) -> None:
    """What identity_cookies writes, read_cookie returns unchanged (JSON-looking values aside)."""
    assume(not (len(value) >= 2 and value[0] == value[-1] == '"'))
    header = identity_cookies(value, None, domain=None, max_age=1, secure=False, now=0)[0]
    pair = header.split(";", 1)[0]
    assert read_cookie([f"other=1; {pair}"], ANON_COOKIE) == value


# --- identity_cookies --------------------------------------------------------------------------


def test_identity_cookies_attributes() -> None:
    cookies = identity_cookies(
        UUID, "42", domain="shop.test", max_age=31536000, secure=True, now=784111777
    )
    expires = "Expires=Mon, 06 Nov 1995 08:49:37 GMT"
    attrs = f"; Domain=shop.test; Path=/; Max-Age=31536000; {expires}; SameSite=Lax; Secure"
    assert cookies == [f"{ANON_COOKIE}={UUID}{attrs}", f"{USER_COOKIE}=42{attrs}"]
    assert all("HttpOnly" not in c for c in cookies)


def test_identity_cookies_host_only_and_insecure() -> None:
    (cookie,) = identity_cookies("abc", None, domain=None, max_age=0, secure=False, now=0)
    assert cookie == (
        f"{ANON_COOKIE}=abc; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax"
    )


def test_identity_cookies_only_user() -> None:
    (cookie,) = identity_cookies(None, "u", domain=None, max_age=5, secure=False, now=0)
    assert cookie.startswith(f"{USER_COOKIE}=u;")
    assert identity_cookies(None, None, domain=None, max_age=5, secure=False, now=0) == []


@given(st.text(), st.text())
def test_identity_cookie_values_cannot_inject(aid: str, uid: str) -> None:
    for cookie in identity_cookies(aid, uid, domain="a.test", max_age=1, secure=True, now=0):
        value = cookie.split(";", 1)[0].split("=", 1)[1]
        # Only RFC 6265 cookie-octets, and "%" only as an escape we wrote.
        assert re.fullmatch(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*", value)
        assert cookie.count(";") == 6


@pytest.mark.parametrize("domain", ["a.test\r\nX: y", "a.test; Secure", "", ".a.test", "a b"])
def test_identity_cookies_refuses_bad_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="cookie domain"):
        identity_cookies("a", None, domain=domain, max_age=1, secure=True, now=0)


def test_identity_cookies_refuses_negative_max_age() -> None:
    with pytest.raises(ValueError, match="max_age"):
        identity_cookies("a", None, domain=None, max_age=-1, secure=True, now=0)


# --- cookie_domain -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", "example.com"),
        ("WWW.Example.COM:8443", "example.com"),
        ("www.example.com.", "example.com"),
        ("example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("co.uk", None),
        ("foo.github.io", "foo.github.io"),
        ("a.b.foo.github.io", "foo.github.io"),
        ("github.io", None),
        # Unknown TLDs follow the default rule "*", as browsers do.
        ("www.shop.test", "shop.test"),
        ("shop.test", "shop.test"),
        ("www.shop.example", "shop.example"),
        ("www.shop.localhost", "shop.localhost"),
        ("www.shop.localhost:8080", "shop.localhost"),
        ("a.localhost", "a.localhost"),
        # Host-only: single labels and IP addresses.
        ("localhost", None),
        ("localhost:8080", None),
        ("intranet", None),
        ("127.0.0.1", None),
        ("127.0.0.1:8080", None),
        ("10.1", None),
        ("0x7f.1", None),
        ("[::1]", None),
        ("[::1]:8080", None),
        ("::1", None),
        ("[2001:db8::1]", None),
        ("", None),
        ("bad host.test", None),
        ("evil.test\r\nX: y", None),
    ],
)
def test_cookie_domain_automatic(host: str, expected: str | None) -> None:
    assert cookie_domain(host, None) == expected


@pytest.mark.parametrize(
    ("host", "configured", "expected"),
    [
        ("www.example.com", "example.com", "example.com"),
        ("www.example.com", ".Example.com", "example.com"),
        ("example.com", "example.com", "example.com"),
        ("a.b.example.com", "b.example.com", "b.example.com"),
        # Not a suffix of the host: the browser would drop the cookie, so fall back.
        ("www.example.com", "other.com", "example.com"),
        ("www.example.com", "xample.com", "example.com"),
        ("www.example.com", "a.www.example.com", "example.com"),
        # Public suffixes are refused by browsers.
        ("www.example.com", "com", "example.com"),
        ("foo.github.io", "github.io", "foo.github.io"),
        ("www.shop.test", "test", "shop.test"),
        # IPs and single labels stay host-only whatever is configured.
        ("127.0.0.1", "0.0.1", None),
        ("localhost", "localhost", None),
    ],
)
def test_cookie_domain_configured(host: str, configured: str, expected: str | None) -> None:
    assert cookie_domain(host, configured) == expected


# --- host_matches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com", "example.COM", True),
        ("example.com:8443", "example.com", True),
        ("example.com.", "example.com", True),
        ("example.com", "example.com.", True),
        ("www.example.com", "example.com", False),
        ("a.example.com", "*.example.com", True),
        ("a.b.example.com", "*.example.com", True),
        ("A.Example.Com:443", "*.example.com", True),
        ("a.example.com.", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("evilexample.com", "*.example.com", False),
        ("evilexample.com", "example.com", False),
        ("example.com.evil.net", "*.example.com", False),
        ("example.com.evil.net", "example.com", False),
        (".example.com", "*.example.com", False),
        ("a..example.com", "*.example.com", False),
        ("", "example.com", False),
        ("", "", False),
        ("a.example.com", "*.", False),
        ("[::1]:80", "[::1]", True),
    ],
)
def test_host_matches(host: str, pattern: str, expected: bool) -> None:
    assert host_matches(host, pattern) is expected


# --- split_identity_params ---------------------------------------------------------------------

NAMES = {AID_PARAM, UID_PARAM}


@pytest.mark.parametrize(
    ("query", "cleaned", "found"),
    [
        ("", "", {}),
        ("a=1", "a=1", {}),
        (f"{AID_PARAM}=abc", "", {AID_PARAM: "abc"}),
        (f"a=1&{AID_PARAM}=abc&b=%20x+y", "a=1&b=%20x+y", {AID_PARAM: "abc"}),
        (f"{AID_PARAM}=one&{AID_PARAM}=two&x", "x", {AID_PARAM: "one"}),
        (f"ajs%5Faid=enc&{UID_PARAM}=J%C3%B6rg+M", "", {AID_PARAM: "enc", UID_PARAM: "Jörg M"}),
        (f"a=1&&{AID_PARAM}=abc&&b=2", "a=1&&&b=2", {AID_PARAM: "abc"}),
        (f"{AID_PARAM}", "", {AID_PARAM: ""}),
        (f"{AID_PARAM}=a=b", "", {AID_PARAM: "a=b"}),
        (f"x=1;{AID_PARAM}=abc", f"x=1;{AID_PARAM}=abc", {}),
        (f"{AID_PARAM.upper()}=abc", f"{AID_PARAM.upper()}=abc", {}),
        (f"{AID_PARAM}x=1&x{AID_PARAM}=2", f"{AID_PARAM}x=1&x{AID_PARAM}=2", {}),
        ("a=%ZZ&b=%E2%82", "a=%ZZ&b=%E2%82", {}),
    ],
)
def test_split_identity_params(query: str, cleaned: str, found: dict[str, str]) -> None:
    assert split_identity_params(query, NAMES) == (cleaned, found)


_segment = st.one_of(
    st.text(alphabet="ab=%+&;2F5_ ", max_size=8).map(lambda s: s.replace("&", "")),
    st.sampled_from([f"{AID_PARAM}=x", f"{UID_PARAM}=y", "ajs%5Faid=z", "", "="]),
)


@given(st.lists(_segment, max_size=8))
def test_split_keeps_other_params_in_order_byte_for_byte(segments: list[str]) -> None:
    query = "&".join(segments)
    cleaned, found = split_identity_params(query, NAMES)
    removed = [s for s in segments if s.partition("=")[0] in ("ajs_aid", "ajs_uid", "ajs%5Faid")]
    assert cleaned == "&".join(s for s in segments if s not in removed)
    assert set(found) <= NAMES
    assert bool(found) == bool(removed)


# --- same_origin_location ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/", "", "/"),
        ("/a/b", "x=1", "/a/b?x=1"),
        ("/a%20b/%2F", "q=%22", "/a%20b/%2F?q=%22"),
        ("//evil.example", "", "/evil.example"),
        ("//evil.example/x", "a=1", "/evil.example/x?a=1"),
        ("///evil.example", "", "/evil.example"),
        ("/\\evil", "", "/evil"),
        ("\\\\evil", "", "/evil"),
        ("/\\/\\evil", "", "/evil"),
        ("/%2F%2Fevil", "", "/%2F%2Fevil"),
        ("/%5Cevil", "", "/%5Cevil"),
        ("/\t/evil", "", "/evil"),
        ("/\n/evil", "", "/evil"),
        ("/\r\n/evil", "", "/evil"),
        (" //evil", "", "/evil"),
        ("\x00/\x01/evil", "", "/%01/evil"),
        ("/a\tb", "", "/ab"),
        ("http://evil.example/", "", "/http://evil.example/"),
        ("evil.example", "", "/evil.example"),
        ("", "", "/"),
        ("/a b", "c=d e", "/a%20b?c=d%20e"),
        ("/a#b", "c#d", "/a%23b?c%23d"),
        ("/ü", "", "/%C3%BC"),
        ("/a\x7f", "", "/a%7F"),
        ("/a/", "x\r\nSet-Cookie:1", "/a/?xSet-Cookie:1"),
        ("/a/b\\c", "", "/a/b\\c"),
    ],
)
def test_same_origin_location(path: str, query: str, expected: str) -> None:
    assert same_origin_location(path, query) == expected


def _whatwg_has_authority(location: str) -> bool:
    """A reference has an authority for a browser if, after the browser's clean-up, it starts
    with a scheme or with two slashes (``\\`` being a slash in http(s) URLs)."""
    cleaned = re.sub(r"[\t\n\r]", "", location.strip("".join(map(chr, range(0x21)))))
    cleaned = cleaned.replace("\\", "/")
    return cleaned.startswith("//") or bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", cleaned))


_nasty = st.text(alphabet="/\\%2F5Cevil.:@ \t\r\n\x00?#hps", max_size=20)


@settings(max_examples=500)
@given(st.one_of(_nasty, st.text(max_size=20)), st.one_of(_nasty, st.text(max_size=10)))
def test_same_origin_location_never_leaves_the_origin(path: str, query: str) -> None:
    location = same_origin_location(path, query)
    parts = urlsplit(location)
    assert parts.scheme == "" and parts.netloc == ""
    assert not _whatwg_has_authority(location)
    assert location.startswith("/")
    assert re.fullmatch(r"[\x21-\x7e]+", location)
    if "?" not in path:
        assert ("?" in location) == bool(re.sub(r"[\t\r\n]", "", query))


# --- decorate_url ------------------------------------------------------------------------------

P = [(AID_PARAM, "abc"), (UID_PARAM, "Jörg M")]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://x.test", "https://x.test?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        ("https://x.test/p", "https://x.test/p?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        ("https://x.test/p?", "https://x.test/p?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        ("https://x.test/p?a=%7e+b", "https://x.test/p?a=%7e+b&ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        ("https://x.test/p?a=1&", "https://x.test/p?a=1&ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        (
            "https://x.test/p?ajs_aid=old&a=1&ajs_aid=old2&ajs%5Fuid=u#frag?x&ajs_aid=1",
            "https://x.test/p?a=1&ajs_aid=abc&ajs_uid=J%C3%B6rg%20M#frag?x&ajs_aid=1",
        ),
        ("https://x.test/p#", "https://x.test/p?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M#"),
        ("cart", "cart?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
        ("  https://x.test/p \n", "  https://x.test/p?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M \n"),
        ("HTTPS://X.test/Ä%zz", "HTTPS://X.test/Ä%zz?ajs_aid=abc&ajs_uid=J%C3%B6rg%20M"),
    ],
)
def test_decorate_url(url: str, expected: str) -> None:
    assert decorate_url(url, P) == expected


def test_decorate_url_encodes_what_it_adds() -> None:
    assert decorate_url("/", [("a b", "&=#?")]) == "/?a%20b=%26%3D%23%3F"


@given(
    st.text(alphabet="htps:/x.?#&=a%+ \t", max_size=30),
    st.lists(st.tuples(st.sampled_from([AID_PARAM, UID_PARAM, "x"]), st.text(max_size=5))),
)
def test_decorate_url_is_idempotent(url: str, params: list[tuple[str, str]]) -> None:
    params = list(dict(params).items())  # one value per name, as the gateway passes them
    once = decorate_url(url, params)
    assert decorate_url(once, params) == once


# --- LinkDecorator ------------------------------------------------------------------------------

TARGETS = ["checkout.test", "*.pay.test"]
LP = [(AID_PARAM, "abc")]


def _decorator() -> LinkDecorator:
    return LinkDecorator("www.shop.test", "https://www.shop.test/dir/page?q=1", TARGETS, LP)


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("https://checkout.test/cart", None, "https://checkout.test/cart?ajs_aid=abc"),
        ("HTTP://CHECKOUT.TEST", None, "HTTP://CHECKOUT.TEST?ajs_aid=abc"),
        ("https://checkout.test.:443/", None, "https://checkout.test.:443/?ajs_aid=abc"),
        ("https://a.b.pay.test/x#f", None, "https://a.b.pay.test/x?ajs_aid=abc#f"),
        ("//checkout.test/x", None, "//checkout.test/x?ajs_aid=abc"),
        ("\\\\checkout.test/x", None, "\\\\checkout.test/x?ajs_aid=abc"),
        ("/\\checkout.test", None, "/\\checkout.test?ajs_aid=abc"),
        ("///checkout.test", None, "///checkout.test?ajs_aid=abc"),
        ("https:////checkout.test", None, "https:////checkout.test?ajs_aid=abc"),
        ("h\tttps://check\nout.test/", None, "h\tttps://check\nout.test/?ajs_aid=abc"),
        (" \x01https://checkout.test/ ", None, " \x01https://checkout.test/?ajs_aid=abc "),
        ("http:checkout.test/x", None, "http:checkout.test/x?ajs_aid=abc"),
        ("https://user:pw@checkout.test/", None, "https://user:pw@checkout.test/?ajs_aid=abc"),
        ("https://check%6Fut.test/", None, "https://check%6Fut.test/?ajs_aid=abc"),
        ("https://checkout.test/?ajs_aid=old", None, "https://checkout.test/?ajs_aid=abc"),
        # Relative URLs resolved against <base href>.
        ("cart", "https://checkout.test/", "cart?ajs_aid=abc"),
        ("/cart", "//checkout.test/", "/cart?ajs_aid=abc"),
        ("?x=1", "https://x.pay.test/", "?x=1&ajs_aid=abc"),
        ("https:cart", "https://checkout.test/", "https:cart?ajs_aid=abc"),
        # Not decorated.
        ("https://www.shop.test/x", None, None),
        ("https://WWW.shop.test:8443/x", None, None),
        ("https://shop.test/x", None, None),
        ("https:checkout.test", None, None),
        ("cart", None, None),
        ("cart", "/other/", None),
        ("cart", "javascript:x", None),
        ("cart", "http://[", None),
        ("https://pay.test/", None, None),
        ("https://evilcheckout.test/", None, None),
        ("https://checkout.test.evil.net/", None, None),
        ("https://evil.net/?checkout.test", None, None),
        ("https://evil.net#@checkout.test", None, None),
        ("https://checkout.test@evil.net/", None, None),
        ("https://evil.net\\@checkout.test/", None, None),
        ("javascript:location='https://checkout.test'", None, None),
        ("mailto:a@checkout.test", None, None),
        ("data:text/html,https://checkout.test", None, None),
        ("ftp://checkout.test/", None, None),
        ("", None, None),
        ("   ", "https://checkout.test/", None),
        ("http://[", None, None),
        ("http://[::1", None, None),
        ("http://checkout.test:99999/", None, None),
        ("http://checkout.test:8x/", None, None),
        ("http://check out.test/", None, None),
        ("http://checkout.test%00/", None, None),
        ("http://%FF.test/", None, None),
        ("http://", None, None),
        ("http:///", None, None),
    ],
)
def test_link_decorator(url: str, base: str | None, expected: str | None) -> None:
    assert _decorator().decorate(url, base) == expected


def test_link_decorator_idna_host() -> None:
    d = LinkDecorator("www.shop.test", "https://www.shop.test/", ["xn--bcher-kva.test"], LP)
    assert d.decorate("https://Bücher.test/", None) == "https://Bücher.test/?ajs_aid=abc"
    assert d.decorate("https://xn--bcher-kva.test/", None) is not None
    assert d.decorate("https://bucher.test/", None) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://checkout\u3002test/",  # ideographic full stop is a dot to IDNA and browsers
        "https://\uff43heckout.test/",  # fullwidth letters map to ASCII
        "https://CHECKOUT.TEST/",
    ],
)
def test_link_decorator_hosts_browsers_normalize(url: str) -> None:
    assert _decorator().decorate(url, None) == url + "?ajs_aid=abc"


def test_f6_idna2003_lookalikes_are_not_the_target() -> None:
    """F6 of the security review: IDNA 2003 (Python's "idna" codec) reads ``ß`` as ``ss`` and
    ``ς`` as ``σ``; browsers keep them (UTS #46 non-transitional), so these URLs lead to other
    registrable domains (``pay.xn--grobank-2va.test``, ``xn--3xa.test``) and must get no
    identity: no link decoration, no form fields, no decorated redirect, no freshness hop."""
    targets = ["pay.grossbank.test", "xn--4xa.test"]
    d = LinkDecorator("www.shop.test", "https://www.shop.test/", targets, LP)
    for url in (
        "https://pay.großbank.test/checkout",
        "https://pay.gro%C3%9Fbank.test/checkout",
        "https://pay.gro%c3%9fbank.test./",
        "//PAY.GROßBANK.TEST/",
        "https://ς.test/",
        "https://%CF%82.test/",
    ):
        assert d.decorate(url, None) is None, url
        assert d.decorate(url, "https://www.shop.test/") is None, url
        assert d.form_fields(url, None) is None, url
        assert protected_target(url, "www.shop.test", targets) is None, url
        location = decorate_location(
            url, "https://www.shop.test/a", own_host="www.shop.test", targets=targets, params=LP
        )
        assert location is None, url
    # The real targets, however spelled, still are.
    for url, pattern in (
        ("https://pay.grossbank.test/checkout", "pay.grossbank.test"),
        ("https://pay.gro%73sbank.test/checkout", "pay.grossbank.test"),
        ("https://Σ.test/", "xn--4xa.test"),
        ("https://%CF%83.test/", "xn--4xa.test"),
    ):
        assert d.decorate(url, None) == url + "?ajs_aid=abc", url
        # The freshness endpoint takes only printable ASCII (what bootstrap sends: a.href).
        expected = pattern if url.isascii() else None
        assert protected_target(url, "www.shop.test", targets) == expected, url


def test_idn_target_matches_every_spelling_browsers_read_as_it() -> None:
    target = domain_to_ascii("pay.großbank.test")
    assert target == "pay.xn--grobank-2va.test"
    d = LinkDecorator("www.shop.test", "https://www.shop.test/", [target], LP)
    for url in (
        "https://pay.großbank.test/",
        "https://PAY.GROßBANK.TEST./",
        "https://pay.gro%C3%9Fbank.test/",
        "https://pay.xn--grobank-2va.test/",
        "https://pay.XN--GROBANK-2VA.test/",
        "https://pay.großbank\u3002test/",
        "https://pay.gro\u00dfbank\uff0etest/",
    ):
        assert d.decorate(url, None) == url + "?ajs_aid=abc", url
    for url in ("https://pay.grossbank.test/", "https://pay.groẞbank.test/"):
        assert d.decorate(url, None) is None, url


@pytest.mark.parametrize(
    "host",
    [
        "xn--zz.test",  # not Punycode
        "xn--a.test",  # Punycode for a code point no host may have
        "xn--.test",
        "a.xn--ls8h.test",  # emoji: refused (IDNA 2008), see domain_to_ascii
        "a\u200db.test",  # ZWJ outside the context that allows it
        "pay.groẞbank.test",  # ss to some browsers, ß to others
        "pay.gro%C3.test",  # not UTF-8
        "a%2Fb.test",
        "a%25b.test",
        "\u00ad",  # only an ignorable code point: empty
        "ü" * 1100,
    ],
)
def test_hosts_browsers_refuse_or_disagree_on_are_never_targets(host: str) -> None:
    assert url_domain(host) is None
    d = LinkDecorator("www.shop.test", "https://www.shop.test/", ["*.test", "test"], LP)
    assert d.decorate(f"https://{host}/", None) is None
    assert d.decorate(f"https://{host}/", "https://www.shop.test/") is None


@settings(max_examples=500)
@given(st.text(max_size=30), st.sampled_from(["", "xn--", "a.xn--", "%C3%9F", "."]))
def test_url_domain_never_raises_and_gives_ascii(text: str, prefix: str) -> None:
    host = url_domain(prefix + text)
    assert host is None or (host.isascii() and host == host.lower() and host)


def test_ascii_hosts_skip_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link decorator runs for every link of every page: plain ASCII hosts (the norm) must
    not pay for UTS #46 processing."""

    def boom(*args: object, **kwargs: object) -> str:
        raise AssertionError("idna called for an ASCII host")

    monkeypatch.setattr("gateway.hosts.idna.uts46_remap", boom)
    assert domain_to_ascii("WWW.Shop.TEST.") == "www.shop.test."
    assert url_domain("check%6Fut.test") == "checkout.test"
    d = LinkDecorator("www.shop.test", "https://www.shop.test/", TARGETS, LP)
    assert d.decorate("https://Checkout.test/", None) is not None
    assert d.decorate("https://checkout.test/", "https://www.shop.test/") is not None
    assert d.decorate("https://elsewhere.test/", None) is None


def test_link_decorator_counts_hits_by_pattern() -> None:
    d = _decorator()
    d.decorate("https://checkout.test/", None)
    d.decorate("https://a.pay.test/", None)
    d.decorate("https://b.pay.test/", None)
    d.decorate("https://www.shop.test/", None)
    d.form_fields("https://a.pay.test/", None)
    assert d.targets_hit == {"checkout.test": 1, "*.pay.test": 3}


def test_link_decorator_without_usable_page_url() -> None:
    d = LinkDecorator("www.shop.test", "not a url", TARGETS, LP)
    assert d.decorate("cart", None) is None
    assert d.decorate("https://checkout.test/", None) == "https://checkout.test/?ajs_aid=abc"


@pytest.mark.parametrize(
    ("action", "base", "expected"),
    [
        ("https://checkout.test/search", None, LP),
        ("search", "https://checkout.test/", LP),
        ("", "https://checkout.test/", None),
        ("  ", None, None),
        ("/search", None, None),
        ("https://evil.net/", None, None),
        ("javascript:void(0)", None, None),
    ],
)
def test_form_fields(action: str, base: str | None, expected: list[tuple[str, str]] | None) -> None:
    result = _decorator().form_fields(action, base)
    assert (None if result is None else list(result)) == expected


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=20)))
def test_link_decorator_never_raises(url: str, base: str | None) -> None:
    d = _decorator()
    result = d.decorate(url, base)
    assert result is None or f"{AID_PARAM}=abc" in result
    d.form_fields(url, base)


# --- decorate_location -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://checkout.test/pay?x=1", "https://checkout.test/pay?x=1&ajs_aid=abc"),
        ("//a.pay.test/", "//a.pay.test/?ajs_aid=abc"),
        ("/local", None),
        ("next", None),
        ("https://elsewhere.test/", None),
    ],
)
def test_decorate_location(location: str, expected: str | None) -> None:
    result = decorate_location(
        location,
        "https://www.shop.test/a/b",
        own_host="www.shop.test",
        targets=TARGETS,
        params=LP,
    )
    assert result == expected


def test_decorate_location_relative_to_target_request() -> None:
    # Behind the gateway for a target host, relative redirects stay on the own host.
    result = decorate_location(
        "/x", "https://checkout.test/", own_host="checkout.test", targets=TARGETS, params=LP
    )
    assert result is None


# --- Differential test against a real WHATWG URL parser (node's) --------------------------------

NODE = shutil.which("node") or "/usr/bin/node"
_PIECES = [
    "http:", "https:", "HTTP:", "ftp:", "javascript:", "/", "//", "\\", "\t", "\n", " ", "\x01",
    "checkout.test", "a.pay.test", "pay.test", "www.shop.test", "evil", ".", "test", "@", ":",
    "443", "99999", "%2e", "%63", "?", "#", "[", "]", "::1", "Ä", "\u3002", "-", "%", "0x7f",
]  # fmt: skip
_BASES = ["https://www.shop.test/d/p", "http://www.shop.test/", "https://checkout.test/x/"]


@pytest.mark.skipif(not Path(NODE).exists(), reason="node is not installed")
def test_target_decisions_agree_with_whatwg_url_parser() -> None:
    """For thousands of hostile URL shapes, we and a browser-grade parser agree on whether the
    URL goes to a target host. (Hosts themselves may differ only where no target can match:
    numeric IPv4 forms, which browsers canonicalize.)
    Empty URLs are the one deliberate difference: they point at the page itself, never decorated.
    """
    rnd = random.Random(20240601)
    cases = [
        ["".join(rnd.choice(_PIECES) for _ in range(rnd.randint(0, 7))), rnd.choice(_BASES)]
        for _ in range(4000)
    ]
    proc = subprocess.run(
        [NODE, str(Path(__file__).parent / "js" / "whatwg_hosts.js")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    oracle = json.loads(proc.stdout)
    disagreements = []
    for (url, base), expected in zip(cases, oracle, strict=True):
        own = LinkDecorator("www.shop.test", base, TARGETS, LP)
        decorated = own.decorate(url, None) is not None
        goes_to_target = (
            expected is not None
            and expected[1] != "www.shop.test"
            and any(host_matches(expected[1], t) for t in TARGETS)
        )
        if decorated != goes_to_target and url.strip("".join(map(chr, range(0x21)))):
            disagreements.append((url, base, expected))
    assert disagreements == []


@pytest.mark.skipif(not Path(NODE).exists(), reason="node is not installed")
def test_redirect_locations_stay_on_origin_for_whatwg_url_parser() -> None:
    rnd = random.Random(7)
    pieces = ["/", "//", "\\", "%2F", "%5C", "\t", "\n", " ", "\x00", "evil.example", "@", ":", "."]
    raw = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6))) for _ in range(3000)]
    base = "https://www.shop.test/some/page"
    cases = [[same_origin_location(path, "a=1"), base] for path in raw]
    proc = subprocess.run(
        [NODE, str(Path(__file__).parent / "js" / "whatwg_hosts.js")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert {tuple(r) for r in json.loads(proc.stdout)} == {("https", "www.shop.test")}


_LABEL = st.text(alphabet="abcXYZ019-", min_size=1, max_size=6)


@st.composite
def _simple_links(draw: st.DrawFn) -> str:
    """Links of the shapes the quick path reads itself: schemes, userinfo, ports, dots."""
    scheme = draw(st.sampled_from(["http:", "https:", "HTTPS:", "", "ftp:", "javascript:"]))
    slashes = draw(st.sampled_from(["//", "/", "", "///"]))
    user = draw(st.sampled_from(["", "u@", "u:p@", "@"]))
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
    host = ".".join(labels) + draw(st.sampled_from(["", ".", ".checkout.test", ".test"]))
    port = draw(st.sampled_from(["", ":", ":80", ":65535", ":65536", ":99999", ":8x"]))
    rest = draw(st.sampled_from(["", "/", "/p?q=1", "?x", "#f", "/a b"]))
    lead = draw(st.sampled_from(["", " ", "\t"]))
    return f"{lead}{scheme}{slashes}{user}{host}{port}{rest}"


@settings(max_examples=600, deadline=None)
@given(_simple_links())
def test_quick_host_path_agrees_with_the_full_parse(url: str) -> None:
    """LinkDecorator reads simple links without the full URL parser; with a <base> equal to
    the page it always takes the full parse. Both must decide the same."""
    page = "https://www.shop.test/dir/page"
    targets = ["checkout.test", "*.checkout.test", "x.test"]
    quick = LinkDecorator("www.shop.test", page, targets, [("ajs_aid", "id")])
    full = LinkDecorator("www.shop.test", page, targets, [("ajs_aid", "id")])
    assert quick.decorate(url, None) == full.decorate(url, page)


# --- Internationalized hosts against node's WHATWG URL parser -----------------------------------

# Host texts as they may be written in a link, by the case each one probes.
IDN_HOSTS = [
    # ß: kept by non-transitional UTS #46 (IDNA 2003 maps it to ss, another domain)
    "pay.großbank.test", "PAY.GROßBANK.TEST", "pay.gro%C3%9Fbank.test", "pay.gro%c3%9fbank.test",
    "pay.grossbank.test", "pay.xn--grobank-2va.test", "PAY.XN--GROBANK-2VA.TEST", "ß",
    "straße.test", "pay.gro%25C3%259Fbank.test", "pay.groẞbank.test", "pay.gro%E1%BA%9Ebank.test",
    # final sigma ς and σ, Σ
    "ς.test", "σ.test", "Σ.test", "λόγος.test", "ΛΌΓΟΣ.test", "%CF%82.test", "xn--3xa.test",
    "xn--4xa.test",
    # ZWJ and ZWNJ: only where CONTEXTJ allows them (after a virama, Persian joining)
    "a\u200db.test", "a\u200cb.test", "\u200d.test", "ab\u200c.test", "a%E2%80%8Db.test",
    "a%E2%80%8Cb.test", "\u0915\u094d\u200d\u0937.test", "\u0915\u094d\u200c\u0937.test",
    "\u0646\u0627\u0645\u0647\u200c\u0627\u06cc.test", "%E0%A4%95%E0%A5%8D%E2%80%8D%E0%A4%B7.test",
    # full-width and ideographic full stops, full-width letters
    "checkout\uff0etest", "checkout\u3002test", "checkout\uff61test", "checkout%EF%BC%8Etest",
    "checkout%E3%80%82test", "pay.großbank\u3002test",
    "ｃｈｅｃｋｏｕｔ.ｔｅｓｔ", "ＣＨＥＣＫＯＵＴ．ＴＥＳＴ",
    # mixed case
    "CheckOut.TEST", "BÜCHER.test", "BüCHer.Test", "\u212a.test", "\u0130.test",
    # trailing dots
    "checkout.test.", "pay.großbank.test.", "checkout.test\u3002", "checkout.test\uff0e",
    "checkout.test..", "pay.großbank.test..",
    # percent-encoded
    "check%6Fut.test", "%63heckout.test", "b%C3%BCcher.test", "B%C3%9CCHER.test", "a%2Eb.test",
    "%FF.test", "%C3.test", "a%2Fb.test", "a%25b.test", "che%C2%ADckout.test",
    "xn--bcher-kva%2Etest",
    # Punycode given
    "xn--bcher-kva.test", "XN--BCHER-KVA.TEST", "xn--zz.test", "xn--.test", "xn--a.test",
    "xn--ls8h.test",
    # ignorable and compatibility forms, IDNA 2008 vs UTS #46
    "che\u00adckout.test", "Ⓒheckout.test", "a\u2488.test", "x\u0338.test", "ab--c.ß.test",
    "💩.test", "-ß.test", "my_hößt.test",
]  # fmt: skip
# Hosts node's parser reads but the gateway refuses (no identity goes there), and why. Each is
# also refused as a configured host, so no target is lost; see identity.domain_to_ascii.
IDN_REFUSED = {
    "pay.groẞbank.test": "ẞ is ss to UTS #46 before 15.1 (node 20), ß since (current Chrome)",
    "pay.gro%E1%BA%9Ebank.test": "the same ẞ, percent-encoded",
    "xn--ls8h.test": "IDNA 2008 disallows emoji",
    "💩.test": "IDNA 2008 disallows emoji",
    "-ß.test": "IDNA 2008: no hyphen at the start of a label",
    "my_hößt.test": "IDNA 2008: no _ in an internationalized label",
}


def _node_hostnames(urls: list[str]) -> list[str | None]:
    proc = subprocess.run(
        [NODE, str(Path(__file__).parent / "js" / "whatwg_hosts.js")],
        input=json.dumps([[url, "https://www.shop.test/"] for url in urls]),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return [None if r is None else r[1] for r in json.loads(proc.stdout)]


@pytest.mark.skipif(not Path(NODE).exists(), reason="node is not installed")
def test_idn_hosts_agree_with_whatwg_url_parser() -> None:
    """Every reader of a host (links, redirects, the freshness endpoint, the config) makes of
    each host what node's ``new URL(u).hostname`` does, or refuses it where node fails (or in
    the few documented cases of IDN_REFUSED). Each host is also tried fully percent-encoded,
    the only form a freshness ``to`` can have."""
    spellings = IDN_HOSTS + [quote(h, safe="%.-") for h in IDN_HOSTS if not h.isascii()]
    urls = [f"https://{h}/x" for h in spellings]
    expected_hosts = _node_hostnames(urls)
    # Every host node found is a target: each URL must hit exactly its own.
    targets = sorted({h.rstrip(".") for h in expected_hosts if h and h.strip(".")})
    own = "www.shop.test"
    decorator = LinkDecorator(own, f"https://{own}/", targets, lambda p, h: [(AID_PARAM, p)])
    wrong = []
    for spelling, url, expected in zip(spellings, urls, expected_hosts, strict=True):
        refused = spelling in IDN_REFUSED or unquote(spelling) in IDN_REFUSED
        if refused:
            assert expected is not None, f"{spelling}: node refuses it now, update IDN_REFUSED"
        want = None if refused else expected
        pattern = None if want is None else want.rstrip(".")
        hit = decorator.decorate(url, None)
        got = (
            url_domain(spelling),
            None if hit is None else hit.rpartition("=")[2],
            protected_target(url, own, targets) if url.isascii() else pattern,
        )
        if got != (want, pattern, pattern):
            wrong.append((spelling, expected, got))
    assert wrong == []


@pytest.mark.skipif(not Path(NODE).exists(), reason="node is not installed")
def test_configured_idn_hosts_agree_with_whatwg_url_parser() -> None:
    """A host written in the config is the host browsers send for it (or a config error)."""
    hosts = [h for h in IDN_HOSTS if "%" not in h]  # a config host is not a URL: % is an error
    expected_hosts = _node_hostnames([f"https://{h}/" for h in hosts])
    for host, expected in zip(hosts, expected_hosts, strict=True):
        text = "sites: [{host: www.shop.test, upstream: 'http://127.0.0.1:1'}]\n"
        text += f"cross_domains: [{json.dumps(host)}]\n"
        if expected is None or host in IDN_REFUSED:
            with pytest.raises(ConfigError):
                parse_config(text, "idn.yaml", {})
        else:
            config = parse_config(text, "idn.yaml", {})
            assert config.cross_domains[0].host == expected.rstrip("."), host
