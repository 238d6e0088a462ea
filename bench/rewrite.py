"""Throughput of the streaming rewriter: against parsers, and as the gateway runs it.

Tools: every tool does the same job on every corpus page: decorate each absolute http(s)
<a href>/<area href> whose host is not the page's own (the host most of its absolute links
point to) by appending ajs_aid=..., and produce the page bytes. Each tool runs over the
whole corpus repeatedly for a fixed time budget; the table shows MB/s of input and the
rewriter's speed-up (the rewriter with the scanner this process runs, see below).

Pipeline: what the gateway does for each HTML response, on every corpus page: the real
link policy (links.LinkDecorator with three wildcard targets, the registrable domains the
corpus links most from other sites, replacing the identity parameters), the analytics.js
bootstrap rendered and injected, the page fed in 64 KiB chunks. It runs once with each
scanner, compiled (gateway/html/_speedups.c) and pure Python (GATEWAY_NO_EXTENSIONS=1), each
in a process of its own; with --baseline DIR, also with the gateway package in DIR (e.g. the
commit before the compiled scanner: git archive <commit> gateway | tar -x -C DIR). Figures
are the best of repeated passes over the whole corpus (CPU time: on a shared machine the
least disturbed pass is the closest to the cost), with two references: the rewriter alone
(no policy, no snippet) and the policy alone (LinkDecorator.decorate on the same links).

    .venv/bin/python bench/rewrite.py                       # ~5 s per tool, ~30 s in all
    .venv/bin/python bench/rewrite.py --quick               # ~10 s in all
    .venv/bin/python bench/rewrite.py --baseline /tmp/base  # and the tree in /tmp/base
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import lxml.html
from bs4 import BeautifulSoup

import gateway.html
from gateway.bootstrap import render_bootstrap
from gateway.html import HtmlRewriter
from gateway.links import LinkDecorator
from gateway.params import AID_PARAM, IDENTITY_PARAMS

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


# -- The pipeline -------------------------------------------------------------------

# The three registrable domains the corpus links most from other sites' pages, as wildcard
# targets: ~180 links decorated per pass, while most links take the policy's other paths
# (relative, same site, other hosts), as on a real site.
TARGETS = ("*.qq.com", "*.aktualne.cz", "*.nytimes.com")
VISITOR = "4a6f0c1e-9b2d-4c1e-8f00-bench0000001"


def pipeline_policy(own: str) -> LinkDecorator:
    return LinkDecorator(
        own, f"https://{own}/", TARGETS, [(AID_PARAM, VISITOR)], replace=IDENTITY_PARAMS
    )


def run_pipeline(page: Page) -> bytes:
    """One response as the gateway rewrites it (identity_flow: policy, bootstrap, rewriter)."""
    data, own = page
    inject = render_bootstrap(
        write_key="benchkey",
        cdn_url="https://cdn.example/analytics.js",
        anonymous_id=VISITOR,
        user_id=None,
        targets=TARGETS,
        own_host=own,
        nonce=None,
    )
    rewriter = HtmlRewriter(pipeline_policy(own), inject=inject)
    out = [rewriter.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rewriter.close())
    return b"".join(out)


def run_rewriter_alone(page: Page) -> bytes:
    data = page[0]
    rewriter = HtmlRewriter(None)
    out = [rewriter.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rewriter.close())
    return b"".join(out)


class _Recorder:
    def __init__(self) -> None:
        self.links: list[tuple[str, str | None]] = []

    def decorate(self, url: str, base: str | None) -> str | None:
        self.links.append((url, base))
        return None

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return None


def best_pass(corpus_pass: Callable[[], object], budget: float) -> float:
    """The least CPU time one pass took, passes repeated for ``budget`` seconds (at least 3)."""
    corpus_pass()  # warm-up: regex compilation, caches
    best = float("inf")
    spent = 0.0
    runs = 0
    while spent < budget or runs < 3:
        start = time.process_time()
        corpus_pass()
        took = time.process_time() - start
        best = min(best, took)
        spent += took
        runs += 1
    return best


def implementation() -> str:
    """The scanner this process runs (a tree from before the compiled one: "python")."""
    return str(getattr(gateway.html, "IMPLEMENTATION", "python"))


def measure_pipeline(pages: list[Page], budget: float) -> dict[str, object]:
    """This process's pipeline figures (run in a child per implementation, see main)."""
    size = sum(len(data) for data, _ in pages)
    recorded = []
    for data, own in pages:
        recorder = _Recorder()
        rewriter = HtmlRewriter(recorder)
        rewriter.feed(data)
        rewriter.close()
        recorded.append((own, recorder.links))

    def policy_alone() -> None:
        for own, links in recorded:
            decorate = pipeline_policy(own).decorate
            for url, base in links:
                decorate(url, base)

    passes = {
        "pipeline": lambda: [run_pipeline(page) for page in pages],
        "rewriter": lambda: [run_rewriter_alone(page) for page in pages],
        "policy": policy_alone,
    }
    outputs = [run_pipeline(page) for page in pages]
    result: dict[str, object] = {
        "implementation": implementation(),
        "package": str(Path(gateway.html.__file__).parent),
        # The same pages must come out byte for byte the same whichever scanner runs.
        "output_sha256": hashlib.sha256(b"".join(outputs)).hexdigest(),
        "decorated": sum(out.count(AID_PARAM.encode() + b"=") for out in outputs),
        "links": sum(len(links) for _, links in recorded),
    }
    for name, corpus_pass in passes.items():
        seconds = best_pass(corpus_pass, budget)
        result[name] = size / seconds / 1e6
        result[f"{name}_ms"] = seconds * 1e3
    return result


def pipeline_in_child(env: dict[str, str], quick: bool) -> dict[str, object]:
    """measure_pipeline in a fresh interpreter (the scanner is chosen at import)."""
    args = [sys.executable, __file__, "--pipeline-json"] + (["--quick"] if quick else [])
    done = subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def print_pipeline(rows: dict[str, dict[str, object]], size: float) -> None:
    first = next(iter(rows.values()))
    print(
        f"\npipeline (LinkDecorator, {len(TARGETS)} wildcard targets, bootstrap): "
        f"{size / 1e6:.1f} MB, {first['links']} links, {first['decorated']} decorated per pass"
    )
    print(f"{'scanner':<24}{'MB/s':>9}{'ms/pass':>9}{'rewriter alone':>16}{'policy alone':>14}")
    for name, row in rows.items():
        print(
            f"{name:<24}{row['pipeline']:>9.1f}{row['pipeline_ms']:>9.2f}"
            f"{row['rewriter']:>11.1f} MB/s{row['policy']:>9.1f} MB/s"
        )
    for name, row in rows.items():
        print(f"{name}: {row['implementation']} scanner, gateway.html from {row['package']}")
    digests = {row["output_sha256"] for row in rows.values()}
    print(
        "output: identical bytes from every row"
        if len(digests) == 1
        else f"WARNING: the rows' outputs differ: {digests}"
    )
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ratio = float(rows[a]["pipeline"]) / float(rows[b]["pipeline"])  # type: ignore[arg-type]
            print(f"pipeline {a}/{b}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 10 s in all")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the pipeline with the gateway package in DIR (another source tree)",
    )
    parser.add_argument("--pipeline-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    budget = 1.5 if args.quick else 5.0
    pages = [(path.read_bytes(), "") for path in sorted(CORPUS.glob("*.html"))]
    pages = [(data, own_host(data)) for data, _ in pages]
    if args.pipeline_json:
        print(json.dumps(measure_pipeline(pages, budget / 2)))
        return
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
    print(f"(the rewriter above runs the {implementation()} scanner)")

    rows = {
        "compiled": pipeline_in_child({"GATEWAY_NO_EXTENSIONS": ""}, args.quick),
        "python": pipeline_in_child({"GATEWAY_NO_EXTENSIONS": "1"}, args.quick),
    }
    if rows["compiled"]["implementation"] != "compiled":
        print("\nnote: the compiled scanner is not built here; its row ran the pure-Python one")
    if args.baseline:
        baseline = Path(args.baseline).resolve()
        if not (baseline / "gateway" / "html").is_dir():
            raise SystemExit(f"--baseline {baseline}: no gateway/html package there")
        path = os.pathsep.join([str(baseline), os.environ.get("PYTHONPATH", "")])
        rows[f"baseline ({baseline.name})"] = pipeline_in_child(
            {"PYTHONPATH": path, "GATEWAY_NO_EXTENSIONS": ""}, args.quick
        )
    print_pipeline(rows, size)


if __name__ == "__main__":
    main()
