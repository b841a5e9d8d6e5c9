"""The provisioned Grafana dashboard: well-formed panels on the provisioned datasource, and every
query naming only series a worker really exports (streams/observability/metrics.py), so a renamed metric
fails here instead of drawing an empty panel."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import agents.llm  # noqa: F401 - registers vigil_llm_cost_per_event_usd
import streams.adapter.restore
import streams.observability.startup
import streams.sinks.metrics
import streams.sources.gateway.metrics
import streams.sources.metrics  # noqa: F401 - every module that registers into the shared registry
from streams.observability import metrics
from tests.promql import exported_series, metric_names, selectors, variable_query_expr

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops/grafana/dashboards/vigil.json"
DATASOURCES = ROOT / "ops/grafana/provisioning/datasources/prometheus.yml"
PROMETHEUS_OWN = {"up": frozenset({"job", "instance"})}  # written by Prometheus, not the worker
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

Dashboard = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Dashboard:
    data: Dashboard = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    return str(source["uid"])


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    return exported_series(metrics.REGISTRY) | PROMETHEUS_OWN


def expressions(dashboard: Dashboard) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query template variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r} target {target.get('refId')}", target.get("expr", "")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield f"variable {var['name']!r}", variable_query_expr(var["query"])


def unknown_metrics(dashboard: Dashboard, exported: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    """Where -> metric names the worker does not export."""
    out: dict[str, set[str]] = {}
    for where, expr in expressions(dashboard):
        if unknown := metric_names(expr) - exported.keys():
            out[where] = unknown
    return out


def test_dashboard_is_a_current_grafana_model(dashboard: Dashboard) -> None:
    assert dashboard["schemaVersion"] >= 39  # Grafana 11+
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["panels"]


def test_every_panel_is_well_formed_and_uses_the_provisioned_datasource(
    dashboard: Dashboard, datasource_uid: str
) -> None:
    ids = [p.get("id") for p in dashboard["panels"]]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {ids}"
    for panel in dashboard["panels"]:
        title = panel.get("title")
        assert isinstance(title, str) and title.strip(), f"panel {panel['id']} has no title"
        grid = panel.get("gridPos", {})
        assert {"h", "w", "x", "y"} <= grid.keys(), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, title
        assert panel.get("datasource", {}).get("uid") == datasource_uid, title
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no target"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), title
        for target in targets:
            assert target.get("datasource", {}).get("uid") == datasource_uid, title
            assert target.get("expr", "").strip(), title


def test_panels_do_not_overlap(dashboard: Dashboard) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_query_names_only_metrics_the_worker_exports(
    dashboard: Dashboard, exported: dict[str, frozenset[str]]
) -> None:
    for where, expr in expressions(dashboard):
        assert metric_names(expr), f"{where} selects no metric: {expr!r}"
    assert unknown_metrics(dashboard, exported) == {}


def test_every_matcher_uses_a_label_the_metric_has(
    dashboard: Dashboard, exported: dict[str, frozenset[str]]
) -> None:
    for where, expr in expressions(dashboard):
        for sel in selectors(expr):
            extra = sel.labels - exported.get(sel.name, frozenset()) - TARGET_LABELS
            assert not extra, f"{where}: {sel.name} has no label {sorted(extra)}"


@pytest.mark.parametrize("where", ["panel", "variable"])
def test_a_renamed_metric_is_caught(
    dashboard: Dashboard, exported: dict[str, frozenset[str]], where: str
) -> None:
    broken = copy.deepcopy(dashboard)
    if where == "panel":
        target = broken["panels"][0]["targets"][0]
        name = sorted(metric_names(target["expr"]))[0]
        target["expr"] = target["expr"].replace(name, name + "_typo")
    else:
        var = broken["templating"]["list"][0]
        name = sorted(metric_names(variable_query_expr(var["query"])))[0]
        var["query"]["query"] = var["query"]["query"].replace(name, name + "_typo")
    assert {name + "_typo"} in unknown_metrics(broken, exported).values()


def test_every_catalogue_metric_is_on_the_dashboard(dashboard: Dashboard) -> None:
    used = set().union(*(metric_names(expr) for _, expr in expressions(dashboard)))
    catalogue = exported_series(metrics.REGISTRY)
    for family in metrics.REGISTRY.collect():
        suffixes = ("", "_total", "_bucket", "_sum", "_count")
        samples = {n for n in catalogue if n.startswith(family.name) and n[len(family.name) :] in suffixes}
        assert samples & used, f"{family.name} is exported but on no panel"


def test_template_variables_agent_and_group_are_defined_and_used(
    dashboard: Dashboard, datasource_uid: str
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"agent", "group"} <= variables.keys()
    exprs = [expr for where, expr in expressions(dashboard) if where.startswith("panel")]
    for name in ("agent", "group"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == datasource_uid
        assert any(re.search(rf"\${name}\b|\$\{{{name}\}}", e) for e in exprs), f"${name} is used nowhere"


def test_circuit_state_panel_maps_the_catalogue_values(dashboard: Dashboard) -> None:
    """The value mappings say what streams/observability/metrics.py documents (0 closed, 1 half-open, 2 open)."""
    (family,) = [f for f in metrics.REGISTRY.collect() if f.name == "vigil_llm_circuit_state"]
    documented = dict(re.findall(r"(\d+) ([a-z-]+)", family.documentation))
    assert set(documented.values()) == {"closed", "half-open", "open"}
    panels = [
        p
        for p in dashboard["panels"]
        if any("vigil_llm_circuit_state" in metric_names(t["expr"]) for t in p["targets"])
    ]
    assert panels
    for panel in panels:
        (mapping,) = [m for m in panel["fieldConfig"]["defaults"]["mappings"] if m["type"] == "value"]
        assert {k: v["text"] for k, v in mapping["options"].items()} == documented
