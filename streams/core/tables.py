"""The tables agents keep: bytes keys and values, one store per input partition.

A table's partition is the partition of the input record that wrote it (its changelog is
co-partitioned with the source topic), so a read names the partition and costs one lookup in
one store, and a write is a batch applied to that partition at once: locally in one
``WriteBatch`` and to the changelog as consecutive records of one partition.

``MemoryTable`` is the in-memory implementation (unit tests, the in-process harness); the Kafka
one, over Faust's RocksDB stores, is ``streams.adapter.tables``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Protocol

#: one write of a batch: (key, value), value None deletes the key
TableWrite = tuple[bytes, bytes | None]


def str_key(key: str) -> bytes:
    """The stored form of a string key (JSON, as Faust's ``key_type=str`` tables store it)."""
    return json.dumps(key, ensure_ascii=False).encode()


def stamp(now_ms: int) -> bytes:
    """The 8-byte time that starts a handled-id index entry and a journal entry (swept by age)."""
    return now_ms.to_bytes(8, "little", signed=True)


class PartitionedTable(Protocol):
    name: str

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    async def write(self, partition: int, writes: Sequence[TableWrite]) -> None:
        """At-least-once write: applied locally before the first await (so a read-modify-write
        with no await before it cannot interleave with another), queued to the changelog
        (flushed before the next offset commit)."""

    async def write_now(self, partition: int, writes: Sequence[TableWrite]) -> None:
        """Applied locally and acknowledged by the broker's changelog before it returns, outside
        any transaction (journal steps, ``streams.core.journal``)."""


class MemoryTable:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.partitions: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.partitions.get(partition, {}).get(key)

    async def write(self, partition: int, writes: Sequence[TableWrite]) -> None:
        store = self.partitions.setdefault(partition, {})
        for key, value in writes:
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value

    async def write_now(self, partition: int, writes: Sequence[TableWrite]) -> None:
        await self.write(partition, writes)

    def keys(self, partition: int) -> Iterable[bytes]:
        return list(self.partitions.get(partition, {}))
