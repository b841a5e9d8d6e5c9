"""Just enough PromQL reading for tests: which metric names (and matcher labels) an expression
selects, and which sample names a prometheus_client registry exports. Dashboards and alert
rules are checked against the worker's real catalogue with these, so a renamed metric fails a
test instead of drawing an empty panel."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

# Identifiers that are never metric names. Functions and aggregations need no list: they are
# always followed by "(", a metric name never is.
KEYWORDS = frozenset(
    {"and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)

_STR = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
# One left-to-right pass tells strings, comments and matcher blocks apart (a block's values are
# strings that may hold braces; a string outside a block may hold anything).
_TOKENS = re.compile(rf"(?P<block>\{{(?:{_STR}|[^{{}}\"'`])*\}})|(?P<string>{_STR})|(?P<comment>#[^\n]*)")
_GRAFANA_VAR = re.compile(r"\$\{[^{}]*\}|\$\w+")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_RANGE = re.compile(r"\[[^\[\]]*\]")
# A name not glued to a word character, dot, colon or $ before it (so 5m, 1e3 are no names),
# then what follows: "(" makes it a function, a block placeholder makes it a selector.
_SCAN = re.compile(
    r"(?<![\w.$:])(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\s*(?P<call>\()|\s*\{(?P<nblock>\d+)\})?"
    r"|\{(?P<block>\d+)\}"
)
_MATCHER = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*({_STR})")

# Grafana's Prometheus variable queries wrap PromQL in helpers.
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<body>.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<body>.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Selector:
    """One vector selector: the metric name and the label names its matchers constrain."""

    name: str
    labels: frozenset[str]


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression, in order.

    ``{__name__="x", ...}`` counts as metric ``x``; a regex ``__name__`` matcher is returned
    verbatim, so it never equals a real name (dashboards should write names out)."""
    blocks: list[dict[str, str]] = []

    def hide(m: re.Match[str]) -> str:
        if m.group("block") is not None:
            body = m.group("block")[1:-1]
            blocks.append({lm.group(1): lm.group(2)[1:-1] for lm in _MATCHER.finditer(body)})
            return f"{{{len(blocks) - 1}}}"
        return ' "" ' if m.group("string") is not None else " "

    text = _GRAFANA_VAR.sub("0", expr)
    text = _TOKENS.sub(hide, text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)

    found: list[Selector] = []
    for m in _SCAN.finditer(text):
        name, index = m.group("name"), m.group("nblock") or m.group("block")
        if name is not None and (m.group("call") or name.lower() in KEYWORDS):
            continue
        matchers = dict(blocks[int(index)]) if index is not None else {}
        explicit = matchers.pop("__name__", None)
        if name is None:
            if explicit is None:
                raise ValueError(f"selector without a metric name in {expr!r}")
            name = explicit
        found.append(Selector(name, frozenset(matchers)))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, numbers,
    durations, strings and Grafana variables excluded)."""
    return {s.name for s in selectors(expr)}


def variable_query_expr(query: object) -> str:
    """The PromQL inside a Grafana Prometheus template-variable query (string or object form):
    ``label_values(expr, label)`` gives ``expr``, ``label_values(label)`` gives nothing."""
    text = str(query.get("query", "")) if isinstance(query, dict) else str(query)
    if m := _LABEL_VALUES.match(text):
        head, sep, _label = m.group("body").rpartition(",")
        return head if sep else ""
    if m := _QUERY_RESULT.match(text):
        return m.group("body")
    return text


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_series(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every sample the registry's metrics can export.

    Names come from walking ``registry.collect()``: each family's type gives its sample names
    (prometheus_client: counters _total/_created, histograms _bucket/_sum/_count/_created), since a
    labelled metric emits no sample before its first child exists; samples it does emit are
    added as they are. Label names are read from the collectors behind the names (a private
    map of prometheus_client: families without samples do not carry them)."""
    collectors = registry._names_to_collectors
    out: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        collector = collectors.get(family.name) or collectors.get(family.name + "_total")
        labels = frozenset(getattr(collector, "_labelnames", ()))
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        for sample in family.samples:
            out.setdefault(sample.name, frozenset(sample.labels))
    return out
