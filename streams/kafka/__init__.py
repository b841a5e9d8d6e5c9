"""Plain aiokafka helpers (no faust): clients with bounded starts, topic creation, producing
and reading back, and the DLQ tooling (``streams.kafka.dlq_admin``)."""

from streams.kafka.client import (
    START_TIMEOUT,
    admin,
    broker_ready,
    create_topics,
    end_offsets,
    list_topics,
    produce,
    producer,
    read_topics,
)

__all__ = [
    "START_TIMEOUT",
    "admin",
    "broker_ready",
    "create_topics",
    "end_offsets",
    "list_topics",
    "produce",
    "producer",
    "read_topics",
]
