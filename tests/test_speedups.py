"""The compiled scanner (gateway/html/_speedups.c) against the pure-Python one (_scan.py).

They must be the same state machine: for any input, cut into chunks anyhow, the same events
at the same positions, the same stops and the same give-ups; so the rewriter's output is the
same bytes whichever runs. Checked over generated documents built from the tokens the
scanner branches on, over random bytes, and over every corpus page at several chunkings,
both at the scanner's interface and through HtmlRewriter. (tests/test_rewriter*.py also run
whole against each implementation, see conftest.scanner_implementation.)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.html import _scan, rewriter
from gateway.html._impl import ScannerAPI

from .conftest import CORPUS, compiled_scanner

_speedups = compiled_scanner()
Factory = Callable[[str, bool, bool], ScannerAPI]
PAGES = sorted(CORPUS.glob("*.html"))


def test_constants_agree() -> None:
    for name in (
        "HREF INJECT FORM BASE QUOTE_PLAIN QUOTE_DOUBLE QUOTE_SINGLE QUOTE_UNQUOTED "
        "QUOTE_NONE GAVE_UP_AMBIGUITY GAVE_UP_PLAINTEXT"
    ).split():
        assert getattr(_speedups, name) == getattr(_scan, name), name


def scan(
    factory: Factory,
    document: bytes,
    cuts: Sequence[int],
    *,
    encoding: str = "utf-8",
    inject: bool = True,
    links: bool = True,
) -> tuple[list[tuple[int, int, int, int]], list[int], int]:
    """Feed ``document`` to a scanner as HtmlRewriter does (the unconsumed rest of the buffer
    is scanned again with the next chunk), cut at ``cuts``. Returns the events with absolute
    positions, where each scan stopped, and the give-up."""
    scanner = factory(encoding, inject, links)
    events: list[tuple[int, int, int, int]] = []
    stops: list[int] = []
    buf = b""
    offset = 0  # where buf starts in the document
    bounds = [*sorted(set(cuts)), len(document)]
    start = 0
    for index, cut in enumerate(bounds):
        buf += document[start:cut]
        start = cut
        final = index == len(bounds) - 1
        found, pos = scanner.scan(buf, 0, final)
        for kind, a, b, c in found:
            events.append((kind, a + offset, b + offset, c))
        stops.append(pos + offset)
        offset += pos
        buf = buf[pos:]
    return events, stops, scanner.gave_up


def assert_same(document: bytes, cuts: Sequence[int], **options: object) -> None:
    python = scan(_scan.Scanner, document, cuts, **options)  # type: ignore[arg-type]
    compiled = scan(_speedups.Scanner, document, cuts, **options)  # type: ignore[arg-type]
    assert compiled == python


# Pieces that take the scanner through every branch: tag names it tells apart (any case),
# attribute syntax, every text state's way in and out, foreign content and its exits.
_PIECES = [
    *(b"<", b">", b"/", b"!", b"?", b"-", b"--", b"=", b'"', b"'", b" ", b"\t", b"\n", b"\r"),
    *(b"\f", b"\0", b"&", b";", b"x", b"A", b"\xe9", b"\x82\xa0", b"]]>", b"]]", b"-->"),
    *(b"--!>", b"<!--", b"<!-->", b"<!--->", b"<!-", b"<!", b"<?x>", b"</>", b"</ x>", b"</"),
    *(b"<![CDATA[", b"<![CDA", b"<!DOCTYPE html>", b" href", b"HREF", b" hrefx", b"=", b"= "),
    *(b"=http://h/", b'="http://h/?a=1"', b"='http://h/'", b'"&amp;"', b"=>", b"/>", b"\x80"),
    *(b"<a", b"<A", b"<area", b"<ab", b"<form", b"<base", b"<head", b"<html", b"<HTML"),
    *(b"<script", b"</script", b"<SCRIPT", b"</Script", b"<style", b"</style", b"<title"),
    *(b"</title", b"<textarea", b"</textarea", b"<xmp", b"</xmp", b"<iframe", b"</iframe"),
    *(b"<noembed", b"</noembed", b"<noframes", b"</noframes", b"<plaintext", b"<svg", b"</svg"),
    *(b"<math", b"</math", b"<foreignObject", b"</foreignobject", b"<desc", b"</desc"),
    *(b"<mi", b"</mi", b"<mo", b"<mn", b"<ms", b"<mtext", b"</mtext", b"<annotation-xml"),
    *(b"</annotation-xml", b" encoding=text/html", b" encoding='TEXT/HTML'", b"<font"),
    *(b" encoding=&#116;ext/html", b" encoding=application/xhtml+xml", b" color=red"),
    *(b" face", b" SIZE=1", b"<b", b"<br", b"</br", b"<p", b"</p", b"<div", b"<span", b"<h1"),
    *(b"<table", b"<blockquote", b"<body", b"</body", b"<meta", b"<strong", b"<li", b"<img"),
    *(b"<x-y", b"<scripts", b"<areas", b"<a:b", b"</a", b"<a/", b"<a\n", b" method=post"),
    *(b" action=/x", b"<!--<script>", b"</script>-->", b"text ", b"<svg/>", b"<math/>"),
]

# Tokens as the tokenizer reads them, so that documents get deep into each state: start and
# end tags with names the scanner tells apart (in any case) and every attribute syntax,
# comments, bogus comments, CDATA, and the contents of script, RCDATA and RAWTEXT elements.
_NAMES = [
    *("a area form base head html script plaintext svg math title textarea style xmp".split()),
    *("iframe noembed noframes font foreignObject desc mi mo mn ms mtext annotation-xml".split()),
    *("br p b div span h1 table blockquote body meta img x-y abbr areas scripts svgx".split()),
]
_ATTRIBUTE_NAMES = "href HREF color face size encoding method action x =y hrefx".split()
_VALUES = [
    *(b"", b"=", b"=x", b"=http://h/a", b'="http://h/?a=1"', b"='http://h/'", b'="a>b"'),
    *(b"='a\"b'", b' = "post"', b"=text/html", b"='application/XHTML+xml'", b'="&amp;x"'),
    *(b"=&#116;ext/html", b'="\xe9"', b"=a/", b'="unclosed', b"=>", b"=x'y", b'="\r\0"'),
]
_GAPS = [b" ", b"\n", b"/", b"", b" / ", b"\t"]


@st.composite
def _case(draw: st.DrawFn, name: str) -> bytes:
    """``name`` as written, or with random letters upper-cased."""
    if draw(st.booleans()):
        return name.encode()
    return bytes(ord(c.upper() if draw(st.booleans()) else c) for c in name)


@st.composite
def _attributes(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(_ATTRIBUTE_NAMES))
        parts.append(draw(st.sampled_from(_GAPS)) + name.encode() + draw(st.sampled_from(_VALUES)))
    return b"".join(parts) + draw(st.sampled_from([b"", b" ", b"/", b" /"]))


@st.composite
def _tag(draw: st.DrawFn) -> bytes:
    name = draw(_case(draw(st.sampled_from(_NAMES))))
    end = draw(st.sampled_from([b">", b">", b">", b""]))
    if draw(st.integers(0, 3)) == 0:
        return b"</" + name + draw(st.sampled_from([b"", b" x='>'", b"/"])) + end
    return b"<" + name + draw(_attributes()) + end


_TEXT = st.sampled_from(
    [
        *(b"text", b" ", b"\n", b"&amp;", b"\xe9", b"<", b"< x", b">", b"<3", b"-", b"]]>"),
        *(b"<!-- c -->", b"<!---->", b"<!-->", b"<!--->", b"<!-- --!>", b"<!--", b"-->"),
        *(b"<!DOCTYPE html>", b"<!x>", b"<?pi>", b"</ x>", b"</>", b"<![CDATA[", b"<![CDATA[x]]>"),
        *(b"<script>", b"</script>", b"<script ", b"</script\n", b"</SCRIPT>", b"<!--<script>"),
        *(b"</style>", b"</title>", b"</textarea >", b"</xmp/", b"</iframe>", b"</noframes>"),
    ]
)

# Fragments that go deep into one part of the state machine: foreign content (integration
# points, breakouts, CDATA sections and the ambiguity give-up), and script data (escaped and
# double-escaped states).
_FOREIGN_NAMES = [
    *("svg math mi mo mtext annotation-xml foreignObject desc title font b p br a".split()),
    *("style script g path".split()),
]


@st.composite
def _foreign_tag(draw: st.DrawFn) -> bytes:
    name = draw(_case(draw(st.sampled_from(_FOREIGN_NAMES))))
    if draw(st.integers(0, 2)) == 0:
        return b"</" + name + b">"
    return b"<" + name + draw(_attributes()) + draw(st.sampled_from([b">", b">", b"/>"]))


_FOREIGN = st.tuples(
    st.sampled_from([b"<svg>", b"<math>"]),
    st.lists(
        st.one_of(
            _foreign_tag(),
            _foreign_tag(),
            st.sampled_from([b"<![CDATA[x", b"]]>", b"<![CDATA[<a href=x>]]>", b"x", b"<!--x-->"]),
        ),
        max_size=12,
    ),
).map(lambda root_parts: root_parts[0] + b"".join(root_parts[1]))
_SCRIPT = st.lists(
    st.sampled_from(
        [
            *(b"<!--", b"-->", b"<!-->", b"<script>", b"<script ", b"</script>", b"</script "),
            *(b"<SCRIPT/", b"</scriptx>", b"<scriptx>", b"x", b"-", b"--", b"<", b"</", b"!"),
        ]
    ),
    max_size=12,
).map(lambda parts: b"<script>" + b"".join(parts))
_DOCUMENTS = st.one_of(
    st.lists(st.one_of(_tag(), _TEXT, _TEXT, _FOREIGN, _SCRIPT), max_size=40).map(b"".join),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.binary(max_size=200),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), document=_DOCUMENTS, inject=st.booleans(), links=st.booleans())
def test_same_events_on_generated_documents(
    data: st.DataObject, document: bytes, inject: bool, links: bool
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(document)), max_size=8))
    assert_same(document, cuts, inject=inject, links=links)


@st.composite
def _link(draw: st.DrawFn) -> bytes:
    name = draw(_case(draw(st.sampled_from(["a", "area", "form", "base"]))))
    end = draw(st.sampled_from([b">", b">", b""]))
    return b"<" + name + draw(_attributes()) + end + draw(_TEXT)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), links=st.lists(_link(), max_size=4).map(b"".join), inject=st.booleans())
def test_same_events_on_links(data: st.DataObject, links: bytes, inject: bool) -> None:
    """Links, forms and <base>, in HTML content and in <svg>, with every attribute syntax."""
    cuts = data.draw(st.lists(st.integers(0, len(links)), max_size=3))
    for document in (links, b"<svg>" + links):
        assert_same(document, cuts, inject=inject)
        assert_same(document, cuts, inject=inject, links=False)


@settings(max_examples=300, deadline=None)
@given(document=_DOCUMENTS)
def test_same_events_byte_by_byte(document: bytes) -> None:
    assert_same(document, range(len(document)))


@settings(max_examples=200, deadline=None)
@given(document=_DOCUMENTS, encoding=st.sampled_from(["windows-1252", "shift_jis", "utf-8"]))
def test_same_events_in_other_encodings(document: bytes, encoding: str) -> None:
    assert_same(document, [], encoding=encoding)


# For the tree-builder simulation (foreign content, integration points, breakouts, the
# CDATA ambiguity, injection before <head>), what matters is the order of a few tags, which
# random generation rarely hits: every sequence of up to three of these tokens is tried.
_TREE_TOKENS = [
    *(b"<svg>", b"<math>", b"<svg/>", b"<math><mi>", b"<mi>", b"</mi>", b"<mtext/>", b"<b>"),
    *(b"</p>", b"</br>", b"<font color=1>", b"<font>", b"<foreignObject>", b"</foreignobject>"),
    *(b"<desc>", b"<title>", b"</title>", b"<annotation-xml encoding=TEXT/HTML>", b"</math>"),
    *(b"<annotation-xml encoding=&#116;ext/html>", b"<annotation-xml>", b"</svg>"),
    *(b"<![CDATA[x]]>", b"<![CDATAx>", b"<base href=x>", b"<head>", b"<html>", b"<a href=x>"),
    *(b"<form action=y>", b"<style>", b"<script>", b"<!--<script>", b"</script>", b"x"),
]


def test_same_events_on_every_short_tag_sequence() -> None:
    for length in (1, 2, 3):
        for tokens in itertools.product(_TREE_TOKENS, repeat=length):
            document = b"".join(tokens)
            boundaries = list(itertools.accumulate(len(token) for token in tokens[:-1]))
            assert_same(document, [])
            assert_same(document, boundaries, inject=False)


def chunkings(size: int, seed: int) -> dict[str, list[int]]:
    """Cut points: none, network-sized reads, small odd chunks, random cuts."""
    rng = random.Random(seed)
    return {
        "whole": [],
        "64k": list(range(65536, size, 65536)),
        "8k": list(range(8192, size, 8192)),
        "997": list(range(997, size, 997)),
        "61": list(range(61, size, 61)),
        "random": sorted(rng.sample(range(size), min(size, 200))),
    }


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
def test_same_events_on_the_corpus(path: Path) -> None:
    page = path.read_bytes()
    for name, cuts in chunkings(len(page), len(page)).items():
        for inject, links in ((True, True), (False, True), (True, False)):
            options = {"encoding": "windows-1252", "inject": inject, "links": links}
            python = scan(_scan.Scanner, page, cuts, **options)  # type: ignore[arg-type]
            compiled = scan(_speedups.Scanner, page, cuts, **options)  # type: ignore[arg-type]
            assert compiled == python, name


class MarkPolicy:
    """Decorates every link and GET form, so that every event turns into bytes."""

    def decorate(self, url: str, base: str | None) -> str | None:
        return f"{url}#{base}" if url else None

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return [("f", action)]


def rewrite(
    factory: Factory, page: bytes, cuts: Sequence[int]
) -> tuple[bytes, int, bool, str | None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rewriter, "Scanner", factory)
        html = rewriter.HtmlRewriter(MarkPolicy(), inject=b"<script>x</script>")
        out = []
        start = 0
        for cut in [*cuts, len(page)]:
            out.append(html.feed(page[start:cut]))
            start = cut
        out.append(html.close())
    return b"".join(out), html.decorated, html.injected, html.gave_up


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
def test_same_output_bytes_on_the_corpus(path: Path) -> None:
    page = path.read_bytes()
    for name, cuts in chunkings(len(page), len(page) + 1).items():
        python = rewrite(_scan.Scanner, page, cuts)
        assert rewrite(_speedups.Scanner, page, cuts) == python, name
