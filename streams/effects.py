"""How one record's writes (emitted events, dead letters, the entity's state) become durable.

The dispatcher decides *what* a record writes; an ``Effects`` decides *how*:

- ``AtLeastOnceEffects``: every output is acknowledged by the broker (acks=all) before the state
  and the dead-letter mark are written; Faust flushes the changelogs before the offset commit. A
  crash in between re-runs the record, and the handled id stored with the state (or the mark of
  a dead-lettered record) makes the re-run emit nothing new, unless the crash fell between the
  ack and the changelog send: then a dead letter can be written twice (the DLQ readers show
  each origin record once, ``streams.dlq_admin``).
- ``TransactionalEffects`` (``VIGIL_PROCESSING_GUARANTEE=exactly_once``): outputs and the
  changelog records go into the Kafka transaction of the record's input partition
  (``streams.transactions``), which later commits together with that partition's offset.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from faust.types import TP

from . import metrics
from .codec import EncodedRecord
from .dlq_dedup import DeadLetterMarks
from .records import ConsumedRecord
from .state import StateStore
from .transactions import VigilTransactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    record: EncodedRecord


@dataclass(frozen=True)
class StateWrite:
    subject: str
    body: dict[str, Any]


class Effects(Protocol):
    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: StateWrite | None,
        mark: bool = False,
    ) -> None:
        """Return once every write is durable (or, in a transaction, part of it). With
        ``mark``, the record's offset is added to its partition's dead-letter window
        (``streams.dlq_dedup``), read and written here in one step so that concurrent records
        of one partition never overwrite each other's marks."""


class Publisher(Protocol):
    async def publish(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        """Return once the broker acknowledged every record; raise otherwise."""


def by_topic(outputs: Sequence[Output]) -> dict[str, list[EncodedRecord]]:
    grouped: dict[str, list[EncodedRecord]] = {}
    for out in outputs:
        grouped.setdefault(out.topic, []).append(out.record)
    return grouped


class AtLeastOnceEffects:
    def __init__(self, agent: str, publisher: Publisher, store: StateStore, marks: DeadLetterMarks) -> None:
        self.agent = agent
        self.publisher = publisher
        self.store = store
        self.marks = marks

    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: StateWrite | None,
        mark: bool = False,
    ) -> None:
        for topic, records in by_topic(outputs).items():
            await self._publish_until_acked(topic, records)
        if state is not None:
            self.store.write(state.subject, state.body)
        if mark:
            self.marks.write(*self.marks.marked(record))  # no await between read and write

    async def _publish_until_acked(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        """Broker trouble blocks this subject instead of losing or skipping the record."""
        delay = 0.1
        while True:
            try:
                await self.publisher.publish(topic, records)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every produce failure is retried; the offset stays put
                metrics.PUBLISH_RETRIES.labels(self.agent).inc()
                log.warning(
                    "agent %s: publish to %s failed (%r); retrying in %.1fs", self.agent, topic, exc, delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)


class TransactionalEffects:
    """Writes into the transaction of the record's input partition. The local RocksDB write
    comes last, after the broker accepted the changelog record; a failure part-way marks the
    transaction broken, which ends the process at the next commit (see ``streams.transactions``).

    Faust's ``table[key] = value`` is not used here: it hands the changelog record to a
    background buffer that may send it after the transaction it belongs to has committed.
    """

    def __init__(self, transactions: Callable[[], VigilTransactions], table: Any, marks_table: Any) -> None:
        self.transactions = transactions  # resolved per call: the consumer is built after binding
        self.table = table
        self.marks_table = marks_table
        self.marks = DeadLetterMarks(marks_table)

    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: StateWrite | None,
        mark: bool = False,
    ) -> None:
        tp = TP(record.topic, record.partition)
        writes: list[tuple[Any, str, object]] = []
        if state is not None:
            writes.append((self.table, state.subject, state.body))
        async with self.transactions().unit(tp) as txn:
            if mark:  # under the partition's lock, which also covers the local write below
                writes.append((self.marks_table, *self.marks.marked(record)))
            pending = [
                await txn.send(o.topic, o.record.key, o.record.value, o.record.headers) for o in outputs
            ]
            local = []
            for table, k, v in writes:
                store = table.data
                key, value = store._encode_key(k), store._encode_value(v)
                changelog = TP(table.changelog_topic.get_topic_name(), record.partition)
                pending.append(await txn.send(changelog.topic, key, value, [], partition=record.partition))
                local.append((store, key, value, changelog))
            results = await asyncio.gather(*pending)
            for (store, key, value, changelog), result in zip(local, results[len(outputs) :], strict=True):
                store._set(key, value)
                txn.persist_on_commit(store, changelog, result.offset)
