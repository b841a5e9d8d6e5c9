"""Topic plumbing for the bench: create, produce, and read records back by offset range."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.core.codec import EncodedRecord

Offsets: TypeAlias = dict[int, int]
Record: TypeAlias = ConsumerRecord[bytes, bytes]


#: output topics: the broker stamps each record when it appends it, so a rate read off the
#: timestamps is the writer's, whatever timestamp its client sets (Quix Streams copies the
#: input record's by default)
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


async def create(
    bootstrap: str, names: Iterable[str], partitions: int, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(n, partitions, 1, topic_configs=configs or {}) for n in names]
            )
    finally:
        await admin.close()


async def delete(bootstrap: str, names: Sequence[str]) -> None:
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


def new_producer(bootstrap: str, **kwargs: object) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kwargs)


async def send_all(producer: AIOKafkaProducer, topic: str, records: Sequence[EncodedRecord]) -> None:
    """Send and wait until the broker acknowledged every record."""
    chunk = 5000
    for i in range(0, len(records), chunk):
        futures = [
            await producer.send(topic, value=r.value, key=r.key, headers=r.headers)
            for r in records[i : i + chunk]
        ]
        await asyncio.gather(*futures)


def _consumer(bootstrap: str, **kwargs: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kwargs)


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]


async def end_offsets(bootstrap: str, topic: str) -> Offsets:
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def count_since(end: Offsets, start: Offsets) -> int:
    return sum(o - start.get(p, 0) for p, o in end.items())


async def assign_at(
    consumer: AIOKafkaConsumer, topic: str, start: Offsets | None = None
) -> dict[TopicPartition, int]:
    """Assign every partition of ``topic`` at ``start`` (default: the beginning) and return the
    end offsets. Positions are set in the same step as the assignment: a ``seek_to_beginning``
    after ``assign`` can lose to the reset the assignment itself starts (aiokafka 0.14)."""
    tps = await partitions(consumer, topic)
    first = await consumer.beginning_offsets(tps)
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(first[tp], (start or {}).get(tp.partition, 0)))
    return end


async def read_range(
    bootstrap: str, topic: str, start: Offsets | None = None, *, committed: bool = False
) -> list[Record]:
    """Every record of ``topic`` from ``start`` (default: the beginning) to its current end,
    in partition then offset order (``committed``: as a read_committed reader)."""
    consumer = _consumer(
        bootstrap,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        end = await assign_at(consumer, topic, start)
        out: dict[int, list[Record]] = {tp.partition: [] for tp in end}
        remaining = {tp for tp in end if await consumer.position(tp) < end[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, msgs in batch.items():
                out[tp.partition].extend(m for m in msgs if m.offset < end[tp])
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return [r for p in sorted(out) for r in out[p]]
    finally:
        await consumer.stop()
