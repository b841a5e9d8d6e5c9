"""Prometheus metrics of a worker: the one catalogue every exporter, alert rule and dashboard
panel names. Names are ``vigil_<noun>_<unit>``; labels are low-cardinality (agent, event type,
outcome, reason, model, topic, partition, group), never a subject or an event id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)

# -- events ---------------------------------------------------------------------------------
CONSUMED = Counter(
    "vigil_events_consumed_total",
    "Records fetched from an agent's topic and handed to its scheduler",
    ["agent", "topic"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "vigil_events_total",
    "Events processed, by agent, event type and outcome (ok, retried, dlq, duplicate, parked, "
    "blocked: a gate held the handler back, no attempt used)",
    ["agent", "type", "outcome"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "vigil_handler_duration_seconds",
    "Time spent in the user handler, per attempt",
    ["agent"],
    registry=REGISTRY,
    buckets=_LATENCY_BUCKETS,
)
EVENT_AGE_SECONDS = Histogram(
    "vigil_event_age_seconds",
    "Now minus the record's timestamp when its handler starts",
    ["agent"],
    registry=REGISTRY,
    buckets=_AGE_BUCKETS,
)
IN_FLIGHT = Gauge(
    "vigil_in_flight_events",
    "Records fetched but not finished (queued in a subject lane or running)",
    ["agent"],
    registry=REGISTRY,
)
PAUSED_PARTITIONS = Gauge(
    "vigil_paused_partitions",
    "Assigned partitions of an agent whose fetching is paused, by reason "
    "(in_flight, circuit_open, budget, downstream_lag)",
    ["agent", "reason"],
    registry=REGISTRY,
)
STALLED_PARTITIONS = Gauge(
    "vigil_stalled_partitions",
    "Assigned source partitions with records past their committed offset that made no progress "
    "for VIGIL_STALL_TIMEOUT, by agent",
    ["agent"],
    registry=REGISTRY,
)
PARTITION_RECOVERIES = Counter(
    "vigil_partition_recoveries_total",
    "Stalled partitions the liveness guard acted on, by agent and action (resumed: sought "
    "to the committed offset; released: a hold whose condition no longer held; probed: a "
    "caught-up partition re-read once from its committed offset)",
    ["agent", "action"],
    registry=REGISTRY,
)
DLQ_RECORDS = Counter(
    "vigil_dlq_records_total",
    "Records sent to a DLQ, by agent and reason",
    ["agent", "reason"],
    registry=REGISTRY,
)
PUBLISH_RETRIES = Counter(
    "vigil_publish_retries_total",
    "Produce attempts that failed and were retried (broker trouble), by agent",
    ["agent"],
    registry=REGISTRY,
)

# -- consumer lag ---------------------------------------------------------------------------
CONSUMER_LAG = Gauge(
    "vigil_consumer_lag_records",
    "High watermark minus committed offset, for the worker's own group and for the groups "
    "consuming the topics it emits to",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
LAG_SCRAPE_ERRORS = Counter(
    "vigil_lag_scrape_errors_total",
    "Lag refreshes that failed (broker unreachable); the gauges keep their last value",
    [],
    registry=REGISTRY,
)

# -- journal --------------------------------------------------------------------------------
JOURNAL_STEPS = Counter(
    "vigil_journal_steps_total",
    "Journaled steps (LLM calls, tool calls, ctx.step) by agent and outcome: ran, or replayed "
    "from the journal after a retry, redelivery or rebalance",
    ["agent", "outcome"],
    registry=REGISTRY,
)
JOURNAL_WRITE_SECONDS = Histogram(
    "vigil_journal_write_seconds",
    "Time to make one step's result durable (local write and changelog acknowledgement)",
    ["agent"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1),
)

# -- LLM ------------------------------------------------------------------------------------
LLM_REQUESTS = Counter(
    "vigil_llm_requests_total",
    "LLM calls by agent, model and outcome (ok, error, rejected)",
    ["agent", "model", "outcome"],
    registry=REGISTRY,
)
LLM_SECONDS = Histogram(
    "vigil_llm_request_duration_seconds",
    "Wall time of one LLM call including the Router's retries",
    ["agent", "model"],
    registry=REGISTRY,
    buckets=_LATENCY_BUCKETS,
)
LLM_TOKENS = Counter(
    "vigil_llm_tokens_total",
    "Tokens used, by agent, model and kind (prompt, completion)",
    ["agent", "model", "kind"],
    registry=REGISTRY,
)
LLM_COST = Counter(
    "vigil_llm_cost_usd_total",
    "Cost of LLM calls in US dollars as priced by litellm's cost map",
    ["agent", "model"],
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "vigil_llm_circuit_state",
    "LLM circuit breaker per agent: 0 closed, 1 half-open, 2 open",
    ["agent"],
    registry=REGISTRY,
)
BUDGET_REJECTIONS = Counter(
    "vigil_llm_budget_rejections_total",
    "LLM calls refused because a token budget was spent, by agent and scope (agent, entity)",
    ["agent", "scope"],
    registry=REGISTRY,
)

# -- worker ---------------------------------------------------------------------------------
WORKER_READY = Gauge(
    "vigil_worker_ready",
    "1 once the worker has its assignment and its tables are recovered, else 0",
    [],
    registry=REGISTRY,
)
