"""Throughput of the streaming rewriter against parse-edit-serialize with real parsers.

Every tool does the same job on every corpus page: decorate each absolute http(s)
<a href>/<area href> whose host is not the page's own (the host most of its
absolute links point to) by appending ajs_aid=..., and produce the page bytes.
Each tool runs over the whole corpus repeatedly for a fixed time budget; the table
shows MB/s of input and the rewriter's speed-up.

    .venv/bin/python bench/rewrite.py            # ~5 s per tool
    .venv/bin/python bench/rewrite.py --quick    # ~5 s in all
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import lxml.html
from bs4 import BeautifulSoup

from gateway.html import HtmlRewriter

# The corpus vendored with the tests (tests/corpus/README.md); GATEWAY_CORPUS points at another.
CORPUS = Path(
    os.environ.get("GATEWAY_CORPUS")
    or Path(__file__).resolve().parent.parent / "tests" / "corpus" / "pages"
)
AID = "ajs_aid=4a6f-bench"
_HOST = re.compile(rb"https?://([A-Za-z0-9.-]+)")
CHUNK = 64 * 1024


def own_host(page: bytes) -> str:
    hosts = Counter(host.lower() for host in _HOST.findall(page))
    return hosts.most_common(1)[0][0].decode("ascii") if hosts else ""


# Scheme and host of an absolute http(s) URL (userinfo skipped). A regex rather than
# urllib.parse.urlsplit: the policy is shared by all tools, and a slow policy would
# only hide the differences between them.
_ABSOLUTE = re.compile(r"[\t\n\f\r ]*https?://(?:[^/?#@]*@)?([^/?#:]+)", re.IGNORECASE)


def decorated(url: str, own: str) -> str | None:
    """The shared policy: the new URL, or None for links we leave alone."""
    absolute = _ABSOLUTE.match(url)
    if absolute is None or absolute.group(1).lower() == own:
        return None
    base, hash_sign, fragment = url.partition("#")
    return base + ("&" if "?" in base else "?") + AID + hash_sign + fragment


class CrossDomainPolicy:
    def __init__(self, own: str) -> None:
        self.own = own

    def decorate(self, url: str, base: str | None) -> str | None:
        return decorated(url, self.own)

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return None


Page = tuple[bytes, str]


def run_rewriter(page: Page) -> bytes:
    data, own = page
    rewriter = HtmlRewriter(CrossDomainPolicy(own))
    out = [rewriter.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rewriter.close())
    return b"".join(out)


def run_bs4(page: Page) -> bytes:
    data, own = page
    soup = BeautifulSoup(data, "lxml")
    for element in soup.find_all(["a", "area"], href=True):
        new = decorated(element["href"], own)
        if new is not None:
            element["href"] = new
    return soup.encode()


def run_lxml(page: Page) -> bytes:
    data, own = page
    document = lxml.html.document_fromstring(data)
    for element in document.iter("a", "area"):
        href = element.get("href")
        if href is not None and (new := decorated(href, own)) is not None:
            element.set("href", new)
    result: bytes = lxml.html.tostring(document)
    return result


def throughput(tool: Callable[[Page], bytes], pages: list[Page], budget: float) -> float:
    """MB/s of input, cycling through the corpus until the time budget is spent
    (page by page, so slow tools need not finish a whole pass)."""
    done = 0
    start = time.perf_counter()
    while True:
        for page in pages:
            tool(page)
            done += len(page[0])
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                return done / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 5 s in all")
    args = parser.parse_args()
    budget = 1.5 if args.quick else 5.0
    pages = [(path.read_bytes(), "") for path in sorted(CORPUS.glob("*.html"))]
    pages = [(data, own_host(data)) for data, _ in pages]
    size = sum(len(data) for data, _ in pages)
    links = sum(run_rewriter(page).count(AID.encode()) for page in pages)
    print(f"corpus: {len(pages)} pages, {size / 1e6:.1f} MB, {links} links decorated per pass")
    tools = {"rewriter": run_rewriter, "bs4+lxml": run_bs4, "lxml.html": run_lxml}
    speeds = {name: throughput(tool, pages, budget) for name, tool in tools.items()}
    print(f"{'tool':<12}{'MB/s':>10}")
    for name, speed in speeds.items():
        print(f"{name:<12}{speed:>10.1f}")
    print(f"rewriter/bs4+lxml:  {speeds['rewriter'] / speeds['bs4+lxml']:.1f}x")
    print(f"rewriter/lxml.html: {speeds['rewriter'] / speeds['lxml.html']:.1f}x")


if __name__ == "__main__":
    main()
