"""The demo's own pages (pure: values in, HTML out): the start page a person opens first, and
the results page of the Segment stand-in, which lists what the tracking API received grouped
by anonymousId, one verdict per walk."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .results import Summary, hue


@dataclass(frozen=True)
class Guide:
    """What the start page links to and says about the set-up."""

    with_gateway: str  # the shop through the gateway
    without_gateway: str  # the shop without it
    results: str  # the results page
    shop_host: str
    checkout_host: str
    library: str  # which analytics.js the stand-in serves, in a sentence


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1f2937;background:#f3f4f6}
main{max-width:72em;margin:0 auto;padding:1.5em 1.5em 3em}
h1{margin:.2em 0 .4em}
p{line-height:1.5}
a{color:#1d4ed8}
.lead{font-size:1.1em;max-width:48em}
.walks{display:grid;grid-template-columns:1fr 1fr;gap:1.2em;margin:1.2em 0}
@media (max-width:50em){.walks{grid-template-columns:1fr}}
.card{background:#fff;border-radius:.6em;padding:1em 1.3em;box-shadow:0 1px 3px #0002}
.card h2{margin:.2em 0 .5em;font-size:1.3em}
.card ol{padding-left:1.3em;line-height:1.7}
.go{display:inline-block;padding:.55em 1.1em;background:#2563eb;color:#fff;border-radius:.3em;
  text-decoration:none;font-weight:600}
.expect{margin-top:.8em;color:#4b5563}
.verdict{font-size:1.35em;font-weight:700;padding:.5em .8em;border-radius:.4em;margin:.3em 0}
.verdict.ok{background:#dcfce7;color:#14532d}
.verdict.split{background:#fef3c7;color:#78350f}
.verdict.waiting{background:#e5e7eb;color:#374151}
.badge{display:inline-block;min-width:6.5em;padding:0 .6em;border-radius:1em;color:#fff;
  font:600 15px/1.8 ui-monospace,monospace;text-align:center}
.visitor{margin:.9em 0 .3em}
.visitor code{color:#6b7280;font-size:.85em}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #e5e7eb}
th{color:#6b7280;font-weight:500}
.domain{font-weight:600}
.muted{color:#6b7280}
footer{margin-top:2em;color:#6b7280;font-size:.9em;max-width:60em}
button{font:inherit;padding:.3em .8em}
"""


def _doc(title: str, body: str, script: str = "") -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
{body}
</main>
{script}
</body>
</html>
"""


def _a(href: str) -> str:
    return html.escape(href, quote=True)


def start_page(guide: Guide) -> str:
    """The first page: what the demo shows and what to click, in two walks."""
    shop, checkout = html.escape(guide.shop_host), html.escape(guide.checkout_host)
    body = f"""<h1>Identity gateway demo</h1>
<p class="lead">One shopper, two websites: a shop at <b>{shop}</b> and its checkout at
<b>{checkout}</b>, two different domains. Segment's analytics.js remembers a visitor by an
<code>anonymousId</code> kept in a cookie, and a cookie cannot cross domains. Walk the same
journey twice and compare what Segment receives.</p>
<div class="walks">
<section class="card" id="walk-without">
<h2>1. Without the gateway</h2>
<p>The two sites as they are usually set up: Segment's snippet pasted into every page.</p>
<ol>
<li><a class="go" id="open-without" href="{_a(guide.without_gateway)}">Open the shop without
the gateway</a></li>
<li>Click <b>Go to checkout</b>.</li>
<li>Click <b>See what Segment received</b> in the dark strip at the top.</li>
</ol>
<p class="expect">Expect <b>2 visitors</b>: the checkout cannot read the shop's cookie, so its
analytics.js starts a new visitor.</p>
</section>
<section class="card" id="walk-with">
<h2>2. Through the gateway</h2>
<p>The same two sites with no analytics code at all. The gateway in front of them adds
analytics.js and carries the <code>anonymousId</code> across the link.</p>
<ol>
<li><a class="go" id="open-with" href="{_a(guide.with_gateway)}">Open the shop through the
gateway</a></li>
<li>Click <b>Go to checkout</b>.</li>
<li>Click <b>See what Segment received</b> in the dark strip at the top.</li>
</ol>
<p class="expect">Expect <b>1 visitor across 2 domains</b>.</p>
</section>
</div>
<p>Every page shows the visitor's <code>anonymousId</code> as a coloured badge in the dark strip
at the top: the colour comes from the id, so the same colour on both domains is the same
visitor. <a id="to-results" href="{_a(guide.results)}">See what Segment received</a> at any
time; it updates by itself.</p>
<footer>
<p>Everything runs on this machine, on loopback: the sites, the gateway, and a stand-in for
Segment that records the events instead of sending them anywhere. {html.escape(guide.library)}
</p>
</footer>"""
    return _doc("Identity gateway demo", body)


def _time(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def badge(anonymous_id: str) -> str:
    """The visitor's badge: the first 8 characters of the id on a colour computed from it."""
    return (
        f'<span class="badge" style="background:hsl({hue(anonymous_id)},65%,38%)" '
        f'title="{_a(anonymous_id)}">{html.escape(anonymous_id[:8])}</span>'
    )


def _summary(summary: Summary) -> str:
    walk = summary.walk
    parts = [
        f'<section class="card" id="{walk.key}" data-visitors="{len(summary.visitors)}" '
        f'data-domains="{len(summary.hosts)}">',
        f"<h2>{html.escape(walk.title)}</h2>",
        f'<p class="verdict {summary.tone}">Visitors: {html.escape(summary.verdict)}</p>',
        f"<p>{html.escape(summary.explanation)}</p>",
    ]
    for visitor in summary.visitors:
        parts.append(
            f'<div class="visitor">{badge(visitor.anonymous_id)} '
            f"<code>anonymousId {html.escape(visitor.anonymous_id)}</code></div>"
        )
        rows = "".join(
            f"<tr><td>{_time(e.received)}</td><td>{html.escape(e.type)}</td>"
            f'<td class="domain">{html.escape(e.host)}</td><td>{html.escape(e.path)}</td></tr>'
            for e in visitor.events
        )
        parts.append(
            f"<table><tr><th>time</th><th>event</th><th>domain</th><th>page</th></tr>{rows}</table>"
        )
    parts.append("</section>")
    return "\n".join(parts)


# Re-renders the results in place when new events arrive, so the page can stay open in a tab
# while a person walks the journey in another.
_POLL = """<script>
setInterval(function () {
  fetch(location.pathname, {cache: "no-store"}).then(function (r) { return r.text(); })
    .then(function (text) {
      var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("results");
      var shown = document.getElementById("results");
      if (fresh && shown && fresh.innerHTML !== shown.innerHTML) shown.innerHTML = fresh.innerHTML;
    }).catch(function () {});
}, 1500);
</script>"""


def results_page(summaries: Sequence[Summary], home: str, events: int) -> str:
    """What the tracking API received, one card per walk, grouped by anonymousId."""
    cards = "\n".join(_summary(s) for s in summaries)
    body = f"""<h1>What Segment received</h1>
<p class="lead">Every event analytics.js sent to this Segment stand-in, grouped by
<code>anonymousId</code>. Segment counts one visitor per <code>anonymousId</code>.
<a href="{_a(home)}">Back to the demo start</a></p>
<div id="results">
<div class="walks">
{cards}
</div>
<p class="muted">{events} event{"" if events == 1 else "s"} received so far.</p>
</div>
<form method="post" action="reset"><button id="reset">Clear the events</button>
<span class="muted">Your browser keeps its cookies: open a private window to walk as a new
visitor.</span></form>"""
    return _doc("What Segment received", body, _POLL)
