"""The bulk restore's batching on a real RocksDB (rocksdict, as Faust opens it), and its read
loop against a scripted reader; the broker path is tests/integration/test_restore.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from aiokafka import TopicPartition
from faust.types import TP

from streams.adapter import restore
from streams.adapter.restore import Target, targets_of

OFFSET_KEY = b"__faust\0offset__"
TOPIC = "app-agent-state-changelog"


@dataclass
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    handle = rocksdict.Rdict(str(tmp_path / "p0.db"), options=options)
    try:
        yield handle
    finally:
        handle.close()


def contents(db: Any) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k != OFFSET_KEY}


def target(db: Any, start: int = 0, end: int = 100) -> Target:
    return Target(TP(TOPIC, 0), "agent-state", db, OFFSET_KEY, start, end)


def test_a_batch_keeps_the_last_value_per_key_deletes_tombstones_and_persists_its_offset(db: Any) -> None:
    db.put(b'"old"', b"1")  # present locally before the restore, deleted by the changelog
    t = target(db, start=0, end=100)
    applied = t.apply(
        [
            Rec(0, b'"a"', b"a0"),
            Rec(1, b'"b"', b"b0"),
            Rec(2, b'"a"', b"a1"),
            Rec(3, b'"old"', None),
            Rec(4, b'"b"', None),
            Rec(5, b'"b"', b"b2"),  # re-created after its tombstone
            Rec(6, None, b"keyless"),  # not a table write: skipped, its offset still counts
        ]
    )
    assert applied == 6
    assert contents(db) == {b'"a"': b"a1", b'"b"': b"b2"}
    assert db.get(OFFSET_KEY) == b"6"
    assert (t.done, t.records, t.finished) == (6, 6, False)


def test_records_at_or_past_the_end_and_refetched_offsets_are_not_applied(db: Any) -> None:
    t = target(db, start=10, end=13)
    t.apply([Rec(10, b'"a"', b"a10"), Rec(11, b'"b"', b"b11")])
    # a re-fetch after a seek brings 11 again, then 12, then records of a later writer
    applied = t.apply([Rec(11, b'"b"', b"stale"), Rec(12, b'"c"', b"c12"), Rec(13, b'"a"', b"too-late")])
    assert applied == 1
    assert contents(db) == {b'"a"': b"a10", b'"b"': b"b11", b'"c"': b"c12"}
    assert db.get(OFFSET_KEY) == b"12"
    assert t.finished


def test_a_position_past_markers_accounts_for_them(db: Any) -> None:
    """exactly_once: the last records are a commit marker (or an aborted transaction and its
    marker) that no read_committed reader receives; reaching the end accounts for them."""
    t = target(db, start=0, end=10)
    t.apply([Rec(0, b'"a"', b"a0"), Rec(1, b'"a"', b"a1")])
    t.reached(12)  # position beyond end: capped at end - 1
    assert db.get(OFFSET_KEY) == b"9"
    assert t.finished and t.records == 2
    assert contents(db) == {b'"a"': b"a1"}


def test_targets_follow_fausts_offset_conventions(db: Any) -> None:
    class Store:
        table_name = "agent-state"
        offset_key = OFFSET_KEY

        def _db_for_partition(self, partition: int) -> Any:
            return db

    tps = [TP(TOPIC, p) for p in range(5)]
    offsets: dict[TP, int | None] = {tps[0]: -1, tps[1]: 41, tps[2]: 99, tps[3]: None, tps[4]: 5}
    # Faust's highwater is the end offset minus one; -1 is an empty partition
    highwaters: dict[TP, int | None] = {tps[0]: 9, tps[1]: 99, tps[2]: 99, tps[3]: 0, tps[4]: -1}
    got = targets_of(offsets, highwaters, {tp: Store() for tp in tps})
    assert [(t.tp.partition, t.start, t.end) for t in got] == [(0, 0, 10), (1, 42, 100), (3, 0, 1)]


class ScriptedReader:
    """Hands out the scripted fetches in order and reports positions as aiokafka does (next
    offset to return; past trailing markers once a fetch has skipped them)."""

    def __init__(self, fetches: list[dict[int, list[Rec]]], positions: list[dict[int, int]]) -> None:
        self.fetches = fetches
        self.positions = positions
        self.sought: dict[int, int] = {}
        self.calls = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp.partition] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[Rec]]:
        step = self.fetches[min(self.calls, len(self.fetches) - 1)]
        self.calls += 1
        return {TopicPartition(TOPIC, p): recs for p, recs in step.items()}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[min(self.calls, len(self.positions)) - 1][tp.partition]


async def test_restore_reads_each_partition_from_its_start_to_its_end(db: Any) -> None:
    t0 = target(db, start=0, end=3)
    t1 = Target(TP(TOPIC, 1), "agent-state", db, b"off1", 5, 8)
    reader = ScriptedReader(
        fetches=[
            {0: [Rec(0, b"k0", b"v0"), Rec(1, b"k1", b"v1")]},
            {0: [Rec(2, b"k0", None)], 1: [Rec(5, b"x", b"x5")]},
        ],
        # partition 1 ends with a commit marker at 6 and an aborted record at 7
        positions=[{0: 2, 1: 5}, {0: 3, 1: 8}],
    )
    await restore.restore(reader, [t0, t1], deadline=float("inf"))  # type: ignore[arg-type]
    assert reader.sought == {0: 0, 1: 5}
    assert reader.calls == 2
    assert (t0.finished, t1.finished) == (True, True)
    assert contents(db) == {b"k1": b"v1", b"x": b"x5", b"off1": b"7"}
    assert db.get(OFFSET_KEY) == b"2"


async def test_restore_stops_at_the_deadline_where_it_got_to(db: Any) -> None:
    t0 = target(db, start=0, end=1000)
    reader = ScriptedReader(
        fetches=[{0: [Rec(0, b"k", b"v0")]}, {0: [Rec(1, b"k", b"v1")]}], positions=[{0: 1}, {0: 2}]
    )
    ticks = iter([0.0, 0.5, 2.0])
    await restore.restore(reader, [t0], deadline=1.0, clock=lambda: next(ticks))  # type: ignore[arg-type]
    assert reader.calls == 2
    assert not t0.finished and t0.done == 1
    assert db.get(OFFSET_KEY) == b"1"


def test_only_plain_rocksdict_tables_are_restored_in_bulk(tmp_path: Path) -> None:
    import faust

    from streams.adapter.app import create_app
    from streams.core.settings import Settings

    app: Any = create_app(Settings(data_dir=tmp_path, _env_file=None))
    plain = app.Table("plain", partitions=2, key_type=str, options={"driver": "rocksdict"})
    windowed = app.Table("windowed", partitions=2, key_type=str, options={"driver": "rocksdict"}).tumbling(60)
    other_driver = app.Table("other", partitions=2, key_type=str, options={"driver": "python-rocksdb"})
    global_table = app.GlobalTable("global", partitions=2, key_type=str, options={"driver": "rocksdict"})
    assert restore.restorable(plain) is plain.data
    assert restore.restorable(windowed.table) is None
    assert restore.restorable(other_driver) is None
    assert restore.restorable(global_table) is None
    assert isinstance(plain, faust.Table)
    app.consumer._thread.thread_loop.close()  # never started: nothing else closes its loop


def test_install_replaces_the_recovery_before_first_use(tmp_path: Path) -> None:
    from streams.adapter.app import create_app
    from streams.core.settings import Settings

    app: Any = create_app(Settings(data_dir=tmp_path, _env_file=None))
    installed = restore.install(app, restore.RestoreSettings(bulk_restore=False))
    assert app.tables.recovery is installed and installed.bulk is False
    with pytest.raises(RuntimeError, match="before the table recovery"):
        restore.install(app)
