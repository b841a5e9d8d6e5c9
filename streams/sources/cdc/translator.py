"""``vigil source debezium``: existing Debezium topics -> ``db.<schema>.<table>.<op>.v1`` events.

Run as a source rather than as an agent: an agent consumes one event type, while a Debezium
topic carries every op of a table, in Debezium's format rather than Vigil's envelope. The source
reads the input partitions without a consumer group (assign + seek); its checkpoint holds the
next offset of every input partition, staged behind the event that record produced, so it moves
only after the broker acknowledged it (a crash re-reads from there; ids are deterministic, see
``debezium``). Output keys are the primary key, so per-key order is the input's. Tombstones are
skipped (``vigil_source_events_total{outcome="skipped"}``); a record that is not a change event
goes to ``dlq.debezium_<name>`` with the usual DLQ headers and the source carries on.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka
from streams.core.dlq import dead_letter
from streams.core.errors import ConfigError
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.core.topics import dlq_topic
from streams.sources import metrics
from streams.sources.base import Source, SourceSettings

from .debezium import DebeziumError, translate


class DebeziumSource(Source):
    kind = "debezium"

    def __init__(
        self, name: str, inputs: tuple[str, ...], settings: Settings, options: SourceSettings | None = None
    ) -> None:
        super().__init__(name, settings, options)
        self.inputs = inputs
        self.agent_name = f"debezium_{name}"
        self._topics: set[str] = set()

    def check(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one --topic to translate")

    def topics(self) -> list[str]:
        return [dlq_topic(self.agent_name).name]

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = await self._assign(consumer)
            while not self.stopping.is_set():
                batch = await consumer.getmany(*tps, timeout_ms=500, max_records=2000)
                for records in batch.values():
                    for m in records:
                        await self._translate(
                            ConsumedRecord(
                                m.topic,
                                m.partition,
                                m.offset,
                                m.key,
                                m.value,
                                list(m.headers or ()),
                                m.timestamp,
                            )
                        )
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        tps: list[TopicPartition] = []
        for logical in self.inputs:
            topic = self.settings.topic(logical)
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - as kafka.read_topics
                parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise ConfigError(f"input topic {topic!r} does not exist")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        for tp in tps:
            offset = self.checkpoint.get(f"{tp.topic}:{tp.partition}")
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, int(offset))
        return tps

    async def _translate(self, rec: ConsumedRecord) -> None:
        position = {f"{rec.topic}:{rec.partition}": rec.offset + 1}
        try:
            event = translate(rec.key, rec.value, name=self.name)
        except DebeziumError as exc:
            dlq = dead_letter(rec, exc, agent=self.agent_name, attempts=1)
            future = await self.producer.send(
                self.settings.topic(dlq_topic(self.agent_name).name),
                key=dlq.key,
                value=dlq.value,
                headers=dlq.headers,
            )
            await asyncio.shield(future)
            metrics.SOURCE_EVENTS.labels(self.label, "dead_lettered").inc()
            self.stage(position)
            return
        if event is None:
            metrics.SOURCE_EVENTS.labels(self.label, "skipped").inc()
            self.stage(position)
            return
        topic = f"{event.type.rsplit('.', 2)[0]}.v1"
        if topic not in self._topics:
            await kafka.create_topics(self.settings, [self.settings.topic(topic)])
            self._topics.add(topic)
        await self.emit(topic, event, checkpoint=position)
