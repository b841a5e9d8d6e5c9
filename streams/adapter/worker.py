"""Binds agent specs to a Faust app and runs it as a worker process.

Faust acks a record when an agent raises and when its task is cancelled (the ack sits in a
``finally`` around the ``yield`` of ``Stream.__aiter__``), so Vigil turns Faust's acks off for
its streams. Each agent's stream only feeds a ``KeyOrderedScheduler``; a record counts as
finished (and its offset becomes committable, see ``streams.adapter.consumer``) only after
``Dispatcher.handle`` made its outcome durable. Values are consumed as raw bytes so decoding errors stay inside Vigil's handling
(Faust acks first and raises after on a value it cannot deserialize).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
import faust.streams as faust_streams
from faust.types import EventT, StreamT

from streams import kafka
from streams.adapter import idle, observability, recovery, transactions
from streams.adapter.app import VigilApp, create_app
from streams.adapter.consumer import VigilConsumer
from streams.adapter.transactional_effects import TransactionalEffects
from streams.core import dlq_dedup, topics
from streams.core.agent import AgentSpec, Runtime
from streams.core.backpressure import PAUSE_REASONS, AgentGates, Gate, GateProvider, HysteresisGate
from streams.core.codec import EncodedRecord
from streams.core.dispatcher import Dispatcher
from streams.core.errors import ConfigError
from streams.core.offsets import OffsetTracker
from streams.core.records import ConsumedRecord
from streams.core.scheduler import KeyOrderedScheduler
from streams.core.settings import Settings
from streams.core.state import StateStore
from streams.observability import metrics

log = logging.getLogger(__name__)


class FaustPublisher:
    """Produces through the app's producer (Faust flushes it before every offset commit)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def publish(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        producer = self._app.producer
        pending = [await producer.send(topic, r.key, r.value, None, None, r.headers) for r in records]
        await asyncio.gather(*pending)


def record_of(event: EventT[Any]) -> ConsumedRecord:
    m = event.message
    headers = list(m.headers.items()) if isinstance(m.headers, Mapping) else list(m.headers or ())
    return ConsumedRecord(m.topic, m.partition, m.offset, m.key, m.value, headers, int(m.timestamp * 1000))


class VigilWorker(faust.Worker):
    """The first SIGTERM/SIGINT stops gracefully (stop fetching, drain in-flight records up to
    ``drain_timeout``, commit, close tables); a second one exits at once. Exiting without a
    commit loses nothing: unfinished records are simply redelivered."""

    def _schedule_shutdown(self, signal: Any) -> None:
        if self._signal_stop_time:
            log.warning("second %s: exiting now without draining", signal.name)
            os._exit(128 + int(signal))
        super()._schedule_shutdown(signal)


def topics_for(settings: Settings, specs: Iterable[AgentSpec]) -> set[str]:
    """Every topic the selected agents read or write, prefixed (changelogs are Faust's)."""
    names: set[str] = set()
    for spec in specs:
        names.add(spec.topic)
        names.add(spec.dlq_topic)
        names.update(topics.for_type(model.event_type).name for model in spec.emits)
    return {settings.topic(n) for n in names}


def bind_agent(
    app: VigilApp, spec: AgentSpec, settings: Settings, resources: Mapping[str, Any]
) -> Dispatcher:
    topic_name = settings.topic(spec.topic)
    source = app.topic(
        topic_name,
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,  # tombstones reach the dispatcher and are dead-lettered, not dropped
    )
    table = app.Table(
        spec.table_name,
        partitions=settings.partitions,
        key_type=str,  # faust derives the json serializer from the types
        options={"driver": "rocksdict"},
    )
    store = StateStore(table, spec.state, settings.dedup_ids_per_entity)
    marks_table = app.Table(
        dlq_dedup.table_name(spec.name),
        partitions=settings.partitions,
        key_type=str,
        value_type=bytes,  # faust stores bytes values raw
        options={"driver": "rocksdict"},
    )
    effects = None
    if settings.processing_guarantee == "exactly_once":
        effects = TransactionalEffects(lambda: app.vigil_consumer.vigil_transactions, table, marks_table)
    marks = dlq_dedup.DeadLetterMarks(marks_table)
    dispatcher = Dispatcher(spec, settings, store, FaustPublisher(app), resources, effects, marks)

    def hold() -> None:
        log.info("agent %s: %d records buffered, pausing %s", spec.name, scheduler.buffered, topic_name)
        app.vigil_consumer.hold(topic_name, "in_flight")

    def release() -> None:
        log.info("agent %s: buffer drained to %d, resuming %s", spec.name, scheduler.buffered, topic_name)
        app.vigil_consumer.release(topic_name, "in_flight")

    gates = AgentGates(gates_for(app, spec, settings, resources))

    def on_gates(blocking: set[str], cleared: set[str]) -> None:
        for reason in sorted(blocking):
            log.warning("agent %s: %s, pausing %s", spec.name, reason, topic_name)
            app.vigil_consumer.hold(topic_name, reason)
        for reason in sorted(cleared):
            log.info("agent %s: %s cleared, resuming %s", spec.name, reason, topic_name)
            app.vigil_consumer.release(topic_name, reason)

    event_age = metrics.EVENT_AGE_SECONDS.labels(spec.name)

    async def process(event: EventT[Any]) -> None:
        # Tables find the partition of a write through Faust's current event, which is
        # task-local and only set inside the stream's own iteration.
        faust_streams._current_event.set(weakref.ref(event))  # noqa: SLF001
        event_age.observe(max(0.0, time.time() - event.message.timestamp))
        await dispatcher.handle(record_of(event))
        event.ack()

    scheduler: KeyOrderedScheduler[EventT[Any]] = KeyOrderedScheduler(
        process,
        OffsetTracker(topic_name),
        concurrency=spec.concurrency or settings.concurrency,
        max_buffered=spec.max_buffered or settings.max_buffered,
        on_pause=hold,
        on_resume=release,
        admit=gates.admit if gates.gates else None,
        name=f"vigil.{spec.name}",
    )
    app.add_drainable(scheduler)
    app.watched_sources.append(recovery.WatchedSource(spec.name, topic_name, scheduler, gates))
    export_backpressure(app, spec.name, topic_name, scheduler)
    consumed = metrics.CONSUMED.labels(spec.name, topic_name)

    async def feed(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            m = event.message
            if scheduler.submit(m.tp, m.offset, m.key, event):
                consumed.inc()

    async def consume(stream: StreamT[Any]) -> None:
        stream.enable_acks = False
        scheduler.start()
        feeding = asyncio.ensure_future(feed(stream))
        failing = asyncio.ensure_future(scheduler.wait_failed())
        watching = asyncio.ensure_future(gates.watch(on_gates)) if gates.gates else None
        try:
            done, _ = await asyncio.wait({feeding, failing}, return_when=asyncio.FIRST_COMPLETED)
            if failing in done:
                raise failing.result()  # a bug, not a bad record: crash, nothing is committed past it
            feeding.result()
        finally:
            feeding.cancel()
            failing.cancel()
            if watching is not None:
                watching.cancel()
            await scheduler.stop()

    consume.__name__ = consume.__qualname__ = f"vigil_{spec.name}"
    app.agent(source, name=f"vigil.{spec.name}")(consume)
    return dispatcher


def gates_for(app: VigilApp, spec: AgentSpec, settings: Settings, resources: Mapping[str, Any]) -> list[Gate]:
    """The resources' gates for this agent (LLM circuit, token budget) and, with
    ``VIGIL_DOWNSTREAM_LAG_HIGH`` set, one per topic it emits to: blocked while the lag of the
    groups consuming that topic is above the high mark, until it falls below the low mark."""
    gates = [g for r in resources.values() if isinstance(r, GateProvider) for g in r.gates_for(spec.name)]
    if settings.downstream_lag_high > 0:
        low = settings.downstream_lag_low or settings.downstream_lag_high // 2
        if low >= settings.downstream_lag_high:
            raise ConfigError("VIGIL_DOWNSTREAM_LAG_LOW must be below VIGIL_DOWNSTREAM_LAG_HIGH")
        for model in spec.emits:
            emitted = settings.topic(topics.for_type(model.event_type).name)
            gates.append(
                HysteresisGate(
                    "downstream_lag",
                    high=settings.downstream_lag_high,
                    low=low,
                    read=functools.partial(app.downstream_lag, emitted),
                )
            )
    return gates


def export_backpressure(app: VigilApp, agent: str, topic: str, scheduler: KeyOrderedScheduler[Any]) -> None:
    """In-flight records and paused partitions per reason, read when Prometheus scrapes."""
    metrics.IN_FLIGHT.labels(agent).set_function(lambda: scheduler.buffered)

    def paused(reason: str) -> float:
        consumer = app._consumer  # noqa: SLF001
        if not isinstance(consumer, VigilConsumer) or reason not in consumer.held_reasons(topic):
            return 0.0
        try:
            return float(sum(1 for tp in consumer.assignment() if tp.topic == topic))
        except Exception:  # noqa: BLE001 - not started yet: nothing is assigned
            return 0.0

    for reason in PAUSE_REASONS:
        metrics.PAUSED_PARTITIONS.labels(agent, reason).set_function(functools.partial(paused, reason))


def build_app(settings: Settings, specs: Sequence[AgentSpec], resources: Mapping[str, Any]) -> VigilApp:
    app = create_app(settings)
    for spec in specs:
        bind_agent(app, spec, settings, resources)
    return app


def run_worker(
    settings: Settings,
    runtime: Runtime,
    agent_names: Sequence[str] | None = None,
    exit_when_idle: float | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, or with ``exit_when_idle`` until the backlog is handled and
    committed and no record came for that many seconds (``streams.adapter.idle``; exit 0).
    Creates missing topics first, so a fresh broker just works."""
    specs = runtime.select(agent_names)
    if not specs:
        raise ConfigError("no agents to run: import a module that declares agents (see agents/)")
    created = asyncio.run(kafka.create_topics(settings, topics_for(settings, specs)))
    if created:
        log.info("created topics: %s", ", ".join(created))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = build_app(settings, specs, runtime.build_resources(settings))
    if settings.processing_guarantee == "exactly_once":
        transactions.prepare_local_state(app.conf.tabledir)
    obs = observability.install(app, settings, specs)
    recovery.install(app, stall_after=settings.stall_timeout, interval=min(5.0, settings.stall_timeout / 3))
    guard = recovery.install_guard(app, stall_after=settings.stall_timeout)
    obs.readiness.checks.append(guard.stalled_reason)
    app.downstream_lag_reader = obs.lag.downstream_lag
    worker = VigilWorker(app, loglevel=settings.log_level.upper(), quiet=True, loop=loop)
    if exit_when_idle is not None:
        idle.install(app, worker, exit_when_idle)
    # The worker leaves these loggers at DEBUG: every record would build log records that the
    # handlers then drop (about 5% of a no-op agent's CPU, measured by ops/bench).
    level = logging.getLevelName(settings.log_level.upper())
    for name in ("faust", "mode"):
        logging.getLogger(name).setLevel(level)
    worker.execute_from_commandline()
