"""Binds agent specs to a Faust app and runs it as a worker process.

Faust acks a record when an agent raises and when its task is cancelled (the ack sits in a
``finally`` around the ``yield`` of ``Stream.__aiter__``), so Vigil turns Faust's acks off for
its streams and acks a record itself, only after ``Dispatcher.handle`` made its outcome
durable. Values are consumed as raw bytes so decoding errors stay inside Vigil's handling
(Faust acks first and raises after on a value it cannot deserialize).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.types import EventT, StreamT

from . import kafka, metrics, topics
from .agent import AgentSpec, Runtime
from .app import create_app
from .codec import EncodedRecord
from .dispatcher import Dispatcher
from .errors import ConfigError
from .records import ConsumedRecord
from .settings import Settings
from .state import StateStore

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


def topics_for(settings: Settings, specs: Iterable[AgentSpec]) -> set[str]:
    """Every topic the selected agents read or write, prefixed (changelogs are Faust's)."""
    names: set[str] = set()
    for spec in specs:
        names.add(spec.topic)
        names.add(spec.dlq_topic)
        names.update(topics.for_type(model.event_type).name for model in spec.emits)
    return {settings.topic(n) for n in names}


def bind_agent(
    app: faust.App, spec: AgentSpec, settings: Settings, resources: Mapping[str, Any]
) -> Dispatcher:
    source = app.topic(
        settings.topic(spec.topic),
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
    dispatcher = Dispatcher(
        spec,
        settings,
        StateStore(table, spec.state, settings.dedup_ids_per_entity),
        FaustPublisher(app),
        resources,
    )

    async def consume(stream: StreamT[Any]) -> None:
        stream.enable_acks = False
        async for event in stream.events():
            await dispatcher.handle(record_of(event))
            await stream.ack(event)

    consume.__name__ = consume.__qualname__ = f"vigil_{spec.name}"
    app.agent(source, name=f"vigil.{spec.name}")(consume)
    return dispatcher


def build_app(settings: Settings, specs: Sequence[AgentSpec], resources: Mapping[str, Any]) -> faust.App:
    app = create_app(settings)
    for spec in specs:
        bind_agent(app, spec, settings, resources)
    return app


def run_worker(settings: Settings, runtime: Runtime, agent_names: Sequence[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT. Creates missing topics first, so a fresh broker just works."""
    if settings.processing_guarantee == "exactly_once":
        raise ConfigError("VIGIL_PROCESSING_GUARANTEE=exactly_once is not implemented yet; use at_least_once")
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
    metrics.serve(settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, loop=loop)
    worker.execute_from_commandline()
