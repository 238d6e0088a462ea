"""Differential tests: the rewriter against real HTML parsers on real pages.

For every corpus page, the links the rewriter decorates must be exactly the
cross-domain links a parser finds in the tree it builds, counted with multiplicity:
<a href> and <area href> (and SVG <a href>), and the action of POST forms. Removing
the decoration from the output must give back the input byte for byte.

The reference is html5lib, an independent implementation of the WHATWG parsing
algorithm the rewriter simulates (tokenizer, text states, foreign content, encoding
sniffing), as h11 is checked against the standard library's HTTP parser. lxml
(libxml2's HTML parser, not a WHATWG parser) is kept as a second, faster opinion on
the same pages; where the two parsers disagree, html5lib decides.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import html5lib
import pytest
from bs4 import BeautifulSoup

from gateway.html import HtmlRewriter

from .conftest import CORPUS

PAGES = sorted(CORPUS.glob("*.html"))
MARKER = "zqxmarker"
# What the rewriter writes for the marker: "?zqxmarker", or "&zqxmarker" with the
# "&" escaped as the attribute syntax requires.
MARKER_IN_OUTPUT = re.compile(rb"(?:\?|&amp;)" + MARKER.encode())
ASCII_WHITESPACE = "\t\n\f\r "
_HOST = re.compile(rb"""https?://([A-Za-z0-9.-]+)""")

# qq.html is stored as UTF-8 but declares charset=gb2312 (the corpus was saved after
# transcoding). libxml2 stops at the first byte sequence invalid in GB2312 and
# returns an empty tree, where a browser (and the rewriter, which only decodes the
# values it edits) keeps going. Tell BeautifulSoup the real encoding.
PARSER_ENCODING = {"qq.html": "utf-8"}

# Known disagreements, by page: (URLs only the rewriter decorates, URLs only the parser
# finds), each entry with the reason next to it. Keep both tables minimal.
# HTML5LIB_DISAGREES may only list what the rewriter models on purpose differently from
# the tree builder (see the "Deliberate approximations" in gateway/html/rewriter.py),
# checked by hand against the spec. LXML_DISAGREES may only list pages where libxml2
# departs from the WHATWG algorithm, so html5lib agrees with the rewriter there.
# (html5lib 1.1 follows the spec as of 2020: a later change to tree construction that
# the rewriter follows is a valid reason too.) Both are empty: over the vendored corpus
# the rewriter agrees with both parsers.
Disagreement = tuple[Counter[str], Counter[str]]
HTML5LIB_DISAGREES: dict[str, Disagreement] = {}
LXML_DISAGREES: dict[str, Disagreement] = {}
NO_DISAGREEMENT: Disagreement = (Counter(), Counter())


def own_host(page: bytes) -> str:
    """The page's "own" host: the one most absolute links point to (both sides use
    the same value, so any deterministic choice works)."""
    hosts = Counter(host.lower() for host in _HOST.findall(page))
    return hosts.most_common(1)[0][0].decode("ascii") if hosts else ""


def is_cross_domain(url: str, own: str) -> bool:
    try:
        parts = urlsplit(url.strip(ASCII_WHITESPACE))
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(host) and host != own


class RecordingPolicy:
    """Decorates cross-domain links with a marker and records them."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.decorated: Counter[str] = Counter()

    def decorate(self, url: str, base: str | None) -> str | None:
        if not is_cross_domain(url, self.own):
            return None
        self.decorated[url] += 1
        return url + ("&" if "?" in url else "?") + MARKER

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return None


@dataclass(frozen=True)
class Rewritten:
    output: bytes
    decorated: Counter[str]  # the URLs the policy decorated
    counted: int  # HtmlRewriter.decorated: the edits made, which must be as many
    gave_up: str | None


@functools.cache
def rewritten(path: Path, implementation: str) -> Rewritten:
    """The page through the rewriter in realistic network chunks (8 KiB reads), with the
    scanner ``implementation`` that conftest.scanner_implementation selected; cached, as
    every test of a page reads the same run."""
    page = path.read_bytes()
    policy = RecordingPolicy(own_host(page))
    rewriter = HtmlRewriter(policy)
    output = b"".join(rewriter.feed(page[i : i + 8192]) for i in range(0, len(page), 8192))
    output += rewriter.close()
    return Rewritten(output, policy.decorated, rewriter.decorated, rewriter.gave_up)


_XHTML = "{http://www.w3.org/1999/xhtml}"
_LINKS = frozenset({f"{_XHTML}a", f"{_XHTML}area", "{http://www.w3.org/2000/svg}a"})


def html5lib_links(page: bytes, own: str) -> Counter[str]:
    """The links in html5lib's tree. It sniffs the encoding itself, by the same WHATWG
    steps as gateway/html/charset.py (chardet's guessing off, so the result does not
    depend on whether chardet is installed), and parses with scripting disabled, as
    the rewriter reads <noscript>."""
    tree = html5lib.parse(page, treebuilder="etree", useChardet=False, scripting=False)
    found: Counter[str] = Counter()
    for element in tree.iter():
        if element.tag in _LINKS:
            url = element.get("href")
        elif element.tag == f"{_XHTML}form" and (element.get("method") or "").lower() == "post":
            url = element.get("action")
        else:
            continue
        if url is not None and is_cross_domain(url, own):
            found[url] += 1
    return found


def lxml_links(page: bytes, own: str, encoding: str | None) -> Counter[str]:
    soup = BeautifulSoup(page, "lxml", from_encoding=encoding)
    found: Counter[str] = Counter()
    for element in soup.find_all(["a", "area"]):
        href = element.get("href")
        if isinstance(href, str) and is_cross_domain(href, own):
            found[href] += 1
    for form in soup.find_all("form"):
        action, method = form.get("action"), form.get("method")
        if isinstance(action, str) and isinstance(method, str) and method.lower() == "post":
            if is_cross_domain(action, own):
                found[action] += 1
    return found


def disagreement(rewriter: Counter[str], parser: Counter[str]) -> Disagreement:
    """What only the rewriter decorated, and what only the parser found. Both empty (or
    as listed) is the whole check: together they say the multisets are equal."""
    return rewriter - parser, parser - rewriter


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
def test_rewriter_is_reversible(path: Path, scanner_implementation: str) -> None:
    page = path.read_bytes()
    assert MARKER.encode() not in page
    run = rewritten(path, scanner_implementation)
    assert MARKER_IN_OUTPUT.sub(b"", run.output) == page
    assert run.counted == sum(run.decorated.values())


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
def test_rewriter_matches_html5lib(path: Path, scanner_implementation: str) -> None:
    page = path.read_bytes()
    run = rewritten(path, scanner_implementation)
    found = html5lib_links(page, own_host(page))
    expected = HTML5LIB_DISAGREES.get(path.name, NO_DISAGREEMENT)
    assert disagreement(run.decorated, found) == expected, f"gave up: {run.gave_up}"


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
def test_rewriter_matches_lxml(path: Path, scanner_implementation: str) -> None:
    page = path.read_bytes()
    run = rewritten(path, scanner_implementation)
    found = lxml_links(page, own_host(page), PARSER_ENCODING.get(path.name))
    expected = LXML_DISAGREES.get(path.name, NO_DISAGREEMENT)
    assert disagreement(run.decorated, found) == expected, f"gave up: {run.gave_up}"


def test_corpus_is_present() -> None:
    assert len(PAGES) >= 40, CORPUS
