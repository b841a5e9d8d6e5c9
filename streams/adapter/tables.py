"""Faust's RocksDB tables read and written by partition, in batches.

Faust's ``table[key] = value`` finds the partition of a write through the current stream event
(a context variable), serialises per key, hands the changelog record to a background buffer and
writes RocksDB one key at a time; a read of a key it has not seen yet probes every partition's
store. Vigil knows the partition of every read and write (that of the input record), so here a
read is one ``get`` on that partition's store and a write is one ``WriteBatch`` plus one
changelog record per key, sent straight to the producer (Faust flushes it before each offset
commit). Faust still owns the stores' lifecycle, the changelog topics and their recovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from faust.types import TP
from rocksdict import WriteBatch

from streams.core.tables import TableWrite


class FaustTable:
    def __init__(self, table: Any, producer: Callable[[], Any]) -> None:
        self.name: str = table.name
        self.faust_table = table
        self._producer = producer  # an aiokafka producer, resolved per write (it starts after binding)
        self._changelog: str | None = None

    @property
    def changelog_topic(self) -> str:
        if self._changelog is None:
            self._changelog = self.faust_table.changelog_topic.get_topic_name()
        return self._changelog

    @property
    def store(self) -> Any:
        return self.faust_table.data

    def _db(self, partition: int) -> Any:
        return self.store._db_for_partition(partition)  # noqa: SLF001

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._db(partition).get(key)
        return value

    def open_partitions(self) -> list[int]:
        """Partitions whose store is open here (those assigned to this worker)."""
        return list(self.store._dbs)  # noqa: SLF001

    def entries_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Key/value pairs in key order from ``start``."""
        items: Iterator[tuple[bytes, bytes]] = self._db(partition).items(from_key=start)
        return items

    def apply_local(self, partition: int, writes: Sequence[TableWrite]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db(partition).write(batch)

    async def write(self, partition: int, writes: Sequence[TableWrite]) -> None:
        pending = await self._apply_and_send(partition, writes)
        if pending:
            pending[-1].add_done_callback(partial(self._sent, TP(self.changelog_topic, partition)))

    async def write_now(self, partition: int, writes: Sequence[TableWrite]) -> None:
        """Through the app's plain producer, never a transaction's: under exactly_once a
        recorded step must outlive an aborted transaction. The persisted offset is left alone
        (records of an open transaction may sit below this one)."""
        await asyncio.gather(*await self._apply_and_send(partition, writes))

    async def _apply_and_send(self, partition: int, writes: Sequence[TableWrite]) -> list[Any]:
        """Applies ``writes`` locally before its first await (see ``PartitionedTable.write``),
        then queues one changelog record per write; the producer's delivery futures."""
        self.apply_local(partition, writes)
        producer = self._producer()
        topic = self.changelog_topic
        return [await producer.send(topic, value, key=key, partition=partition) for key, value in writes]

    def _sent(self, tp: TP, fut: Any) -> None:
        """Recovery may start after this offset: everything before it is in the store."""
        if fut.cancelled() or fut.exception() is not None:
            return  # the producer fails the commit that would pass it (Faust flushes first)
        if tp.partition in self.store._dbs:  # noqa: SLF001 - not reopened after a revoke
            self.store.set_persisted_offset(tp, fut.result().offset)
