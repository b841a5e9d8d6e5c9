"""Thin helpers over aiokafka for the CLI and setup: topic admin, one-shot produce, reading a
topic to its current end. The worker's consume path goes through Faust, not through here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.core.codec import EncodedRecord
from streams.core.errors import BrokerUnavailableError
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings

START_TIMEOUT = 15.0


def _unreachable(settings: Settings, exc: BaseException) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__})")


C = TypeVar("C")


@asynccontextmanager
async def _started(
    settings: Settings, client: C, start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]
) -> AsyncIterator[C]:
    """A started client, or one ``BrokerUnavailableError`` naming the bootstrap servers."""
    try:
        await asyncio.wait_for(start(), START_TIMEOUT)
    except (KafkaError, OSError, TimeoutError) as exc:
        await stop()
        raise _unreachable(settings, exc) from None
    try:
        yield client
    finally:
        await stop()


def admin(settings: Settings) -> AbstractAsyncContextManager[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    return _started(settings, client, client.start, client.close)


async def broker_ready(bootstrap: str) -> bool:
    """A metadata request and a group-coordinator lookup both answer: right after a cold start
    the first group join otherwise races the creation of ``__consumer_offsets``."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        await asyncio.wait_for(client.coordinator_lookup(CoordinationType.GROUP, "vigil-probe"), 10)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


async def create_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the (already prefixed) topics that do not exist yet; return those created."""
    wanted = sorted(set(names))
    async with admin(settings) as client:
        existing = set(await client.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            new = [
                NewTopic(n, partitions or settings.partitions, settings.replication_factor) for n in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await client.create_topics(new)
        return missing


async def list_topics(settings: Settings) -> list[str]:
    async with admin(settings) as client:
        return sorted(await client.list_topics())


def producer(settings: Settings, **kwargs: Any) -> AbstractAsyncContextManager[AIOKafkaProducer]:
    prod = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, **kwargs
    )
    return _started(settings, prod, prod.start, prod.stop)


async def produce(settings: Settings, topic: str, records: Sequence[EncodedRecord]) -> None:
    async with producer(settings) as prod:
        futures = [await prod.send(topic, value=r.value, key=r.key, headers=r.headers) for r in records]
        await asyncio.gather(*futures)


async def read_topics(
    settings: Settings,
    topics: Sequence[str],
    *,
    from_beginning: bool = True,
    follow: bool = False,
    timeout: float | None = None,  # noqa: ASYNC109 - bounds a follow loop, not one call
    max_records: int | None = None,
    committed_only: bool = False,
) -> AsyncIterator[ConsumedRecord]:
    """Records of ``topics`` without joining a group. Without ``follow``, stops at the end
    offsets seen at start; with it, waits for more until ``timeout`` or ``max_records``.
    ``committed_only`` reads like a downstream ``read_committed`` consumer: records of open
    or aborted transactions are not returned."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    async with _started(settings, consumer, consumer.start, consumer.stop):
        tps: list[TopicPartition] = []
        for t in topics:
            parts = consumer.partitions_for_topic(t)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001
                parts = consumer.partitions_for_topic(t)
            tps.extend(TopicPartition(t, p) for p in sorted(parts or ()))
        if not tps:
            return
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        end = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        seen = 0
        while True:
            if not follow and all([await _at_end(consumer, tp, end[tp]) for tp in tps]):
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            batch = await consumer.getmany(timeout_ms=int(min(remaining or 1.0, 1.0) * 1000), max_records=500)
            for tp, msgs in sorted(batch.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
                for m in msgs:
                    if not follow and m.offset >= end[tp]:
                        continue
                    yield ConsumedRecord(
                        m.topic, m.partition, m.offset, m.key, m.value, list(m.headers or ()), m.timestamp
                    )
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """High watermark per partition of ``topic`` (empty if the topic does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    async with _started(settings, consumer, consumer.start, consumer.stop):
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            return {}
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(parts)])
        return {tp.partition: offset for tp, offset in ends.items()}


async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    position: int = await consumer.position(tp)
    return position >= end
