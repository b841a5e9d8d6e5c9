"""How one record's writes (emitted events, dead letters, the entity's state) become durable.

The dispatcher decides *what* a record writes; an ``Effects`` decides *how*:

- ``AtLeastOnceEffects``: every output is acknowledged by the broker (acks=all) before the
  table writes (the entity's state with its handled ids, a dead-letter mark) are applied; the
  changelog records they queue are flushed before the next offset commit. A crash in between
  re-runs the records, and their handled ids (or the mark of a dead-lettered record) make the
  re-run emit nothing new, unless the crash fell between the ack and the changelog send: then
  a dead letter can be written twice (the DLQ readers show each origin record once,
  ``streams.kafka.dlq_admin``).
- ``TransactionalEffects`` (``VIGIL_PROCESSING_GUARANTEE=exactly_once``, in
  ``streams.adapter.transactional_effects``: it writes Faust's stores): outputs and the
  changelog records go into the Kafka transaction of the record's input partition, which later
  commits together with that partition's offset.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from streams.core.codec import EncodedRecord
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.records import ConsumedRecord
from streams.core.tables import PartitionedTable, TableWrite
from streams.observability import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    record: EncodedRecord


class Effects(Protocol):
    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: Sequence[TableWrite] = (),
        mark: bool = False,
    ) -> None:
        """Return once every output is durable (or, in a transaction, part of it) and the
        ``state`` writes (to the agent's state table, in the record's partition) are applied. With
        ``mark``, the record's offset is added to its partition's dead-letter window
        (``streams.core.dlq_dedup``), read and written here in one step so that concurrent records
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
    def __init__(
        self, agent: str, publisher: Publisher, table: PartitionedTable, marks: DeadLetterMarks
    ) -> None:
        self.agent = agent
        self.publisher = publisher
        self.table = table
        self.marks = marks
        self._publish_retries = metrics.PUBLISH_RETRIES.labels(agent)

    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: Sequence[TableWrite] = (),
        mark: bool = False,
    ) -> None:
        if outputs:
            grouped = by_topic(outputs)
            if len(grouped) == 1:
                [(topic, records)] = grouped.items()
                await self._publish_until_acked(topic, records)
            else:
                await asyncio.gather(*(self._publish_until_acked(t, r) for t, r in grouped.items()))
        if state:
            await self.table.write(record.partition, state)
        if mark:
            # the table applies the write before its first await: no other mark comes between
            await self.marks.table.write(record.partition, [self.marks.marked(record)])

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
                self._publish_retries.inc()
                log.warning(
                    "agent %s: publish to %s failed (%r); retrying in %.1fs", self.agent, topic, exc, delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
