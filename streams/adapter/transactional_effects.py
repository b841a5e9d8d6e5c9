"""Exactly-once writes: a batch's outputs, dead-letter mark and changelog records go into the
Kafka transaction of its input partition (``streams.adapter.transactions``), which later
commits together with that partition's offset. The ``Effects`` protocol and the at-least-once
path are in ``streams.core.effects``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP

from streams.adapter.tables import FaustTable
from streams.adapter.transactions import VigilTransactions
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.effects import Output
from streams.core.records import ConsumedRecord
from streams.core.tables import TableWrite


class TransactionalEffects:
    """Writes into the transaction of the record's input partition. The local RocksDB write
    comes last, after the broker accepted the changelog records; a failure part-way marks the
    transaction broken, which ends the process at the next commit (see
    ``streams.adapter.transactions``).

    The partition's lock is held only while the batch's records are queued into the
    transaction (no broker round trip), so a commit never splits a batch and other subjects of
    the partition keep running while this one waits for its acks. A dead letter holds it until
    its mark is written locally: the mark is a read-modify-write of the partition's window
    (rare, and it must not interleave with another).
    """

    def __init__(
        self, transactions: Callable[[], VigilTransactions], table: FaustTable, marks_table: FaustTable
    ) -> None:
        self.transactions = transactions  # resolved per call: the consumer is built after binding
        self.table = table
        self.marks_table = marks_table
        self.marks = DeadLetterMarks(marks_table)

    async def apply(
        self,
        record: ConsumedRecord,
        outputs: Sequence[Output],
        state: Sequence[TableWrite] = (),
        mark: bool = False,
    ) -> None:
        tp = TP(record.topic, record.partition)
        writes: list[tuple[FaustTable, Sequence[TableWrite]]] = []
        if state:
            writes.append((self.table, state))
        transactions = self.transactions()
        async with transactions.unit(tp) as txn:
            if mark:
                writes.append((self.marks_table, [self.marks.marked(record)]))
            pending = [
                await txn.send(o.topic, o.record.key, o.record.value, o.record.headers) for o in outputs
            ]
            changelog: list[asyncio.Future[Any]] = []
            for table, batch in writes:
                for key, value in batch:
                    changelog.append(
                        await txn.send(table.changelog_topic, key, value, [], partition=record.partition)
                    )
            if mark:  # the window is read above: keep the lock until it is written
                await self._settle(transactions, txn, pending, changelog, writes, record.partition)
                return
        await self._settle(transactions, txn, pending, changelog, writes, record.partition)

    @staticmethod
    async def _settle(
        transactions: VigilTransactions,
        txn: Any,
        pending: list[asyncio.Future[Any]],
        changelog: list[asyncio.Future[Any]],
        writes: list[tuple[FaustTable, Sequence[TableWrite]]],
        partition: int,
    ) -> None:
        try:
            await asyncio.gather(*pending, *changelog)
        except BaseException:
            transactions.break_transaction(txn)
            raise
        offsets = iter(f.result().offset for f in changelog)
        for table, batch in writes:
            table.apply_local(partition, batch)
            last = None
            for _ in batch:
                last = next(offsets)
            if last is not None:
                txn.persist_on_commit(table.store, TP(table.changelog_topic, partition), last)
