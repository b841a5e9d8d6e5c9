"""The agent's state changelogs, read and written the way the bench needs them.

- ``topics_of``: every changelog topic of a Vigil app id (``<app_id>-<table>-changelog``),
  whatever tables the runtime keeps (state, dead-letter marks, a dedup index...);
- ``written``: records and key+value bytes written to them between two snapshots (P1c);
- ``seed``: entity states produced straight into a changelog in the stored format, copied from
  a record the runtime itself wrote (P4, P5): no handler runs, so a million states take
  seconds, and the format is whatever the runtime writes today.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from ops.bench import topics
from ops.bench.records import BenchError
from ops.bench.topics import Offsets, Record

Snapshot = dict[str, Offsets]


async def topics_of(bootstrap: str, app_id: str) -> list[str]:
    return [
        t
        for t in await topics.list_topics(bootstrap)
        if t.startswith(f"{app_id}-") and t.endswith("-changelog")
    ]


async def snapshot(bootstrap: str, names: Iterable[str]) -> Snapshot:
    return {t: await topics.end_offsets(bootstrap, t) for t in names}


async def settle(bootstrap: str, app_id: str, quiet: float = 1.5, limit: float = 60) -> Snapshot:
    """End offsets of the app's changelogs once they stood still for ``quiet`` seconds (the
    worker flushes its changelog writes on its own schedule, after the outputs)."""
    deadline = time.monotonic() + limit
    last = await snapshot(bootstrap, await topics_of(bootstrap, app_id))
    still_since = time.monotonic()
    while time.monotonic() - still_since < quiet:
        if time.monotonic() > deadline:
            raise BenchError(f"changelogs of {app_id} still growing after {limit}s")
        await asyncio.sleep(0.25)
        now = await snapshot(bootstrap, await topics_of(bootstrap, app_id))
        if now != last:
            last, still_since = now, time.monotonic()
    return last


@dataclass(frozen=True)
class Written:
    records: int
    bytes: int  # keys + values
    by_topic: dict[str, int]  # bytes per changelog topic


async def written(bootstrap: str, start: Snapshot, end: Snapshot) -> Written:
    """Records and bytes written to the changelogs in ``end`` since ``start``."""
    records = 0
    by_topic: dict[str, int] = {}
    for topic, stop in end.items():
        begin = start.get(topic, {})
        if topics.count_since(stop, begin) == 0:
            by_topic[topic] = 0
            continue
        got = [
            r for r in await topics.read_range(bootstrap, topic, begin) if r.offset < stop.get(r.partition, 0)
        ]
        records += len(got)
        by_topic[topic] = sum(len(r.key or b"") + len(r.value or b"") for r in got)
    return Written(records, sum(by_topic.values()), by_topic)


@dataclass(frozen=True)
class Template:
    """One entity's changelog record as the runtime wrote it, with how its key names it."""

    topic: str
    subject: str
    key: bytes
    value: bytes

    def key_of(self, subject: str) -> bytes:
        return self.key.replace(_forms(self.subject)[self._form], _forms(subject)[self._form])

    def value_of(self, subject: str) -> bytes:
        quoted = json.dumps(self.subject).encode()
        return self.value.replace(quoted, json.dumps(subject).encode())

    @property
    def _form(self) -> int:
        return next(i for i, f in enumerate(_forms(self.subject)) if f == self.key)


def _forms(subject: str) -> tuple[bytes, bytes]:
    return json.dumps(subject).encode(), subject.encode()  # faust's json key, a raw key


async def template(bootstrap: str, app_id: str, subject: str) -> list[Template]:
    """The first changelog record of ``subject`` in each of the app's changelogs keyed by
    subject (tables keyed otherwise, e.g. by event id, hold no such record)."""
    found: list[Template] = []
    for topic in await topics_of(bootstrap, app_id):
        records: list[Record] = await topics.read_range(bootstrap, topic)
        first = next((r for r in records if r.key in _forms(subject) and r.value is not None), None)
        if first is not None:
            assert first.key is not None and first.value is not None
            found.append(Template(topic, subject, first.key, first.value))
    if not found:
        raise BenchError(f"no changelog of {app_id} holds a record of {subject!r}")
    return found


def partition_of(subject: str, partitions: int) -> int:
    """The partition the producer's default partitioner gives a source record keyed by
    ``subject``: the table partition (and changelog partition) of that entity."""
    return (murmur2(subject.encode()) & 0x7FFFFFFF) % partitions


async def seed(
    producer: AIOKafkaProducer, topic: str, like: Template, subjects: Iterable[str], partitions: int
) -> int:
    """Produce ``like``'s record once per subject into ``topic`` at each subject's table
    partition, in producer batches (a million records in seconds). Returns the count."""
    pending: dict[int, deque[tuple[bytes, bytes]]] = {p: deque() for p in range(partitions)}
    count = 0
    sends = []

    async def flush(p: int) -> None:
        batch = producer.create_batch()
        rest = pending[p]
        while rest:
            key, value = rest[0]
            if batch.append(key=key, value=value, timestamp=None) is None:
                break
            rest.popleft()
        sends.append(await producer.send_batch(batch, topic, partition=p))

    for subject in subjects:
        p = partition_of(subject, partitions)
        pending[p].append((like.key_of(subject), like.value_of(subject)))
        count += 1
        if len(pending[p]) >= 2000:
            while pending[p]:
                await flush(p)
        if len(sends) > 200:
            await asyncio.gather(*sends)
            sends.clear()
    for p in range(partitions):
        while pending[p]:
            await flush(p)
    await asyncio.gather(*sends)
    return count
