"""Does the cost of rewriting grow with the number of configured targets?

The real rewrite pipeline (``HtmlRewriter`` with the gateway's ``LinkDecorator``) runs over
every corpus page under two configurations:

* ``3 patterns``: three ``*.`` targets (``*.com``, ``*.org``, ``*.net``);
* ``all hosts``: every host an absolute URL of the corpus leads to (about 500 for the vendored
  corpus, about 1,400 for the shared one), each listed as a target of its own.

The same links are decorated under both: the parameters are given only to hosts the three
patterns match (a ``LinkDecorator`` params function, as the gateway's own per-strategy params
are), so every link is looked up in both configurations and the only difference is the size of
what it is looked up in. The outputs are checked to be byte for byte the same. The acceptance
target is ``all hosts`` reaching at least 0.9 of the ``3 patterns`` throughput.

For comparison, ``all hosts, linear scan`` runs the same configuration with the scan that
matching used to be (every pattern in order, the first that matches wins).

    .venv/bin/python bench/matching.py            # about 20 s
    .venv/bin/python bench/matching.py --quick    # about 5 s

Configurations run in alternation, in short rounds timed in CPU time, and each reports its
median round, so that a slow second on the shared machine does not land on one configuration
only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway import links
from gateway.hosts import Patterns, hostname, matches
from gateway.html import HtmlRewriter
from gateway.links import LinkDecorator

CORPUS = Path(
    os.environ.get("GATEWAY_CORPUS")
    or Path(__file__).resolve().parent.parent / "tests" / "corpus" / "pages"
)
WILDCARDS = ("*.com", "*.org", "*.net")
PARAMS = (("ajs_aid", "4a6f-bench"),)
TARGET_RATIO = 0.9
CHUNK = 64 * 1024
# An absolute http(s) URL anywhere, or a scheme-relative one in an href.
_ABSOLUTE = re.compile(rb"https?://([A-Za-z0-9.-]+)", re.I)
_LINKED = re.compile(rb"(?:https?:|\bhref\s*=\s*[\"']?\s*)//([A-Za-z0-9.-]+)", re.I)

Page = tuple[bytes, str]  # (bytes, the page's own host)


def link_hosts(pages: Sequence[bytes]) -> list[str]:
    """Every host an absolute http(s) URL of ``pages`` (or a scheme-relative link) leads to,
    in normal form, sorted."""
    found = {hostname(m.decode("ascii")) for page in pages for m in _LINKED.findall(page)}
    return sorted(h for h in found if h)


def own_host(page: bytes) -> str:
    """The host most of a page's absolute URLs point to: its own, left undecorated."""
    counts = Counter(m.decode("ascii").lower() for m in _ABSOLUTE.findall(page))
    return counts.most_common(1)[0][0] if counts else "page.invalid"


def same_links(pattern: str, host: str) -> Sequence[tuple[str, str]] | None:
    """Params only for the hosts the three patterns match, whatever matched them."""
    return PARAMS if any(matches(host, w) for w in WILDCARDS) else None


def rewrite(page: Page, targets: tuple[str, ...]) -> bytes:
    data, own = page
    policy = LinkDecorator(own, f"https://{own}/", targets, same_links)
    rewriter = HtmlRewriter(policy)
    out = [rewriter.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rewriter.close())
    return b"".join(out)


def linear_first_match(name: str, patterns: Patterns) -> str | None:
    """The scan matching was before the index (tests/test_hosts.py keeps it as a reference)."""
    for text, exact, suffix in patterns.patterns:
        if name == exact or (suffix is not None and name.endswith(suffix)):
            return text
    return None


@contextmanager
def linear_scan() -> Iterator[None]:
    indexed = links.first_match
    links.first_match = linear_first_match
    links._no_target.cache_clear()
    try:
        yield
    finally:
        links.first_match = indexed
        links._no_target.cache_clear()


def one_round(run: Callable[[Page], bytes], pages: list[Page], budget: float) -> float:
    """MB/s of input over whole passes of the corpus, for at least ``budget`` seconds of this
    process's CPU time (not wall-clock time: on the shared machine, time spent waiting for a
    core would be counted against whichever configuration happened to be running)."""
    done = 0
    start = time.process_time()
    while True:
        for page in pages:
            run(page)
            done += len(page[0])
        elapsed = time.process_time() - start
        if elapsed >= budget:
            return done / elapsed / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 5 s in all")
    args = parser.parse_args(argv)
    rounds, budget = (5, 0.3) if args.quick else (15, 0.4)
    raw = [path.read_bytes() for path in sorted(CORPUS.glob("*.html"))]
    if not raw:
        print(f"no corpus pages in {CORPUS}", file=sys.stderr)
        return 2
    pages = [(data, own_host(data)) for data in raw]
    every = tuple(link_hosts(raw))
    configs: dict[str, tuple[tuple[str, ...], bool]] = {
        "3 patterns": (WILDCARDS, False),
        "all hosts": (every, False),
        "all hosts, linear scan": (every, True),
    }
    outputs = {}
    for name, (targets, linear) in configs.items():
        if linear:
            with linear_scan():
                outputs[name] = [rewrite(page, targets) for page in pages]
        else:
            outputs[name] = [rewrite(page, targets) for page in pages]
    decorated = sum(out.count(b"ajs_aid=") for out in outputs["3 patterns"])
    for name, out in outputs.items():
        if out != outputs["3 patterns"]:
            print(f"error: {name} rewrote the corpus differently", file=sys.stderr)
            return 1
    size = sum(len(data) for data in raw)
    print(
        f"corpus {CORPUS}: {len(pages)} pages, {size / 1e6:.1f} MB, {len(every)} link hosts, "
        f"{decorated} links decorated per pass (the same under every configuration)"
    )
    speeds: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (targets, linear) in configs.items():

            def run(page: Page, targets: tuple[str, ...] = targets) -> bytes:
                return rewrite(page, targets)

            if linear:
                with linear_scan():
                    speeds[name].append(one_round(run, pages, budget))
            else:
                speeds[name].append(one_round(run, pages, budget))
    median = {name: statistics.median(s) for name, s in speeds.items()}
    base = median["3 patterns"]
    print(f"{'configuration':<24}{'targets':>8}{'MB/s':>9}{'ratio':>8}")
    for name, (targets, _) in configs.items():
        print(f"{name:<24}{len(targets):>8}{median[name]:>9.1f}{median[name] / base:>8.2f}")
    ratio = median["all hosts"] / base
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(
        f"[{verdict}] with all {len(every)} link hosts configured the rewrite runs at "
        f"{ratio:.2f} of the 3-pattern throughput (target >= {TARGET_RATIO})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
