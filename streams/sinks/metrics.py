"""Metrics of the reply sinks, on the shared ``REGISTRY``. Labels stay low-cardinality: ``sink``
(github, slack), ``call`` (post, lookup), an outcome; never a channel, repository or event id."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from streams.observability.metrics import REGISTRY

SINK_REQUESTS = Counter(
    "vigil_sink_requests_total",
    "HTTP requests of a sink by call and outcome: ok, rate_limited (429 or a GitHub rate limit: the "
    "sink pauses), rejected (other 4xx or a Slack error: dead-lettered), failed (5xx, timeout, "
    "connection error: retried)",
    ["sink", "call", "outcome"],
    registry=REGISTRY,
)
SINK_REQUEST_SECONDS = Histogram(
    "vigil_sink_request_duration_seconds",
    "Duration of a sink's HTTP requests",
    ["sink", "call"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SINK_POSTS = Counter(
    "vigil_sink_posts_total",
    "Events a sink delivered: posted (a new post), already_posted (an earlier attempt's post was "
    "found by the lookup, nothing posted again)",
    ["sink", "outcome"],
    registry=REGISTRY,
)
