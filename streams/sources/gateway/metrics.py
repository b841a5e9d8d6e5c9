"""Metrics of the webhook gateway, on the shared ``REGISTRY``. ``route`` is ``github``,
``slack``, ``generic:<name>`` for a configured source or ``generic`` for an unknown one (a
caller cannot mint label values); ``outcome`` is a fixed set (``OUTCOMES``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.observability.metrics import REGISTRY

OUTCOMES = (
    "accepted",  # 202: the broker acknowledged the record
    "duplicate",  # 202: this id was acknowledged moments ago (a sender's retry), not re-sent
    "answered",  # 200: ping, url_verification, ssl_check: nothing to enqueue
    "missing_signature",
    "bad_signature",
    "stale",
    "future",
    "not_configured",  # the route has no secret: it refuses everything (fail closed)
    "missing_header",
    "malformed",
    "too_large",
    "timeout",  # 408: the body did not arrive within VIGIL_GATEWAY_READ_TIMEOUT
    "unknown_source",
    "unavailable",  # 503: Kafka did not acknowledge in time or is unreachable
    "overloaded",  # 503: the in-flight limit was reached
)

REQUESTS = Counter(
    "vigil_webhook_requests_total",
    "Webhook requests by route and outcome (accepted: durably in Kafka)",
    ["route", "outcome"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "vigil_webhook_request_duration_seconds",
    "Time from the request's arrival to the answer, by route (includes the broker's ack)",
    ["route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BYTES = Histogram(
    "vigil_webhook_request_bytes",
    "Body bytes read per webhook request, by route (an oversize body stops at the limit)",
    ["route"],
    registry=REGISTRY,
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
IN_FLIGHT = Gauge(
    "vigil_webhook_in_flight_requests",
    "Webhook requests being handled now (capped by VIGIL_GATEWAY_MAX_IN_FLIGHT)",
    registry=REGISTRY,
)
KAFKA_READY = Gauge(
    "vigil_webhook_kafka_ready",
    "1 while the gateway's producer is connected to Kafka, else 0",
    registry=REGISTRY,
)
