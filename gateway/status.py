"""The admin status page: what the metrics say, as one HTML page a person can read.

Pure: :func:`snapshot` reads the collected metric families (the same numbers ``/metrics``
exposes, summed over the workers when there are several) and :func:`render` turns the snapshot
into a self-contained page (inline CSS, no script, no external resource). Every string that
comes from the config, the store or the metrics is HTML-escaped.

Counts run from the gateway's start (counters are cumulative); rates and history belong to
Prometheus and the shipped dashboard (``deploy/grafana/``).

A site in ``observe`` mode gets a second row under its own, read from the
``gateway_observed_*`` twins of the identity counters: what identity would have done there
(nothing was changed). The row stays after the site goes active, for comparison, until the
gateway restarts. Totals and the cards count what was done only.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, Protocol

# The seed guide's alert threshold: more than 10 % of cross-domain arrivals without identity.
FRAGMENTATION_ALERT = 0.10
UNROUTED = "-"
_OBSERVED = "gateway_observed_"


class Sample(Protocol):
    """One sample of a collected metric family (prometheus_client's ``Sample``)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def value(self) -> float: ...


class Family(Protocol):
    """A collected metric family (prometheus_client's ``Metric``)."""

    @property
    def samples(self) -> Sequence[Sample]: ...


@dataclass(frozen=True)
class ConfigVersion:
    """Which config is serving: its file, a digest of the file as loaded, and when."""

    path: str
    # SHA-256 of the file's bytes, None if it could not be read (a config built in memory).
    sha256: str | None
    loaded_at: float


@dataclass
class SiteCounts:
    """One site's numbers since start."""

    host: str
    # The site's mode (sites[].mode); "observe" also marks a row of observed counts.
    mode: str = "active"
    requests: float = 0
    links_decorated: float = 0
    carried: float = 0
    missing: float = 0
    sources: dict[str, float] = field(default_factory=dict)
    rewritten: float = 0
    bootstrap: float = 0
    skipped: dict[str, float] = field(default_factory=dict)
    # What identity would have done on the site while it was observed (None: never was).
    observed: SiteCounts | None = None

    @property
    def counted(self) -> bool:
        """Whether any identity count is non-zero."""
        return bool(
            self.links_decorated
            or self.arrivals
            or self.rewritten
            or self.bootstrap
            or any(self.sources.values())
            or any(self.skipped.values())
        )

    @property
    def arrivals(self) -> float:
        return self.carried + self.missing

    @property
    def fragmentation(self) -> float | None:
        """Share of arrivals from sibling sites that came without identity (None: none came)."""
        return self.missing / self.arrivals if self.arrivals else None


@dataclass(frozen=True)
class Snapshot:
    sites: list[SiteCounts]
    unrouted_requests: float
    config: ConfigVersion
    # The token store's health report (kind, url, state, error) and its circuit breaker.
    store: Mapping[str, Any]
    circuit_open: bool
    # 1/0 and Unix time, None where this process has no reload gauges.
    reload_success: float | None
    reload_success_time: float | None
    reloads: dict[str, float]
    build: Mapping[str, str]
    pid: int
    workers: int
    now: float

    @property
    def total(self) -> SiteCounts:
        total = SiteCounts("all sites")
        for site in self.sites:
            total.requests += site.requests
            total.links_decorated += site.links_decorated
            total.carried += site.carried
            total.missing += site.missing
            total.rewritten += site.rewritten
            total.bootstrap += site.bootstrap
            for source, n in site.sources.items():
                total.sources[source] = total.sources.get(source, 0) + n
            for reason, n in site.skipped.items():
                total.skipped[reason] = total.skipped.get(reason, 0) + n
        return total


def snapshot(
    families: Iterable[Family],
    *,
    sites: Sequence[str],
    config: ConfigVersion,
    store: Mapping[str, Any],
    build: Mapping[str, str],
    pid: int,
    workers: int,
    now: float | None = None,
    modes: Mapping[str, str] | None = None,
) -> Snapshot:
    """Read the gateway's metric families into per-site counts.

    ``sites``: the configured site hosts (patterns), in config order; each gets a row even
    before its first request, and counts for a host no longer configured are left out.
    ``modes``: each site's mode (default active).
    """
    modes = modes or {}
    rows = {host: SiteCounts(host, mode=modes.get(host, "active")) for host in sites}
    unrouted = 0.0
    reloads: dict[str, float] = defaultdict(float)
    circuit = False
    success = success_time = None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            row = rows.get(labels.get("site", ""))
            if name.startswith(_OBSERVED):
                if row is not None:
                    if row.observed is None:
                        row.observed = SiteCounts(row.host, mode="observe")
                    _count(row.observed, "gateway_" + name[len(_OBSERVED) :], labels, value)
            elif name == "gateway_requests_total":
                if labels.get("site") == UNROUTED:
                    unrouted += value
                elif row is not None:
                    row.requests += value
            elif row is None:
                if name == "gateway_store_circuit_open" and value >= 1:
                    circuit = True
                elif name == "gateway_config_last_reload_success":
                    success = value
                elif name == "gateway_config_last_reload_success_timestamp_seconds":
                    success_time = value
                elif name == "gateway_config_reloads_total":
                    reloads[labels.get("result", "")] += value
            else:
                _count(row, name, labels, value)
    for row in rows.values():
        # An observed row is shown while the site is observed, and after, if it counted.
        if row.observed is not None and row.mode != "observe" and not row.observed.counted:
            row.observed = None
    return Snapshot(
        sites=list(rows.values()),
        unrouted_requests=unrouted,
        config=config,
        store=store,
        circuit_open=circuit,
        reload_success=success,
        reload_success_time=success_time,
        reloads=dict(reloads),
        build=build,
        pid=pid,
        workers=workers,
        now=time.time() if now is None else now,
    )


def _count(row: SiteCounts, name: str, labels: Mapping[str, str], value: float) -> None:
    """Add one sample of a per-site identity counter to ``row``."""
    if name == "gateway_links_decorated_total":
        row.links_decorated += value
    elif name == "gateway_cross_domain_arrivals_total":
        if labels.get("identity") == "carried":
            row.carried += value
        else:
            row.missing += value
    elif name == "gateway_identity_source_total":
        source = labels.get("source", "")
        row.sources[source] = row.sources.get(source, 0) + value
    elif name == "gateway_html_rewritten_total":
        row.rewritten += value
    elif name == "gateway_html_skipped_total":
        reason = labels.get("reason", "")
        row.skipped[reason] = row.skipped.get(reason, 0) + value
    elif name == "gateway_identity_actions_total" and labels.get("action") == "bootstrap":
        row.bootstrap += value


# --- Rendering --------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{int(value):,}"


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f} %"


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _when(at: float, now: float) -> str:
    stamp = _stamp(at)
    ago = max(0, int(now - at))
    if ago < 120:
        rel = f"{ago} s ago"
    elif ago < 7200:
        rel = f"{ago // 60} min ago"
    elif ago < 172800:
        rel = f"{ago // 3600} h ago"
    else:
        rel = f"{ago // 86400} days ago"
    return f"{stamp} ({rel})"


def _frag_cell(site: SiteCounts) -> str:
    share = site.fragmentation
    if share is None:
        return '<td class="num muted">–</td>'
    cls = "bad" if share > FRAGMENTATION_ALERT else "good"
    return f'<td class="num"><span class="pill {cls}">{_pct(share)}</span></td>'


def _skipped_cell(skipped: Mapping[str, float]) -> str:
    parts = [
        f'<span class="reason">{escape(reason)}</span>&nbsp;{_n(n)}'
        for reason, n in sorted(skipped.items())
        if n
    ]
    if not parts:
        return '<td class="muted">none</td>'
    return f'<td class="warn">{"<br>".join(parts)}</td>'


def _restored(sources: dict[str, float]) -> float:
    """Ids taken from the URL: a page's hand-off (``url``) or a link minted for an app."""
    return sources.get("url", 0) + sources.get("app", 0)


def _row(site: SiteCounts, cls: str = "", *, observed: bool = False) -> str:
    s = site.sources
    attr = f' class="{cls}"' if cls else ""
    if observed:
        head = f"{escape(site.host)} (observed: would have)"
        mode = '<td class="muted"></td>'
        requests = '<td class="num muted">–</td>'
    else:
        head = escape(site.host)
        mode = "<td></td>"
        if cls != "total":
            mode = f'<td class="mode {escape(site.mode)}">{escape(site.mode)}</td>'
        requests = f'<td class="num">{_n(site.requests)}</td>'
    return (
        f"<tr{attr}>"
        f'<th scope="row">{head}</th>'
        f"{mode}{requests}"
        f'<td class="num">{_n(site.links_decorated)}</td>'
        f'<td class="num">{_n(site.carried)}</td>'
        f'<td class="num">{_n(site.missing)}</td>'
        f"{_frag_cell(site)}"
        f'<td class="num">{_n(_restored(s))}</td>'
        f'<td class="num">{_n(s.get("cookie", 0))}</td>'
        f'<td class="num">{_n(s.get("minted", 0))}</td>'
        f'<td class="num">{_n(s.get("rejected", 0))}</td>'
        f'<td class="num">{_n(site.rewritten)}</td>'
        f'<td class="num">{_n(site.bootstrap)}</td>'
        f"{_skipped_cell(site.skipped)}"
        "</tr>"
    )


def _card(label: str, value: str, note: str, cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="label">{label}</div>'
        f'<div class="value">{value}</div><div class="note">{note}</div></div>'
    )


_CSS = """
:root { color-scheme: light; --ink: #1d2430; --muted: #6b7380; --line: #dde2ea;
  --good: #1a7f37; --good-bg: #dafbe1; --bad: #b42318; --bad-bg: #fee4e2;
  --warn: #8a5a00; --head: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 28px 32px; font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif;
  color: var(--ink); background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.sub { color: var(--muted); margin: 0 0 20px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; min-width: 190px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
.card .value { font-size: 26px; font-weight: 650; margin: 2px 0; }
.card .note { color: var(--muted); font-size: 12px; }
.card.good .value { color: var(--good); } .card.bad .value { color: var(--bad); }
.card.warn .value { color: var(--warn); }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 7px 10px; text-align: left;
  vertical-align: top; }
thead th { background: var(--head); font-size: 12px; font-weight: 600; }
thead tr.group th { text-align: center; border-bottom: 2px solid var(--line); }
tbody th { font-weight: 600; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 13px; white-space: nowrap; }
tr.total th, tr.total td { border-top: 2px solid var(--ink); font-weight: 650; }
tr.observed th, tr.observed td { font-style: italic; background: #fafbfc; }
td.mode.observe { color: var(--warn); font-weight: 600; }
td.mode.off { color: var(--muted); }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.warn { color: var(--warn); }
.reason { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; }
.pill.good { color: var(--good); background: var(--good-bg); }
.pill.bad { color: var(--bad); background: var(--bad-bg); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.cols { display: flex; flex-wrap: wrap; gap: 40px; }
footer { margin-top: 28px; color: var(--muted); font-size: 12px; }
"""


def render(snap: Snapshot) -> str:
    """The status page as a complete HTML document."""
    total = snap.total
    share = total.fragmentation
    frag_cls = "" if share is None else ("bad" if share > FRAGMENTATION_ALERT else "good")
    store_state = str(snap.store.get("state", "unknown"))
    store_ok = store_state == "up" and not snap.circuit_open
    store_value = "circuit open" if snap.circuit_open else store_state
    skipped = sum(total.skipped.values())
    observing = [site.host for site in snap.sites if site.mode == "observe"]
    cards = "".join(
        [
            _card(
                "Fragmentation",
                _pct(share),
                f"{_n(total.missing)} of {_n(total.arrivals)} arrivals from sibling sites "
                "came without identity",
                frag_cls,
            ),
            _card(
                "Hand-offs carried",
                _n(total.carried),
                f"{_n(total.links_decorated)} links and redirects decorated",
            ),
            _card(
                "Restored / minted",
                f"{_n(_restored(total.sources))} / {_n(total.sources.get('minted', 0))}",
                "ids taken from the URL / new visitors",
            ),
            _card(
                "HTML skipped",
                _n(skipped),
                f"of {_n(skipped + total.rewritten)} pages to rewrite",
                "bad" if skipped else "good",
            ),
            *(
                [
                    _card(
                        "Observing",
                        _n(len(observing)),
                        f"{escape(', '.join(observing))}: their rows marked “would have” count "
                        "what identity would have done; nothing was changed",
                        "warn",
                    )
                ]
                if observing
                else []
            ),
            _card(
                "Token store",
                escape(store_value),
                escape(str(snap.store.get("kind", ""))),
                "good" if store_ok else "bad",
            ),
        ]
    )
    rows = "".join(
        _row(site) + (_row(site.observed, "observed", observed=True) if site.observed else "")
        for site in snap.sites
    )
    if len(snap.sites) > 1:
        rows += _row(total, "total")
    cfg = snap.config
    digest = f"<code>{cfg.sha256[:12]}</code>" if cfg.sha256 else "(not read from a file)"
    if snap.reload_success is None:
        reload_text = "not recorded"
    elif snap.reload_success >= 1:
        reload_text = '<span class="pill good">ok</span>'
    else:
        reload_text = '<span class="pill bad">refused</span> (the previous config is serving)'
    if snap.reload_success_time:
        reload_text += f", last success {escape(_when(snap.reload_success_time, snap.now))}"
    reload_counts = ", ".join(f"{escape(k)} {_n(v)}" for k, v in sorted(snap.reloads.items()))
    error = str(snap.store.get("error", ""))
    store_rows = (
        f"<dt>kind</dt><dd>{escape(str(snap.store.get('kind', '')))}</dd>"
        f"<dt>address</dt><dd><code>{escape(str(snap.store.get('url', '')))}</code></dd>"
        f"<dt>state</dt><dd>{escape(store_state)}"
        + (f": {escape(error)}" if error else "")
        + "</dd>"
        f"<dt>circuit breaker</dt><dd>{'open' if snap.circuit_open else 'closed'}</dd>"
    )
    build = snap.build
    workers = (
        f"{snap.workers} workers, counts summed over all of them"
        if snap.workers > 1
        else "1 process"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Identity gateway status</title><style>{_CSS}</style></head>
<body>
<h1>Identity gateway status</h1>
<p class="sub">Counts since start ({escape(workers)}); answered by pid {snap.pid} at
{_stamp(snap.now)}.</p>
<div class="cards">{cards}</div>
<h2>Sites</h2>
<table>
<thead>
<tr class="group"><th></th><th></th><th></th><th colspan="4">Hand-offs: links out, arrivals in</th>
<th colspan="4">Where the visitor's id came from</th><th colspan="3">HTML pages</th></tr>
<tr><th>Site</th><th>Mode</th><th class="num">Requests</th><th class="num">Decorated links</th>
<th class="num">Arrivals carried</th><th class="num">Arrivals missing</th>
<th class="num">Fragmentation</th><th class="num">Restored (URL)</th>
<th class="num">Cookie</th><th class="num">Minted</th><th class="num">Refused</th>
<th class="num">Rewritten</th><th class="num">Bootstrap</th><th>Skipped, by reason</th></tr>
</thead>
<tbody>{rows}</tbody>
</table>
<p class="muted">Requests for no configured site (421): {_n(snap.unrouted_requests)}.
Mode: <code>active</code> (identity on), <code>observe</code> (counted, nothing changed: the
row under it says what identity would have done), <code>off</code> (a plain proxy).
Fragmentation: arrivals from another configured domain without identity, whether or not the
visitor had a cookie here, over all such arrivals (alert above
{FRAGMENTATION_ALERT * 100:.0f} %).</p>
<div class="cols">
<section><h2>Config</h2><dl>
<dt>file</dt><dd><code>{escape(cfg.path)}</code></dd>
<dt>SHA-256</dt><dd>{digest}</dd>
<dt>loaded</dt><dd>{escape(_when(cfg.loaded_at, snap.now))}</dd>
<dt>last load</dt><dd>{reload_text}</dd>
<dt>reloads</dt><dd>{reload_counts or "none"}</dd>
</dl></section>
<section><h2>Token store</h2><dl>{store_rows}</dl></section>
<section><h2>Build</h2><dl>
<dt>version</dt><dd>{escape(build.get("version", ""))}</dd>
<dt>Python</dt><dd>{escape(build.get("python", ""))}</dd>
<dt>rewriter</dt><dd>{escape(build.get("implementation", ""))}</dd>
</dl></section>
</div>
<footer>Rates and history: Prometheus (<code>/metrics</code>) and the dashboard in
<code>deploy/grafana/</code>.</footer>
</body></html>
"""
