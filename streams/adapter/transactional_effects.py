"""Exactly-once writes: one record's outputs, dead-letter mark and changelog records go into the
Kafka transaction of its input partition (``streams.adapter.transactions``), which later
commits together with that partition's offset. The ``Effects`` protocol and the at-least-once
path are in ``streams.core.effects``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from streams.adapter.transactions import VigilTransactions
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.effects import Output, StateWrite
from streams.core.records import ConsumedRecord


class TransactionalEffects:
    """Writes into the transaction of the record's input partition. The local RocksDB write
    comes last, after the broker accepted the changelog record; a failure part-way marks the
    transaction broken, which ends the process at the next commit (see ``streams.adapter.transactions``).

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
                key, value = store._encode_key(k), store._encode_value(v)  # noqa: SLF001
                changelog = TP(table.changelog_topic.get_topic_name(), record.partition)
                pending.append(await txn.send(changelog.topic, key, value, [], partition=record.partition))
                local.append((store, key, value, changelog))
            results = await asyncio.gather(*pending)
            for (store, key, value, changelog), result in zip(local, results[len(outputs) :], strict=True):
                store._set(key, value)  # noqa: SLF001
                txn.persist_on_commit(store, changelog, result.offset)
