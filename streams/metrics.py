"""Prometheus metrics of the runtime. Names ``vigil_<noun>_<unit>``; labels low-cardinality
(never a subject or an event id)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "vigil_events_total",
    "Events handled, by agent, event type and outcome (ok, duplicate, dlq)",
    ["agent", "type", "outcome"],
    registry=REGISTRY,
)
DLQ_RECORDS = Counter(
    "vigil_dlq_records_total",
    "Records sent to a DLQ, by agent and reason",
    ["agent", "reason"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "vigil_handler_duration_seconds",
    "Time spent in the user handler",
    ["agent"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PUBLISH_RETRIES = Counter(
    "vigil_publish_retries_total",
    "Produce attempts that failed and were retried (broker trouble), by agent",
    ["agent"],
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Expose /metrics on 127.0.0.1:port (0 disables)."""
    if port:
        start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
