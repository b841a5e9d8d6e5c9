"""The PromQL name extractor the dashboard and alert tests rely on: if it dropped names, those
tests would pass on anything, so its edge cases are pinned here."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tests.promql import Selector, exported_series, metric_names, selectors, variable_query_expr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("up == 0", {"up"}),
        (
            'sum by (agent, outcome) (rate(vigil_events_total{agent=~"$agent"}[$__rate_interval]))',
            {"vigil_events_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le, agent) (rate(vigil_event_age_seconds_bucket[5m])))",
            {"vigil_event_age_seconds_bucket"},
        ),
        # trailing grouping, on/ignoring and group_left with labels, without
        (
            "sum(rate(a_total[5m])) by (agent) / ignoring(reason) group_left(model) sum without (reason) (b)",
            {"a_total", "b"},
        ),
        ("x and on(agent) y unless z or w", {"x", "y", "z", "w"}),
        # subquery, offset, bool, numbers in exponent form, Inf/NaN
        (
            'max_over_time(g{agent="x"}[1h:5m] offset 1d) > bool 3e2 + Inf * NaN - 0x1f',
            {"g"},
        ),
        # strings with braces, parentheses and $ in label_replace; count_values' label string
        ('label_replace(foo, "dst", "$1", "src", "(.*){2}")', {"foo"}),
        ('count_values("value", vigil_llm_circuit_state)', {"vigil_llm_circuit_state"}),
        # label names and values that look like keywords or metrics stay out
        ('foo{by="on", le="sum(bar)", outcome!~"x|y"}', {"foo"}),
        # the name given as a matcher; a comment after the expression
        ('{__name__="vigil_worker_ready", job="vigil"} # not_a_metric{x="1"}', {"vigil_worker_ready"}),
        # Grafana variables in ranges, and as scalars
        ("topk($k, rate(x[${__range}])) * $factor", {"x"}),
        ("vector(1) + time()", set()),
        ("sum by (agent)\n  (\n    rate(multi_line_total [5m])\n  )", {"multi_line_total"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selectors_keep_the_labels_their_matchers_constrain() -> None:
    found = selectors('rate(a{agent=~"$agent", outcome="ok"}[1m]) / on(agent) b{__name__="b", job="j"}')
    assert found == [Selector("a", frozenset({"agent", "outcome"})), Selector("b", frozenset({"job"}))]


def test_a_selector_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="without a metric name"):
        selectors('sum({job="vigil"})')


@pytest.mark.parametrize(
    ("query", "expr"),
    [
        ("label_values(vigil_events_total, agent)", "vigil_events_total"),
        ({"query": 'label_values(m{job="a,b"}, group)', "refId": "X"}, 'm{job="a,b"}'),
        ("label_values(agent)", ""),
        ("query_result(topk(3, x))", "topk(3, x)"),
        ("sum(y)", "sum(y)"),
    ],
)
def test_variable_query_expr(query: object, expr: str) -> None:
    assert variable_query_expr(query) == expr


def test_exported_series_names_every_sample_even_before_a_child_exists() -> None:
    registry = CollectorRegistry()
    Counter("c_things_total", "h", ["agent"], registry=registry)
    Histogram("h_seconds", "h", ["agent"], registry=registry, buckets=(1.0,))
    Gauge("g_plain", "h", registry=registry).set(1)

    series = exported_series(registry)

    assert series == {
        "c_things_total": frozenset({"agent"}),
        "c_things_created": frozenset({"agent"}),
        "h_seconds_bucket": frozenset({"agent", "le"}),
        "h_seconds_sum": frozenset({"agent"}),
        "h_seconds_count": frozenset({"agent"}),
        "h_seconds_created": frozenset({"agent"}),
        "g_plain": frozenset(),
    }
