"""Metrics of the sources (``vigil source ...``), on the shared ``REGISTRY``. Labels stay
low-cardinality: ``source`` is ``<kind>:<name>`` (``files:inbox``, ``schedules:schedules``),
never a path, a schedule slot or an event id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from streams.observability.metrics import REGISTRY

SOURCE_EVENTS = Counter(
    "vigil_source_events_total",
    "Events a source produced, by outcome: sent (acknowledged by the broker), failed (the send "
    "failed; the source stops and resumes from its checkpoint)",
    ["source", "outcome"],
    registry=REGISTRY,
)
SOURCE_LAG = Gauge(
    "vigil_source_lag",
    "How far a source is behind its input, in the unit its kind names: files_pending (files seen "
    "but not yet emitted), slots_behind (due schedule slots not yet emitted), replication_bytes",
    ["source", "kind"],
    registry=REGISTRY,
)
SOURCE_CHECKPOINTS = Counter(
    "vigil_source_checkpoints_total",
    "Checkpoint writes acknowledged by the broker (each covers every event sent before it)",
    ["source"],
    registry=REGISTRY,
)
