"""The shipped alerts and dashboard (deploy/prometheus/, deploy/grafana/): the rules pass
``promtool check rules`` and their unit tests (``promtool test rules``), every alert is tested
both firing and not firing, the dashboard's queries are valid PromQL, and every metric that a
rule or a panel names is one the gateway really exports.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it). Without it these
tests are skipped, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, StartGateway

RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "gateway-rules.yml"
RULE_TESTS = RULES_DIR / "gateway-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "gateway-dashboard.json"

# Grafana's variables, replaced by values of the right kind so that promtool can parse.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$site": ".+",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def run(*args: str, cwd: Path = RULES_DIR) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


# --- PromQL: the metric names an expression reads --------------------------------------------

AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()
)
FUNCTIONS = frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_count histogram_sum
    histogram_fraction histogram_quantile holt_winters hour idelta increase irate label_join
    label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort
    sort_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
    sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
    last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan
    tanh deg pi rad""".split()
)
KEYWORDS = frozenset("and or unless bool offset inf nan".split())
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords or label names (in braces and grouping clauses). A call of a
    function this list does not know fails, rather than being taken for a metric."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    # Grouping written after the aggregation's arguments: sum(x) by (site).
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS | AGGREGATIONS, f"unknown PromQL function {word} in {expr}"
        elif word.lower() not in KEYWORDS:
            names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (site) (rate(a_total{x="y",site=~"$site"}[5m])) / sum(b)', {"a_total", "b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))", {"c_bucket"}),
        ("time() - max(d_seconds) > 1e3 and on (i) e offset 5m", {"d_seconds", "e"}),
        ('sum(x) by (site) or vector(0) unless y{a="sum(z)"}', {"x", "y"}),
        ("label_replace(up, 'a', '$1', 'b', '(.*)') == bool 1", {"up"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, query) for every panel target and every templating query."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else query["query"]
            yield f"variable {variable['name']}", text


def grafana_to_promql(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    assert "$" not in query, f"an unknown Grafana variable in {query}"
    return query


# --- What the gateway exports -----------------------------------------------------------------


@pytest.fixture
async def exported(start_gateway: StartGateway) -> set[str]:
    """Every sample name the gateway's /metrics can carry (with the suffixes each type adds),
    from a running gateway's exposition, families without samples yet included."""
    gw = await start_gateway(
        """\
        sites:
          - {host: www.example.com, upstream: "http://127.0.0.1:9"}
          - {host: checkout.example-pay.com, upstream: "http://127.0.0.1:9"}
        cross_domains: [www.example.com, checkout.example-pay.com]
        """
    )
    async with gw.session.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    exported: set[str],
) -> None:
    used: dict[str, set[str]] = {}
    for where, expr in [*rule_exprs(), *dashboard_queries()]:
        if expr.startswith("label_values("):
            metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr)
            assert metric is not None, expr
            names = {metric.group(1)}
        else:
            names = metric_names(expr)
        assert names, f"{where} reads no metric: {expr}"
        for name in names:
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(places) for name, places in used.items() if name not in exported}
    assert not unknown, f"not exported by the gateway: {unknown}"
    # What the operations issue asked the shipped artefacts to watch.
    for name in (
        "gateway_cross_domain_arrivals_total",
        "gateway_identity_source_total",
        "gateway_identity_refused_total",
        "gateway_rewrite_failures_total",
        "gateway_html_skipped_total",
        "gateway_store_errors_total",
        "gateway_store_circuit_open",
        "gateway_config_last_reload_success",
        "gateway_request_duration_seconds_bucket",
        "gateway_build_info",
    ):
        assert name in used, name


# --- promtool ---------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    output = run("check", "rules", RULES.name)
    assert f"SUCCESS: {len(list(rule_exprs()))} rules found" in output


def test_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in run("test", "rules", RULE_TESTS.name)


def test_every_alert_is_tested_firing_and_silent() -> None:
    alerts = {name for name, _ in rule_exprs()}
    tests: dict[str, dict[str, int]] = {name: {"firing": 0, "silent": 0} for name in alerts}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            kind = "firing" if check.get("exp_alerts") else "silent"
            tests[check["alertname"]][kind] += 1
    untested = {name: seen for name, seen in tests.items() if not all(seen.values())}
    assert not untested, f"alerts not tested both ways: {untested}"
    assert tests.keys() == alerts


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query, as a recording rule of a scratch rule file."""
    rules: list[dict[str, Any]] = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (where, expr) in enumerate(dashboard_queries())
        if not expr.startswith("label_values(")
    ]
    assert len(rules) >= 20
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run("check", "rules", str(path), cwd=tmp_path)


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel.get("description"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert names == ["datasource", "site"]
