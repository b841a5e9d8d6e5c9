"""Binds agent specs to a Faust app and runs it as a worker process.

Faust's per-record path (message, conductor, stream, event, ack) costs more than everything
Vigil does with a record, and acks a record when an agent raises or its task is cancelled. So
each agent's Faust agent only subscribes its topic (assignment, pauses, table recovery stay
Faust's), and the consumer hands the fetched records of that topic, batch by batch, straight
to the agent's ``KeyOrderedScheduler`` (``intake``). A record counts as finished (and its
offset becomes committable, see ``streams.adapter.consumer``) only after
``Dispatcher.handle_many`` made its outcome durable. Tables are read and written by partition
through ``streams.adapter.tables``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.types import TP, StreamT
from mode import Service

from streams import kafka
from streams.adapter import idle, observability, recovery, transactions
from streams.adapter.app import VigilApp, create_app
from streams.adapter.consumer import VigilConsumer
from streams.adapter.restore import install as install_bulk_restore
from streams.adapter.tables import FaustTable
from streams.adapter.transactional_effects import TransactionalEffects
from streams.core import dlq_dedup, topics
from streams.core.agent import AgentSpec, Runtime
from streams.core.backpressure import PAUSE_REASONS, AgentGates, Gate, GateProvider, HysteresisGate
from streams.core.codec import EncodedRecord
from streams.core.dispatcher import Dispatcher
from streams.core.errors import ConfigError
from streams.core.groups import agent_group
from streams.core.offsets import OffsetTracker
from streams.core.records import ConsumedRecord
from streams.core.scheduler import KeyOrderedScheduler
from streams.core.settings import Settings
from streams.core.state import ID_PREFIX, StateStore, expired_ids
from streams.observability import logs, metrics, startup

log = logging.getLogger(__name__)


class FaustPublisher:
    """Produces straight through the app's aiokafka producer (Faust's wrapper adds a sensor
    call per record; Faust still flushes this producer before every offset commit)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def publish(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        app = self._app
        if isinstance(app, VigilApp) and app.vigil_fail_stall_publishes > 0:
            app.vigil_fail_stall_publishes -= 1
            log.warning("failpoint: %d records for %s are never acknowledged", len(records), topic)
            await asyncio.Event().wait()
        send = kafka_producer(app).send
        pending = [await send(topic, r.value, key=r.key, headers=r.headers) for r in records]
        if len(pending) == 1:
            await pending[0]
        else:
            await asyncio.gather(*pending)


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer under the app's Faust producer (started with the app)."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]  # noqa: SLF001


class VigilWorker(faust.Worker):
    """The first SIGTERM/SIGINT stops gracefully (stop fetching, drain in-flight records up to
    ``drain_timeout``, commit, close tables); a second one exits at once. Exiting without a
    commit loses nothing: unfinished records are simply redelivered."""

    def _schedule_shutdown(self, signal: Any) -> None:
        if self._signal_stop_time:
            log.warning("second %s: exiting now without draining", signal.name)
            os._exit(128 + int(signal))
        super()._schedule_shutdown(signal)


class SiblingApps(Service):
    """The worker's apps other than its main one, started side by side with it: mode starts a
    service's dependencies one after the other and an app's start returns only once its group
    is joined and its tables are recovered, so N agents would start in N times one's time.
    A sibling whose start fails crashes the worker; they stop together, each draining its own
    schedulers and committing."""

    def __init__(self, apps: Sequence[VigilApp], **kwargs: Any) -> None:
        self.apps = list(apps)
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        for app in self.apps:
            self.add_future(self._start(app))  # cancelled if the worker stops first

    async def _start(self, app: VigilApp) -> None:
        try:
            await app.maybe_start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the worker must not run on without it
            log.error("the app of group %s failed to start: %r", app.vigil_group_id, exc)
            await self.crash(exc)

    async def on_stop(self) -> None:
        await asyncio.gather(*(app.stop() for app in self.apps), return_exceptions=True)


def topics_for(settings: Settings, specs: Iterable[AgentSpec]) -> set[str]:
    """Every topic the selected agents read or write, prefixed (changelogs are Faust's)."""
    names: set[str] = set()
    for spec in specs:
        names.add(spec.topic)
        names.add(spec.dlq_topic)
        names.update(topics.for_type(model.event_type).name for model in spec.emits)
    return {settings.topic(n) for n in names}


def store_options(settings: Settings) -> dict[str, Any]:
    """RocksDB options of a table's partition stores. Faust's defaults (a 2 GiB block cache and
    up to 3 x 64 MiB memtables per partition store) let a worker's memory grow with its state;
    these bound it."""
    return {
        "driver": "rocksdict",
        "write_buffer_size": settings.rocksdb_write_buffer_bytes,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_bytes,
    }


def bind_agent(
    app: VigilApp, spec: AgentSpec, settings: Settings, resources: Mapping[str, Any]
) -> Dispatcher:
    """Binds one agent to ``app`` (its own app: one consumer group per agent). Every topic of
    ``spec.topics`` is subscribed; each has its own scheduler and offset tracker, all sharing
    the dispatcher (which keeps one subject at a time across the topics)."""
    topic_names = [settings.topic(name) for name in spec.topics]
    source = app.topic(
        *topic_names,
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,  # tombstones reach the dispatcher and are dead-lettered, not dropped
    )
    table = FaustTable(
        app.Table(
            spec.table_name,
            partitions=settings.partitions,
            # raw keys: subjects are JSON strings (streams.core.tables.str_key) but the id index's are
            # not, and Faust's own recovery decodes changelog keys with this type
            key_type=bytes,
            value_type=bytes,  # values are written raw by streams.core.state
            options=store_options(settings),
        ),
        lambda: kafka_producer(app),
    )
    store = StateStore(table, spec.state)
    marks_table = FaustTable(
        app.Table(
            dlq_dedup.table_name(spec.name),
            partitions=settings.partitions,
            key_type=str,
            value_type=bytes,  # faust stores bytes values raw
            options=store_options(settings),
        ),
        lambda: kafka_producer(app),
    )
    effects = None
    if settings.processing_guarantee == "exactly_once":
        effects = TransactionalEffects(lambda: app.vigil_consumer.vigil_transactions, table, marks_table)
    marks = dlq_dedup.DeadLetterMarks(marks_table)
    dispatcher = Dispatcher(spec, settings, store, FaustPublisher(app), resources, effects, marks)
    gates = AgentGates(gates_for(app, spec, settings, resources))

    def on_gates(blocking: set[str], cleared: set[str]) -> None:
        for topic_name in topic_names:
            for reason in sorted(blocking):
                log.warning("agent %s: %s, pausing %s", spec.name, reason, topic_name)
                app.vigil_consumer.hold(topic_name, reason)
            for reason in sorted(cleared):
                log.info("agent %s: %s cleared, resuming %s", spec.name, reason, topic_name)
                app.vigil_consumer.release(topic_name, reason)

    event_age = metrics.EVENT_AGE_SECONDS.labels(spec.name)
    started = False

    async def process(records: list[ConsumedRecord]) -> None:
        nonlocal started
        now = time.time()
        for r in records:
            if r.timestamp_ms is not None:
                event_age.observe(max(0.0, now - r.timestamp_ms / 1000))
        await dispatcher.handle_many(records)
        if not started:
            started = True
            startup.mark(startup.FIRST_EVENT)

    intakes = {name: bind_topic(app, spec, settings, name, process, gates) for name in topic_names}
    schedulers = [scheduler for scheduler, _ in intakes.values()]
    metrics.IN_FLIGHT.labels(spec.name).set_function(lambda: sum(s.buffered for s in schedulers))
    export_backpressure(app, spec.name, topic_names)

    async def consume(stream: StreamT[Any]) -> None:
        """The Faust agent only subscribes the topics (their partitions, recovery, pauses);
        records arrive through the intakes."""
        stream.enable_acks = False
        for scheduler in schedulers:
            scheduler.start()
        watching = asyncio.ensure_future(gates.watch(on_gates)) if gates.gates else None
        sweeping = asyncio.ensure_future(sweep_ids(spec.name, topic_names[0], table, dispatcher, settings))
        for name, (_, intake) in intakes.items():
            app.direct_intakes.setdefault(name, []).append(intake)
        failed = [asyncio.ensure_future(s.wait_failed()) for s in schedulers]
        try:
            done, _ = await asyncio.wait(failed, return_when=asyncio.FIRST_COMPLETED)
            raise next(iter(done)).result()  # a bug, not a bad record: crash, nothing is committed past it
        finally:
            for waiting in failed:
                waiting.cancel()
            for name, (_, intake) in intakes.items():
                app.direct_intakes[name].remove(intake)
            sweeping.cancel()
            if watching is not None:
                watching.cancel()
            for scheduler in schedulers:
                await scheduler.stop()

    consume.__name__ = consume.__qualname__ = f"vigil_{spec.name}"
    app.agent(source, name=f"vigil.{spec.name}")(consume)
    return dispatcher


Intake = Callable[[TP, Sequence[Any]], None]


def bind_topic(
    app: VigilApp,
    spec: AgentSpec,
    settings: Settings,
    topic_name: str,
    process: Callable[[list[ConsumedRecord]], Awaitable[None]],
    gates: AgentGates,
) -> tuple[KeyOrderedScheduler[ConsumedRecord], Intake]:
    """One source topic of an agent: its scheduler (offsets, in-flight hold) and the intake the
    consumer hands its fetched records to."""

    def hold() -> None:
        log.info("agent %s: %d records buffered, pausing %s", spec.name, scheduler.buffered, topic_name)
        app.vigil_consumer.hold(topic_name, "in_flight")

    def release() -> None:
        log.info("agent %s: buffer drained to %d, resuming %s", spec.name, scheduler.buffered, topic_name)
        app.vigil_consumer.release(topic_name, "in_flight")

    scheduler: KeyOrderedScheduler[ConsumedRecord] = KeyOrderedScheduler(
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
    consumed = metrics.CONSUMED.labels(spec.name, topic_name)

    def intake(tp: TP, fetched: Sequence[Any]) -> None:
        """Records fetched for this topic, straight from the consumer's fetch
        (``VigilConsumer._getmany``): Faust's per-record stream path is not used."""
        submit = scheduler.submit
        taken = 0
        for r in fetched:
            record = ConsumedRecord(
                r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or ()), r.timestamp
            )
            if submit(tp, r.offset, r.key, record):
                taken += 1
        if taken:
            consumed.inc(taken)

    return scheduler, intake


#: index entries deleted per partition and sweep: bounds one sweep's work
SWEEP_BATCH = 5000


async def sweep_ids(
    agent: str, topic: str, table: FaustTable, dispatcher: Dispatcher, settings: Settings
) -> None:
    """Deletes handled-id index entries older than ``VIGIL_DEDUP_RETENTION`` in the partitions
    this worker holds, and journal entries recorded before it that no completed event deleted
    (``streams.core.state.expired_ids``), through the agent's effects (so in exactly_once mode
    the tombstones are part of the partition's transaction)."""
    interval = min(settings.dedup_retention / 4, 600.0)
    while True:
        await asyncio.sleep(interval)
        before = int((time.time() - settings.dedup_retention) * 1000)
        for partition in table.open_partitions():
            try:
                keys = list(
                    itertools.islice(
                        expired_ids(table.entries_from(partition, ID_PREFIX), before), SWEEP_BATCH
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a store closed by a revoke meanwhile: next sweep
                log.debug("agent %s: sweep of partition %d skipped: %r", agent, partition, exc)
                continue
            if not keys:
                continue
            anchor = ConsumedRecord(topic, partition, -1, None, None, [])
            try:
                await dispatcher.effects.apply(anchor, [], [(k, None) for k in keys])
            except RuntimeError as exc:  # exactly_once: the partition was revoked meanwhile
                log.debug("agent %s: sweep of partition %d skipped: %r", agent, partition, exc)
                continue
            log.info(
                "agent %s: forgot %d handled ids and journal entries older than %.0fs in partition %d",
                agent,
                len(keys),
                settings.dedup_retention,
                partition,
            )


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


def export_backpressure(app: VigilApp, agent: str, topics: Sequence[str]) -> None:
    """Paused partitions of the agent's topics per reason, read when Prometheus scrapes."""

    def paused(reason: str) -> float:
        consumer = app._consumer  # noqa: SLF001
        if not isinstance(consumer, VigilConsumer):
            return 0.0
        held = {t for t in topics if reason in consumer.held_reasons(t)}
        if not held:
            return 0.0
        try:
            return float(sum(1 for tp in consumer.assignment() if tp.topic in held))
        except Exception:  # noqa: BLE001 - not started yet: nothing is assigned
            return 0.0

    for reason in PAUSE_REASONS:
        metrics.PAUSED_PARTITIONS.labels(agent, reason).set_function(functools.partial(paused, reason))


def build_app(
    settings: Settings, specs: Sequence[AgentSpec], resources: Mapping[str, Any], *, group: str | None = None
) -> VigilApp:
    """One app holding ``specs`` (one consumer group, ``group`` or the app id)."""
    app = create_app(settings, group=group)
    for spec in specs:
        bind_agent(app, spec, settings, resources)
    return app


def build_apps(
    settings: Settings, specs: Sequence[AgentSpec], resources: Mapping[str, Any]
) -> list[VigilApp]:
    """One app per agent, each joining the agent's own consumer group (``streams.core.groups``)
    and sharing the app id (changelog names), the table directory and the event loop; Faust's
    web server runs on the first only."""
    apps = []
    for index, spec in enumerate(specs):
        app = create_app(settings, group=agent_group(settings, spec.name), web=index == 0)
        bind_agent(app, spec, settings, resources)
        apps.append(app)
    for app in apps:
        app.vigil_peers = apps
    return apps


async def check_partitions(settings: Settings, specs: Sequence[AgentSpec]) -> None:
    """Every topic an agent reads must have one partition count: its state is co-partitioned
    with its input (partition p of each topic is handled with partition p of its table)."""
    multi = [spec for spec in specs if len(spec.topics) > 1]
    if not multi:
        return
    names = sorted({settings.topic(t) for spec in multi for t in spec.topics})
    async with kafka.admin(settings) as client:
        described = await client.describe_topics(names)
    counts = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    for spec in multi:
        seen = {settings.topic(t): counts.get(settings.topic(t)) for t in spec.topics}
        if len(set(seen.values())) > 1:
            listed = ", ".join(f"{name}: {count}" for name, count in seen.items())
            raise ConfigError(
                f"agent {spec.name!r} reads topics with different partition counts ({listed}); "
                "its state is co-partitioned with its input, so they must have the same count"
            )


def run_worker(
    settings: Settings,
    runtime: Runtime,
    agent_names: Sequence[str] | None = None,
    exit_when_idle: float | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, or with ``exit_when_idle`` until the backlog is handled and
    committed and no record came for that many seconds (``streams.adapter.idle``; exit 0).
    Creates missing topics first, so a fresh broker just works. Each agent runs as its own
    Faust app and consumer group (``build_apps``) in this one process and event loop."""
    specs = runtime.select(agent_names)
    if not specs:
        raise ConfigError("no agents to run: import a module that declares agents (see agents/)")
    created = asyncio.run(kafka.create_topics(settings, topics_for(settings, specs)))
    if created:
        log.info("created topics: %s", ", ".join(created))
    asyncio.run(check_partitions(settings, specs))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    apps = build_apps(settings, specs, runtime.build_resources(settings))
    main, more = apps[0], apps[1:]
    for app in apps:
        install_bulk_restore(app)  # bulk changelog restore before Faust's recovery (streams.adapter.restore)
    if settings.processing_guarantee == "exactly_once":
        transactions.prepare_local_state(main.conf.tabledir)  # shared by the apps
    obs = observability.build(main, settings, specs, more)
    for app in apps:
        recovery.install(
            app, stall_after=settings.stall_timeout, interval=min(5.0, settings.stall_timeout / 3)
        )
        guard = recovery.install_guard(app, stall_after=settings.stall_timeout)
        obs.readiness.checks.append(guard.stalled_reason)
        app.downstream_lag_reader = obs.lag.downstream_lag
        app.in_worker = True  # Faust sets it on the worker's own app only (in_transaction reads it)
    # The endpoint starts first (probes answer 503 while the groups join), then every agent's app
    # at once: the siblings in the background, the main app as the worker's own.
    services: list[Service] = [obs]
    if more:
        services.append(SiblingApps(more, beacon=main.beacon))
    worker = VigilWorker(main, *services, loglevel=settings.log_level.upper(), quiet=True, loop=loop)
    worker.logging_config = logs.logging_config(settings.log_format, settings.log_level)  # VIGIL_LOG_FORMAT
    if exit_when_idle is not None:
        idle.install(main, worker, exit_when_idle, more)
    # The worker leaves these loggers at DEBUG: every record would build log records that the
    # handlers then drop (about 5% of a no-op agent's CPU, measured by ops/bench).
    level = logging.getLevelName(settings.log_level.upper())
    for name in ("faust", "mode"):
        logging.getLogger(name).setLevel(level)
    # Everything imported and built so far lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it (halved the median event age at 1,000/s).
    gc.freeze()
    worker.execute_from_commandline()
