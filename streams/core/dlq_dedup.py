"""Dead letters once per origin record: the input offsets each partition already dead-lettered.

A redelivered record that was handled is a no-op because its id is in its entity's state. A
poison record (undecodable, unknown type, key != subject, or retries exhausted) may have no
entity and no id, so each input partition keeps its own window of dead-lettered offsets, one
table value per partition (key ``<topic>:<partition>``) written with the dead letter: in the
Kafka transaction of that partition in exactly_once mode, right after the DLQ's ack in
at_least_once (``streams.core.effects``). A record whose origin is in the window is skipped.

A window entry is (offset, record timestamp): a topic deleted and recreated restarts its
offsets, and the timestamp keeps an old mark from hiding a new record at the same offset. The
window keeps the ``MAX_MARKS`` highest offsets; only dead letters above a partition's committed
offset can be redelivered, so the bound only matters when more than that many are dead-lettered
in one partition between two offset commits. A value is at most 16 bytes per entry plus a tag,
packed so that a lookup (done for every record) is a copy and a binary search, not a parse.

No faust import here: the binding (a Faust table with raw values) is in ``streams.adapter.worker``.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left

from streams.core.records import ConsumedRecord
from streams.core.tables import MemoryTable, PartitionedTable, TableWrite, str_key

#: dead-lettered offsets remembered per input partition
MAX_MARKS = 1000
#: format tag of a window value; a value with another tag is refused, never misread
TAG = b"VDL1"
#: timestamp of a record that has none: matches any timestamp
NO_TIMESTAMP = -1


class DeadLetterWindow:
    """The dead-lettered offsets of one input partition, ascending, with their timestamps."""

    __slots__ = ("offsets", "timestamps")

    def __init__(self, offsets: array[int] | None = None, timestamps: array[int] | None = None) -> None:
        self.offsets: array[int] = offsets if offsets is not None else array("q")
        self.timestamps: array[int] = timestamps if timestamps is not None else array("q")

    def __len__(self) -> int:
        return len(self.offsets)

    def contains(self, offset: int, timestamp_ms: int | None) -> bool:
        i = bisect_left(self.offsets, offset)
        if i == len(self.offsets) or self.offsets[i] != offset:
            return False
        stored = self.timestamps[i]
        return timestamp_ms is None or stored in (NO_TIMESTAMP, timestamp_ms)

    def add(self, offset: int, timestamp_ms: int | None, limit: int = MAX_MARKS) -> None:
        """Remember ``offset`` (replacing an entry at the same offset); beyond ``limit``
        entries the lowest offsets go, being the ones an offset commit passed first."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        ts = NO_TIMESTAMP if timestamp_ms is None else timestamp_ms
        i = bisect_left(self.offsets, offset)
        if i < len(self.offsets) and self.offsets[i] == offset:
            self.timestamps[i] = ts
        else:
            self.offsets.insert(i, offset)
            self.timestamps.insert(i, ts)
        excess = len(self.offsets) - limit
        if excess > 0:
            del self.offsets[:excess]
            del self.timestamps[:excess]

    # -- the table value ---------------------------------------------------------------------
    def encode(self) -> bytes:
        offsets, timestamps = array("q", self.offsets), array("q", self.timestamps)
        if sys.byteorder == "big":  # the value is little-endian on every machine
            offsets.byteswap()
            timestamps.byteswap()
        return TAG + offsets.tobytes() + timestamps.tobytes()

    @classmethod
    def decode(cls, value: bytes | None) -> DeadLetterWindow:
        if value is None:
            return cls()
        body = memoryview(value)[len(TAG) :]
        if bytes(value[: len(TAG)]) != TAG or len(body) % 16:
            raise ValueError(f"not a dead-letter window value ({len(value)} bytes, tag {value[:4]!r})")
        half = len(body) // 2
        offsets, timestamps = array("q"), array("q")
        offsets.frombytes(body[:half])
        timestamps.frombytes(body[half:])
        if sys.byteorder == "big":
            offsets.byteswap()
            timestamps.byteswap()
        return cls(offsets, timestamps)


def window_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class DeadLetterMarks:
    """Reads and computes window values in a table keyed by ``window_key`` (bytes values).

    The table is co-partitioned with the source topic and written in the partition of the
    record being handled, so a partition's window moves with the partition on a rebalance and
    is rebuilt from its changelog like the entity state. The default table is in memory (tests,
    the in-memory harness)."""

    def __init__(self, table: PartitionedTable | None = None, limit: int = MAX_MARKS) -> None:
        self.table: PartitionedTable = table if table is not None else MemoryTable("dlq-marks")
        self._limit = limit
        self._keys: dict[tuple[str, int], bytes] = {}

    def key(self, topic: str, partition: int) -> bytes:
        """The stored key of a partition's window (computed once per partition: read per record)."""
        key = self._keys.get((topic, partition))
        if key is None:
            key = self._keys[(topic, partition)] = str_key(window_key(topic, partition))
        return key

    def window(self, topic: str, partition: int) -> DeadLetterWindow:
        return DeadLetterWindow.decode(self.table.get(partition, self.key(topic, partition)))

    def seen(self, record: ConsumedRecord) -> bool:
        """Whether ``record`` (its topic, partition, offset and timestamp) was dead-lettered."""
        value = self.table.get(record.partition, self.key(record.topic, record.partition))
        if value is None:
            return False
        return DeadLetterWindow.decode(value).contains(record.offset, record.timestamp_ms)

    def marked(self, record: ConsumedRecord) -> TableWrite:
        """The key and new value of the record's partition window with ``record`` added; the
        caller writes it with the dead letter (``streams.core.effects``), with no other write to
        the window in between."""
        window = self.window(record.topic, record.partition)
        window.add(record.offset, record.timestamp_ms, self._limit)
        return self.key(record.topic, record.partition), window.encode()


def origin_key(
    dlq_topic: str, origin_topic: str | None, origin_partition: int | None, origin_offset: int | None
) -> tuple[str, str, int, int] | None:
    """What identifies one dead-lettered origin record for the DLQ readers: the DLQ (one per
    agent, so two agents failing on the same record both show it) and the origin position.
    None when a header is missing (a record not written by Vigil): never collapsed."""
    if origin_topic is None or origin_partition is None or origin_offset is None:
        return None
    return dlq_topic, origin_topic, origin_partition, origin_offset


def table_name(agent: str) -> str:
    """The agent's window table. Never rename: the changelog topic carries this name."""
    return f"{agent}-dlq-marks"
