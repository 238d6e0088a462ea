"""Unit and property tests for the streaming HTML rewriter (gateway/html/)."""

from __future__ import annotations

import ast
import codecs
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.html import (
    GAVE_UP_AMBIGUITY,
    GAVE_UP_CHARSET,
    GAVE_UP_PLAINTEXT,
    GAVE_UP_REASONS,
    GAVE_UP_TAG_TOO_LONG,
    HtmlRewriter,
    LinkPolicy,
)
from gateway.html._tokens import decode_value, split_value
from gateway.html.charset import prescan

# Every test here runs with each scanner, compiled and pure Python.
pytestmark = pytest.mark.usefixtures("scanner_implementation")

INJECT = b"<script>/*BOOT*/</script>"


class AppendPolicy:
    """Appends ajs_aid=X to absolute http(s) links; records what it was asked."""

    def __init__(self, fields: Sequence[tuple[str, str]] | None = (("ajs_aid", "X"),)) -> None:
        self.fields = fields
        self.seen: list[tuple[str, str | None]] = []
        self.forms: list[tuple[str, str | None]] = []

    def decorate(self, url: str, base: str | None) -> str | None:
        self.seen.append((url, base))
        if not url.startswith(("http://", "https://")):
            return None
        head, sep, fragment = url.partition("#")
        joiner = "&" if "?" in head else "?"
        return head + joiner + "ajs_aid=X" + sep + fragment

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        self.forms.append((action, base))
        return self.fields


class EverythingPolicy:
    """Decorates every URL and every GET form (for the property tests)."""

    def decorate(self, url: str, base: str | None) -> str | None:
        return url + "\u00e9&\"'<x>"

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return [("n", 'v&"')]


def run(
    data: bytes,
    policy: LinkPolicy | None = None,
    *,
    chunks: Sequence[int] | None = None,
    **kwargs: object,
) -> tuple[bytes, HtmlRewriter]:
    """Run one document through a fresh rewriter, optionally split at ``chunks``; returns
    the output and the closed rewriter."""
    rewriter = HtmlRewriter(AppendPolicy() if policy is None else policy, **kwargs)  # type: ignore[arg-type]
    out = []
    start = 0
    for cut in sorted(chunks or ()):
        out.append(rewriter.feed(data[start:cut]))
        start = cut
    out.append(rewriter.feed(data[start:]))
    out.append(rewriter.close())
    return b"".join(out), rewriter


def rewrite(
    data: bytes,
    policy: LinkPolicy | None = None,
    *,
    chunks: Sequence[int] | None = None,
    **kwargs: object,
) -> bytes:
    """Run one document through a fresh rewriter, optionally split at ``chunks``."""
    return run(data, policy, chunks=chunks, **kwargs)[0]


def links(data: bytes) -> bytes:
    return rewrite(data)


# -- Links and attribute syntax --------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b'<a href="http://e.com/">', b'<a href="http://e.com/?ajs_aid=X">'),
        (b"<a href='http://e.com/'>", b"<a href='http://e.com/?ajs_aid=X'>"),
        # Unquoted: "=" may not appear unquoted, so the new value gets double quotes.
        (b"<a href=http://e.com/>", b'<a href="http://e.com/?ajs_aid=X">'),
        (b"<A HREF='http://e.com/'>", b"<A HREF='http://e.com/?ajs_aid=X'>"),
        (b'<AREA href="http://e.com/">', b'<AREA href="http://e.com/?ajs_aid=X">'),
        (
            b'<a\nclass=x\thref = "http://e.com/" >',
            b'<a\nclass=x\thref = "http://e.com/?ajs_aid=X" >',
        ),
        # Attribute after a quoted value without whitespace, and "/" between attributes.
        (b'<a id="1"href="http://e.com/">', b'<a id="1"href="http://e.com/?ajs_aid=X">'),
        (b"<a/href='http://e.com/'>", b"<a/href='http://e.com/?ajs_aid=X'>"),
        # Only the first of duplicate attributes counts.
        (
            b'<a href="http://one/" HREF="http://two/">',
            b'<a href="http://one/?ajs_aid=X" HREF="http://two/">',
        ),
        # Fragment kept after the insertion; raw bytes before it unchanged.
        (
            b'<a href="http://e.com/p?q=1&amp;r=2#top">',
            b'<a href="http://e.com/p?q=1&amp;r=2&amp;ajs_aid=X#top">',
        ),
        (
            b'<a href="http://e.com/p?q=1&#x26;r=2">',
            b'<a href="http://e.com/p?q=1&#x26;r=2&amp;ajs_aid=X">',
        ),
        # Legacy named reference without ";": "&copy" followed by "=" stays literal.
        (
            b'<a href="http://e.com/?a=1&copy=2">',
            b'<a href="http://e.com/?a=1&copy=2&amp;ajs_aid=X">',
        ),
        # ">" inside a quoted value of another attribute does not end the tag.
        (
            b'<a title="a>b" href="http://e.com/">',
            b'<a title="a>b" href="http://e.com/?ajs_aid=X">',
        ),
        # Relative links are left alone; <abbr>, <address> are not <a>.
        (b'<a href="/local">', b'<a href="/local">'),
        (b'<abbr href="http://e.com/"><address href="http://e.com/">', None),
        # A link inside another tag's attribute value is not a tag.
        (b'<div data-x="<a href=http://e.com/>">', None),
        # "<" inside an unquoted value is ambiguous: refuse to edit.
        (b"<a href=http://e.com/<x>", None),
        # Attribute without a value: policy sees "", leaves it.
        (b"<a href>", None),
    ],
)
def test_link_attributes(source: bytes, expected: bytes | None) -> None:
    assert links(source) == (source if expected is None else expected)


def test_policy_sees_decoded_url() -> None:
    policy = AppendPolicy()
    rewrite(b'<a href="http://e.com/?a=1&amp;b=&#233;&eacute&notit;">', policy)
    assert policy.seen == [("http://e.com/?a=1&b=\u00e9\u00e9&notit;", None)]


def test_unchanged_prefix_bytes_kept_and_middle_replaced() -> None:
    class Replace:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url.replace("ajs_aid=OLD", "ajs_aid=NEW")

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    source = b'<a href="http://e.com/?a=&#x31;&amp;ajs_aid=OLD&amp;z=&#50;">'
    assert rewrite(source, Replace()) == (
        b'<a href="http://e.com/?a=&#x31;&amp;ajs_aid=NEW&amp;z=&#50;">'
    )


def test_value_escaping_in_each_quoting() -> None:
    class Weird:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url + "&\"'"

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    assert rewrite(b'<a href="u">', Weird()) == b'<a href="u&amp;&quot;\'">'
    assert rewrite(b"<a href='u'>", Weird()) == b"<a href='u&amp;\"&#39;'>"
    assert rewrite(b"<a href=u>", Weird()) == b'<a href="u&amp;&quot;\'">'
    assert rewrite(b"<a href>", Weird()) == b'<a href="&amp;&quot;\'">'


def test_unquoted_value_stays_unquoted_when_safe() -> None:
    class Suffix:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url + "/x"

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    assert rewrite(b"<a href=http://e.com/a>", Suffix()) == b"<a href=http://e.com/a/x>"


def test_base_href_first_one_counts() -> None:
    policy = AppendPolicy()
    rewrite(
        b'<a href="http://a/"><base target=_top><base href="http://b/&amp;">'
        b'<base href="http://c/"><a href="http://d/">',
        policy,
    )
    assert policy.seen == [("http://a/", None), ("http://d/", "http://b/&")]


# -- Forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            b'<form action="http://f/">',
            b'<form action="http://f/"><input type="hidden" name="ajs_aid" value="X">',
        ),
        (b"<FORM METHOD=get>", b'<FORM METHOD=get><input type="hidden" name="ajs_aid" value="X">'),
        # Invalid method means GET.
        (b"<form method=put>", b'<form method=put><input type="hidden" name="ajs_aid" value="X">'),
        (
            b'<form method="PoSt" action="http://f/?a">',
            b'<form method="PoSt" action="http://f/?a&amp;ajs_aid=X">',
        ),
        (b'<form method=dialog action="http://f/">', None),
        (b"<form method=post>", None),
    ],
)
def test_forms(source: bytes, expected: bytes | None) -> None:
    assert links(source) == (source if expected is None else expected)


def test_form_fields_are_escaped_and_get_action_is_passed() -> None:
    policy = AppendPolicy(fields=[("a&b", 'x"y')])
    out = rewrite(b'<form action="/s?q=&amp;"></form>', policy)
    assert (
        out
        == b'<form action="/s?q=&amp;"><input type="hidden" name="a&amp;b" value="x&quot;y"></form>'
    )
    assert policy.forms == [("/s?q=&", None)]


def test_duplicate_form_attributes_first_wins() -> None:
    source = b'<form method=post METHOD=get action="http://f/" action="http://g/">'
    assert (
        links(source)
        == b'<form method=post METHOD=get action="http://f/?ajs_aid=X" action="http://g/">'
    )


def test_form_without_fields_untouched() -> None:
    assert rewrite(b"<form>", AppendPolicy(fields=None)) == b"<form>"


# -- Tokenizer contexts where nothing is touched -------------------------------------

LINK = b'<a href="http://e.com/">'
DECORATED = b'<a href="http://e.com/?ajs_aid=X">'


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"<!--", b"-->"),
        (b"<!-- x --!", b"-->"),  # "--!" without ">" does not end the comment
        (b"<?php ", b"?>"),
        (b"</ ", b">"),
        (b"<!DOCTYPE ", b">"),
        (b"<script>", b"</script>"),
        (b"<SCRIPT type=module>", b"</script >"),
        (b"<script><!--", b"--></script>"),
        (b"<style>", b"</style>"),
        (b"<textarea>", b"</textarea>"),
        (b"<title>", b"</title>"),
        (b"<xmp>", b"</xmp>"),
        (b"<iframe>", b"</iframe>"),
        (b"<noembed>", b"</noembed>"),
        (b"<noframes>", b"</noframes>"),
        (b"<plaintext>", b"</plaintext>"),
        (b"<svg><![CDATA[", b"]]></svg>"),
        (b"<math><![CDATA[", b"]]></math>"),
    ],
)
def test_link_not_touched_inside(before: bytes, after: bytes) -> None:
    source = before + LINK + after + b"<p>"
    assert links(source) == source


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"<!-->", b""),  # abrupt empty comments end at once
        (b"<!--->", b""),
        (b"<!---->", b""),
        (b"<!-- a --!>", b""),
        (b"<?x>", b""),
        (b"</>", b""),
        (b"</x y='>'>", b""),
        (b"<script></script>", b""),
        (b"<script>'</script>'", b""),
        (b"<script><!--</script>", b""),  # escaped script still ends at </script>
        (b"<script><!--<script></script>--></script>", b""),
        (b"<title></title >", b""),
        (b"<style></STYLE/>", b""),
        (b"<textarea></textarea>", b""),
        (b"<noscript>", b"</noscript>"),
        (b"<template>", b"</template>"),
        (b"<svg>", b"</svg>"),  # SVG <a href> is a link too
        (b"<svg><foreignObject><p>", b"</foreignObject></svg>"),
        (b"<svg><![CDATA[x]]>", b"</svg>"),
        (b"<![CDATA[<x>", b""),  # in HTML content this is a bogus comment up to ">"
        (b"<svg><p>", b""),  # breakout element leaves foreign content
    ],
)
def test_link_touched_after(before: bytes, after: bytes) -> None:
    assert links(before + LINK + after) == before + DECORATED + after


def test_script_double_escaped_end_tag_does_not_end_script() -> None:
    # "<!--<script>" enters the double escaped state, where </script> only returns
    # to the escaped state; the following </script> ends the element.
    source = b"<script><!--<script></script>" + LINK + b"</script>" + LINK
    assert links(source) == b"<script><!--<script></script>" + LINK + b"</script>" + DECORATED


def test_script_escape_ended_by_abrupt_comment() -> None:
    # "<!-->" inside script data is a complete escape; "<script" after it is text.
    source = b"<script><!--><script></script>" + LINK
    assert links(source) == b"<script><!--><script></script>" + DECORATED


def test_script_inside_svg_is_markup_but_style_in_foreign_object_is_rawtext() -> None:
    source = b"<svg><script>" + LINK + b"</script></svg>"
    assert links(source) == b"<svg><script>" + DECORATED + b"</script></svg>"
    source = b"<svg><foreignObject><style>" + LINK + b"</style></foreignObject></svg>"
    assert links(source) == source


# -- Injection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"<!DOCTYPE html><html><head><title>", b"<!DOCTYPE html><html><head>@<title>"),
        (b"<html><HEAD lang=en>x", b"<html><HEAD lang=en>@x"),
        (b"<!-- <head> --><head>", b"<!-- <head> --><head>@"),
        (b"<script>'<head>'</script><head>", b"@<script>'<head>'</script><head>"),
        (b"<!doctype html>\n<html>\n<body>", b"<!doctype html>\n<html>\n@<body>"),
        (b"<!doctype html> <!-- c --> hello", b"<!doctype html> <!-- c --> @hello"),
        (b"<html><header><head>", b"<html>@<header><head>"),
        (b"<html></head >\n", b"<html></head >\n@"),
        (b"", b"@"),
        (b"<html><!-- unterminated", b"<html><!-- unterminated"),
        (b"<html><he", b"<html>@<he"),
        (b"\xef\xbb\xbf<p>", b"\xef\xbb\xbf@<p>"),
    ],
)
def test_injection(source: bytes, expected: bytes) -> None:
    assert rewrite(source, inject=b"@") == expected


def test_injected_exactly_once() -> None:
    rewriter = HtmlRewriter(None, inject=INJECT)
    out = rewriter.feed(b"<html><head></head><head><body><head>") + rewriter.close()
    assert out.count(INJECT) == 1
    assert rewriter.injected


def test_no_injection_flag_when_absent() -> None:
    rewriter = HtmlRewriter(None, inject=None)
    assert rewriter.feed(b"<head>") + rewriter.close() == b"<head>"
    assert not rewriter.injected


# -- Encodings -------------------------------------------------------------------


def test_shift_jis_page_with_non_ascii_url() -> None:
    class Japanese:
        def decorate(self, url: str, base: str | None) -> str | None:
            assert url == "http://e.jp/\u691c\u7d22"
            return url + "?q=\u8868"  # U+8868's Shift_JIS trail byte is 0x5C ("\")

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    page = '<meta charset="shift_jis"><a href="http://e.jp/\u691c\u7d22">\u8868</a>'
    out = rewrite(page.encode("cp932"), Japanese())
    assert out == page.replace("\u691c\u7d22", "\u691c\u7d22?q=\u8868").encode("cp932")


def test_charset_argument_wins_over_meta() -> None:
    class Latin:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url + "\u00e9"

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    page = b'<meta charset="windows-1252"><a href="http://e/">'
    assert rewrite(page, Latin(), charset="utf-8").endswith(b'http://e/\xc3\xa9">')
    assert rewrite(page, Latin()).endswith(b'http://e/\xe9">')


def test_unencodable_edit_is_left_alone() -> None:
    class Kanji:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url + "\u691c"

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    page = b'<meta charset="iso-8859-1"><a href="http://e/">'
    assert rewrite(page, Kanji()) == page


@pytest.mark.parametrize("bom_codec", ["utf-16-le", "utf-16-be"])
def test_utf16_passthrough(bom_codec: str) -> None:
    bom = codecs.BOM_UTF16_LE if bom_codec.endswith("le") else codecs.BOM_UTF16_BE
    page = bom + '<head><a href="http://e.com/">'.encode(bom_codec)
    rewriter = HtmlRewriter(AppendPolicy(), inject=INJECT)
    assert rewriter.feed(page) + rewriter.close() == page
    assert not rewriter.injected
    assert rewriter.gave_up == GAVE_UP_CHARSET


@pytest.mark.parametrize("label", ["utf-16", "UTF-16LE", "iso-2022-jp"])
def test_declared_non_ascii_compatible_passthrough(label: str) -> None:
    page = '<head><a href="http://e.com/">'.encode("utf-16-le" if "16" in label else "ascii")
    assert rewrite(page, inject=INJECT, charset=label) == page


def test_meta_declaring_utf16_means_utf8() -> None:
    assert prescan(b'<meta charset="utf-16">') == "utf-8"


@pytest.mark.parametrize(
    ("head", "codec"),
    [
        (b'<meta charset="Shift_JIS">', "cp932"),
        (b"<meta http-equiv=Content-Type content='text/html; charset=euc-jp'>", "euc_jp"),
        (b'<meta content="text/html; charset=gb2312" http-equiv="content-type">', "gb18030"),
        (b'<meta content="text/html; charset=big5">', None),  # no http-equiv pragma
        (b'<!-- <meta charset="big5"> --><meta charset=koi8-r>', "koi8_r"),
        (b'<!--><meta charset="koi8-u">', "koi8_u"),  # "<!-->" is a whole comment
        (b'<x title="<meta charset=big5>"><meta charset=latin1>', "cp1252"),
        (b" " * 1024 + b'<meta charset="utf-8">', None),
    ],
)
def test_prescan(head: bytes, codec: str | None) -> None:
    assert prescan(head) == codec


# -- Streaming and memory -----------------------------------------------------------


def test_output_is_prompt() -> None:
    rewriter = HtmlRewriter(AppendPolicy(), charset="utf-8")
    assert rewriter.feed(b"<p>hello</p><a hr") == b"<p>hello</p>"
    assert rewriter.feed(b'ef="http://e/">tail') == b'<a href="http://e/?ajs_aid=X">tail'
    assert rewriter.feed(b"<script>" + b"x" * 1000).startswith(b"<script>" + b"x" * 900)
    assert rewriter.close() != b""


def test_max_buffer_gives_up_on_huge_tag() -> None:
    big = b'<a title="' + b"x" * 5000 + b'>" href="http://e/">'
    page = b"<p>" + big + LINK
    out, rewriter = run(page, chunks=range(0, len(page), 100), max_buffer=1000, charset="utf-8")
    assert out == page
    assert rewriter.gave_up == GAVE_UP_TAG_TOO_LONG


def test_huge_comment_and_script_stream_without_buffering() -> None:
    rewriter = HtmlRewriter(AppendPolicy(), charset="utf-8", max_buffer=100)
    out = [rewriter.feed(b"<!--"), rewriter.feed(b"a" * 10000), rewriter.feed(b"--><script>")]
    out += [rewriter.feed(b"b" * 10000), rewriter.feed(b"</script>" + LINK), rewriter.close()]
    assert (
        b"".join(out)
        == b"<!--" + b"a" * 10000 + b"--><script>" + b"b" * 10000 + b"</script>" + DECORATED
    )
    assert max(len(chunk) for chunk in out) >= 9900  # streamed, not accumulated


def test_unterminated_tag_at_eof_passes_through() -> None:
    assert links(b'<p><a href="http://e/"') == b'<p><a href="http://e/"'


# -- Giving up is never silent -------------------------------------------------------


def every_split(document: bytes) -> list[list[int]]:
    """Every split of ``document`` into two pieces, and byte by byte."""
    return [[cut] for cut in range(len(document) + 1)] + [list(range(len(document)))]


UTF16_PAGE = codecs.BOM_UTF16_LE + ("<head>" + LINK.decode()).encode("utf-16-le")
GIVE_UPS = [
    # (reason, document, rewriter arguments, expected output)
    pytest.param(
        GAVE_UP_PLAINTEXT,
        LINK + b"<PlainText x=1>" + LINK + b"</plaintext>" + LINK,
        {},
        INJECT + DECORATED + b"<PlainText x=1>" + LINK + b"</plaintext>" + LINK,
        id="plaintext",
    ),
    pytest.param(
        GAVE_UP_AMBIGUITY,
        b"<math><mi><b><![CDATA[" + LINK + b"]]></b></mi></math>" + LINK,
        {},
        INJECT + b"<math><mi><b><![CDATA[" + LINK + b"]]></b></mi></math>" + LINK,
        id="cdata-in-integration-point",
    ),
    pytest.param(
        GAVE_UP_AMBIGUITY,
        b"<svg><foreignObject><p></p><![CDATA[" + LINK + b"]]></foreignObject></svg>" + LINK,
        {},
        INJECT
        + b"<svg><foreignObject><p></p><![CDATA["
        + LINK
        + b"]]></foreignObject></svg>"
        + LINK,
        id="cdata-in-foreign-object",
    ),
    pytest.param(GAVE_UP_CHARSET, UTF16_PAGE, {}, UTF16_PAGE, id="utf-16-bom"),
    pytest.param(
        GAVE_UP_CHARSET,
        b"<head>" + LINK,
        {"charset": "UTF-16LE"},
        b"<head>" + LINK,
        id="content-type-utf-16",
    ),
    pytest.param(
        GAVE_UP_CHARSET,
        b'<meta charset="iso-2022-jp"><head>' + LINK,
        {},
        b'<meta charset="iso-2022-jp"><head>' + LINK,
        id="meta-iso-2022-jp",
    ),
]


@pytest.mark.parametrize(("reason", "document", "arguments", "expected"), GIVE_UPS)
def test_give_up_reason_over_every_chunk_split(
    reason: str, document: bytes, arguments: dict[str, str], expected: bytes
) -> None:
    """What came before the give-up is rewritten, the rest passes through unchanged, and
    the reason is recorded, however the document is split."""
    assert reason in GAVE_UP_REASONS
    for cuts in every_split(document):
        out, rewriter = run(document, inject=INJECT, chunks=cuts, **arguments)
        assert (out, rewriter.gave_up) == (expected, reason), cuts


def test_give_up_reasons_are_the_four_constants() -> None:
    constants = {GAVE_UP_CHARSET, GAVE_UP_TAG_TOO_LONG, GAVE_UP_AMBIGUITY, GAVE_UP_PLAINTEXT}
    assert sorted(GAVE_UP_REASONS) == sorted(constants)


def test_gave_up_is_set_by_the_feed_that_gives_up() -> None:
    rewriter = HtmlRewriter(AppendPolicy(), charset="utf-8")
    assert rewriter.feed(LINK + b"<plain") == DECORATED
    assert rewriter.gave_up is None
    assert rewriter.feed(b"text>" + LINK) == b"<plaintext>" + LINK
    assert rewriter.gave_up == GAVE_UP_PLAINTEXT
    assert rewriter.close() == b""
    assert rewriter.gave_up == GAVE_UP_PLAINTEXT


def test_memory_limit_over_every_chunk_split() -> None:
    """The one chunk-dependent give-up: it happens exactly when a tag cut by a chunk
    boundary has more than max_buffer bytes before the cut."""
    big = b'<a title="' + b"x>" * 100 + b'" href="http://e/">'
    document = LINK + big + LINK
    start, end = len(LINK), len(LINK) + len(big)
    rewritten = DECORATED + big.replace(b'e/"', b'e/?ajs_aid=X"') + DECORATED
    for cuts in every_split(document):
        out, rewriter = run(document, chunks=cuts, charset="utf-8", max_buffer=100)
        held = max((cut - start for cut in cuts if start < cut < end), default=0)
        if held > 100:
            assert (out, rewriter.gave_up) == (DECORATED + big + LINK, GAVE_UP_TAG_TOO_LONG)
        else:
            assert (out, rewriter.gave_up) == (rewritten, None), cuts


@pytest.mark.parametrize(
    "source",
    [
        b"<svg><![CDATA[" + LINK + b"]]></svg>",  # a CDATA section in svg: not ambiguous
        b"<math><mi><![CDATA[" + LINK + b"]]></mi></math>",  # first thing in <mi>: CDATA
        b"<![CDATA[" + LINK,  # in HTML content: a bogus comment
        b"<svg><plaintext>" + LINK + b"</plaintext></svg>",  # a foreign element
        b"<script>'<plaintext>'</script><!-- <plaintext> -->",
        b'<a title="<plaintext>">',
        b"<title>" + LINK + b"</title><textarea>",  # an unclosed text element is text
    ],
)
def test_no_give_up(source: bytes) -> None:
    for cuts in every_split(source):
        assert run(source, charset="utf-8", chunks=cuts)[1].gave_up is None


def test_feed_after_close_is_an_error() -> None:
    rewriter = HtmlRewriter(None)
    rewriter.close()
    with pytest.raises(RuntimeError):
        rewriter.feed(b"x")


# -- Properties -------------------------------------------------------------------

# (document, Content-Type charset). The charset matters: without one, the rewriter
# holds the first 1024 bytes for the <meta> prescan, and these documents are
# shorter than that, so chunk boundaries would never be exercised.
DOCUMENTS = [
    (
        b"<!DOCTYPE html><html><head><title>t &amp; <a href=x></title></head><body>"
        b'<a href="http://e.com/?a=1&amp;b">x</a><!-- <a href="http://c/"> --><script>'
        b"if (a<b) document.write('<a href=\"http://s/\">');<!--<script></script>--></script>"
        b"<form action=http://f/ method=post><form><svg><title>a</title><![CDATA[<a href=x>]]>"
        b"<a href='http://svg/'></a></svg><textarea><a href=http://t/></textarea>"
        b"<base href=http://b/><AREA HREF=http://area/ shape=rect></body></html>",
        "utf-8",
    ),
    (
        '<title>\u8868</title><a href="http://\u691c/?\u8868">'.encode("cp932"),
        "shift_jis",
    ),
    (
        b"<!--><a href=http://a/><!---><a href=http://b/><?x><a href=http://c/></x><a href=d>",
        "windows-1252",
    ),
    (b"\xef\xbb\xbf<html><he ad><a title='>' href=http://x/?q=&amp;&#38;&amp>x", "utf-8"),
    (b"<p>" * 400 + b"<a title='>' href=\"http://x/?a=1>\"><!-- > --><a href=http://y/>", None),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_chunking_never_changes_output(data: st.DataObject) -> None:
    for document, charset in DOCUMENTS:
        cuts = data.draw(st.lists(st.integers(0, len(document)), max_size=12))
        whole, rewriter = run(document, inject=INJECT, charset=charset)
        split, split_rewriter = run(document, inject=INJECT, charset=charset, chunks=cuts)
        assert split == whole
        assert split_rewriter.gave_up == rewriter.gave_up is None


def test_byte_by_byte_equals_whole() -> None:
    for document, charset in DOCUMENTS:
        policy = EverythingPolicy()
        whole = rewrite(document, policy, inject=INJECT, charset=charset)
        split = rewrite(
            document, policy, inject=INJECT, charset=charset, chunks=range(len(document))
        )
        assert split == whole


_HTMLISH = st.lists(
    st.sampled_from(
        [
            b"<",
            b">",
            b"/",
            b"!",
            b"-",
            b"--",
            b"?",
            b"=",
            b'"',
            b"'",
            b" ",
            b"\n",
            b"&",
            b";",
            b"a",
            b"A",
            b" href",
            b"=http://h/",
            b"<a",
            b"<area",
            b"<form",
            b"<base",
            b"<head",
            b"<script",
            b"</script",
            b"<style",
            b"</style",
            b"<title",
            b"</title",
            b"<svg",
            b"</svg",
            b"<math",
            b"<![CDATA[",
            b"]]>",
            b"<!--",
            b"-->",
            b"method=post",
            b"action",
            b"&amp;",
            b"&#x26;",
            b"&copy",
            b"<plaintext",
            b"<foreignObject",
            b"<p",
            b"\xe9",
            b"\x82\xa0",
            b"<meta charset=shift_jis>",
            b"<!DOCTYPE",
            b"x",
        ]
    ),
    max_size=40,
).map(b"".join)


_DOCUMENTS = st.one_of(_HTMLISH, st.binary(max_size=200))
_CUTS = st.lists(st.integers(0, 300), max_size=6)


@settings(max_examples=150, deadline=None)
@given(document=_DOCUMENTS, cuts=_CUTS)
def test_null_policy_is_identity(document: bytes, cuts: list[int]) -> None:
    cuts = [cut for cut in cuts if cut <= len(document)]
    rewriter = HtmlRewriter(None, charset="utf-8", max_buffer=64)
    out = []
    start = 0
    for cut in sorted(cuts):
        out.append(rewriter.feed(document[start:cut]))
        start = cut
    out.append(rewriter.feed(document[start:]))
    out.append(rewriter.close())
    assert b"".join(out) == document


class SnowmanPolicy:
    """Appends U+2603 to every non-empty URL: stripping it must give back the input."""

    def decorate(self, url: str, base: str | None) -> str | None:
        return url + "\u2603" if url else None

    def form_fields(self, action: str, base: str | None) -> None:
        return None


SNOWMAN = "\u2603".encode()


@settings(max_examples=150, deadline=None)
@given(document=_DOCUMENTS, cuts=_CUTS)
def test_edits_are_chunk_independent_and_removable(document: bytes, cuts: list[int]) -> None:
    assume(SNOWMAN not in document)
    cuts = [cut for cut in cuts if cut <= len(document)]
    whole, rewriter = run(document, SnowmanPolicy(), charset="utf-8")
    split, split_rewriter = run(document, SnowmanPolicy(), charset="utf-8", chunks=cuts)
    assert (split, split_rewriter.gave_up) == (whole, rewriter.gave_up)
    assert whole.replace(SNOWMAN, b"") == document


@settings(max_examples=150, deadline=None)
@given(document=_DOCUMENTS, cuts=_CUTS)
def test_aggressive_policy_never_raises(document: bytes, cuts: list[int]) -> None:
    cuts = [cut for cut in cuts if cut <= len(document)]
    for charset in ("utf-8", "shift_jis"):
        whole, rewriter = run(document, EverythingPolicy(), inject=INJECT, charset=charset)
        split, split_rewriter = run(
            document, EverythingPolicy(), inject=INJECT, charset=charset, chunks=cuts
        )
        assert (split, split_rewriter.gave_up) == (whole, rewriter.gave_up)


# -- Character references and foreign content details --------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"&#x80;&#0;&#xD800;&#x110000;&#38x", "\u20ac\ufffd\ufffd\ufffd&x"),
        (b"a&amp", "a&"),
        (b"&ampx&amp=&amp;", "&ampx&amp=&"),
        (b"&notin;&notit;&not.", "\u2209&notit;\u00ac."),
        (b"&#x;&#;&bogus;&", "&#x;&#;&bogus;&"),
        (b"a\r\nb\rc\0", "a\nb\nc\ufffd"),
    ],
)
def test_attribute_value_decoding(raw: bytes, text: str) -> None:
    assert decode_value(raw, "cp1252") == text


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([b"&amp;", b"&amp", b"&ampx", b"&amp;amp;", b"&&", b"a", b"=", b"?", b";"]),
        max_size=8,
    )
)
def test_attribute_value_decoding_shortcut_for_amp(pieces: list[bytes]) -> None:
    """decode_value reads values whose references are all "&amp;" without split_value."""
    raw = b"".join(pieces)
    assert decode_value(raw, "utf-8") == "".join(p.text for p in split_value(raw, "utf-8"))


def test_splice_falls_back_when_kept_bytes_would_change_meaning() -> None:
    class Semicolon:
        def decorate(self, url: str, base: str | None) -> str | None:
            return url + ";x"

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    # Raw "&amp" (decoded "&") followed by a new ";" would read "&amp;" -> "&": the
    # value must be re-encoded as a whole instead.
    out = rewrite(b'<a href="http://e/?a&amp">', Semicolon())
    assert out == b'<a href="http://e/?a&amp;;x">'
    assert decode_value(b"http://e/?a&amp;;x", "utf-8") == "http://e/?a&;x"


@pytest.mark.parametrize(
    ("source", "expected_decorated"),
    [
        (b"<svg><font color=red>" + LINK + b"</svg>", True),  # font with color breaks out
        (b"<svg><font>" + LINK + b"</font></svg>", True),  # svg <a>
        (b"<svg><font><style>" + LINK + b"</style></svg>", True),  # svg style is markup
        (b"<svg><font color=red><style>" + LINK + b"</style>", False),  # HTML style again
        (b"<math><annotation-xml encoding='text/html'><style>" + LINK + b"</style>", False),
        # MathML has no links: an <a> there is a MathML element.
        (b"<math><annotation-xml><style>" + LINK + b"</style>", False),
        (b"<math><annotation-xml><style></style></math>" + LINK, True),
        # The current node is <mi>, not HTML: a CDATA section.
        (b"<math><mi><![CDATA[" + LINK + b"]]>", False),
        (b"<math><mi><![CDATA[]]></mi></math>" + LINK, True),
        # An HTML element may be open inside <mi>: ambiguous, pass the rest through.
        (b"<math><mi><b><![CDATA[]]></b></mi></math>" + LINK, False),
        (b"<svg><a href='http://e.com/'/></svg>", True),
        (b"<svg></p><style>" + LINK + b"</style>", False),  # </p> breaks out
        (b"<svg><svg/><![CDATA[" + LINK + b"]]></svg>", False),
    ],
)
def test_foreign_content(source: bytes, expected_decorated: bool) -> None:
    assert (b"?ajs_aid=X" in links(source)) is expected_decorated


def test_decorated_counter_counts_edits_and_forms() -> None:
    rewriter = HtmlRewriter(AppendPolicy())
    rewriter.feed(LINK + b"<a href=/x><form><area href='http://a/'>")
    rewriter.close()
    assert rewriter.decorated == 3


def test_pending_input_after_policy_failure() -> None:
    class Broken:
        def decorate(self, url: str, base: str | None) -> str | None:
            raise ValueError("policy bug")

        def form_fields(self, action: str, base: str | None) -> None:
            return None

    rewriter = HtmlRewriter(Broken(), charset="utf-8")
    first = rewriter.feed(b"\xef\xbb\xbf<p>one</p><a hr")
    with pytest.raises(ValueError):
        rewriter.feed(b'ef="http://e/">two')
    assert first + rewriter.pending_input == b'\xef\xbb\xbf<p>one</p><a href="http://e/">two'


def test_long_document_streams_in_constant_memory() -> None:
    chunk = (
        b"<p>text <a href='http://e.com/x'>l</a><!-- c --><script>if(a<b){}</script>"
        b"<style>p{}</style><svg><![CDATA[x]]></svg><textarea>t</textarea>"
    ) * 200
    rewriter = HtmlRewriter(AppendPolicy(), charset="utf-8")
    total_in = total_out = 0
    for _ in range(300):  # about 50 MB
        total_out += len(rewriter.feed(chunk))
        total_in += len(chunk)
        assert len(rewriter.pending_input) <= 64
    total_out += len(rewriter.close())
    assert total_out == total_in + rewriter.decorated * len("?ajs_aid=X")


# -- The package is a library ---------------------------------------------------------

HTML_PACKAGE = Path(__file__).resolve().parent.parent / "gateway" / "html"


@pytest.mark.parametrize("module", sorted(HTML_PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_html_package_imports_only_itself_and_the_stdlib(module: Path) -> None:
    """gateway/html is a self-contained library: what it needs from the gateway comes in as
    a parameter or a LinkPolicy, never as an import (nor asyncio or any third-party package)."""
    outside = []
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level != 1:
            # "from . import x" stays in the package; "from .. import x" leaves it.
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            if top == "asyncio" or top not in sys.stdlib_module_names:
                outside.append(f"{module.name}:{node.lineno}: {name}")
    assert outside == []
