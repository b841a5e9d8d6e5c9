"""Bulk restore: Vigil reads each active changelog partition itself before Faust's recovery does.

Faust 0.15.3 restores a table one record at a time: every changelog record becomes an ``Event``
(key and value JSON-decoded, though only the raw bytes are stored), goes through a queue, and
costs the recovery loop an ``asyncio.wait_for`` task plus a scan of every partition's remaining
count. Measured on 100,000 entities that is about 8,000 records/s against 650,000/s for a bare
aiokafka read of the same changelog, and Faust's own tuning knobs (buffer sizes) do not touch
that per-record work.

Here, once Faust has asked for the highwaters and start offsets of the partitions it is about to
recover (``VigilRecovery._build_offsets``), a plain ``AIOKafkaConsumer`` reads every partition
that is behind from that start to its highwater (``read_committed`` in exactly_once mode: an
aborted transaction's records never arrive, commit markers are skipped) and writes the raw key
and value bytes into the partition's RocksDB in one ``WriteBatch`` per fetched batch, a
tombstone deleting its key. Each batch carries Faust's persisted-offset key, so data and offset
change atomically: a crash or a rebalance mid-restore leaves a partition consistent at its last
batch, and the next start resumes there. Faust's recovery then finds nothing left to read.

Faust keeps what this does not handle: standby partitions, global and windowed tables, tables
with a changelog callback, stores other than its rocksdict one, and whatever is still unread at
the deadline (half of ``broker_request_timeout``: Faust's recovery gives up for good when this
step outlives that timeout). ``VIGIL_BULK_RESTORE=false`` leaves all of it to Faust.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiokafka
import rocksdict
from aiokafka import TopicPartition
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.observability.metrics import REGISTRY

log = logging.getLogger(__name__)

RESTORED_RECORDS = Counter(
    "vigil_restored_records_total",
    "Changelog records written into local state by the bulk restore",
    ["table"],
    registry=REGISTRY,
)
RESTORE_SECONDS = Counter(
    "vigil_restore_seconds_total",
    "Time spent in the bulk restore of changelog partitions",
    registry=REGISTRY,
)

#: a fetch may hold this much per partition (the default 1 MiB needs many round trips)
FETCH_BYTES_PER_PARTITION = 1024 * 1024


class RestoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    bulk_restore: bool = Field(
        True, description="Restore changelog partitions in RocksDB write batches before Faust's recovery"
    )


class Record(Protocol):
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Target:
    """One changelog partition to bring up to ``end`` (exclusive) from ``start``."""

    tp: TP
    table: str
    db: Any  # rocksdict.Rdict: the partition's database, opened by Faust
    offset_key: bytes
    start: int
    end: int
    #: offset of the last record applied, or accounted for (markers, aborted records)
    done: int = field(init=False)
    records: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.done = self.start - 1

    @property
    def finished(self) -> bool:
        return self.done >= self.end - 1

    def apply(self, records: Sequence[Record]) -> int:
        """Write the records below ``end`` in one batch with the new persisted offset; returns
        how many were applied. Later records of a key overwrite earlier ones in batch order."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        applied = 0
        last = self.done
        for r in records:
            if r.offset >= self.end:
                break
            if r.offset <= last:
                continue  # re-fetched after a seek: already in the store
            last = r.offset
            if r.key is None:
                continue  # not a table write; a table changelog record always has a key
            if r.value is None:
                batch.delete(r.key)
            else:
                batch.put(r.key, r.value)
            applied += 1
        if last > self.done:
            self._write(batch, last)
        self.records += applied
        return applied

    def reached(self, position: int) -> None:
        """The reader's position is ``position``: every offset below it (up to ``end``) has
        been received or skipped (commit markers, aborted records), so it is accounted for."""
        last = min(position, self.end) - 1
        if last > self.done:
            self._write(rocksdict.WriteBatch(raw_mode=True), last)

    def _write(self, batch: Any, last: int) -> None:
        batch.put(self.offset_key, str(last).encode())  # Faust's set_persisted_offset, atomically
        self.db.write(batch)
        self.done = last


def targets_of(
    offsets: Mapping[TP, int | None], highwaters: Mapping[TP, int | None], stores: Mapping[TP, Any]
) -> list[Target]:
    """The partitions behind their highwater, in Faust's conventions: ``offsets`` holds the last
    applied offset (-1: none), ``highwaters`` the end offset minus one."""
    out: list[Target] = []
    for tp, store in sorted(stores.items()):
        highwater = highwaters.get(tp)
        offset = offsets.get(tp)
        if highwater is None or highwater < 0:
            continue
        start = 0 if offset is None or offset < 0 else offset + 1
        end = highwater + 1
        if start < end:
            out.append(
                Target(
                    tp=tp,
                    table=store.table_name,
                    db=store._db_for_partition(tp.partition),  # noqa: SLF001 - the partition's open DB
                    offset_key=store.offset_key,
                    start=start,
                    end=end,
                )
            )
    return out


async def restore(
    reader: aiokafka.AIOKafkaConsumer,
    targets: Sequence[Target],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Read every target from ``start`` to ``end`` with ``reader`` (started, no group) and apply
    it; stops at ``deadline`` with the unfinished targets where they got to."""
    by_tp = {TopicPartition(t.tp.topic, t.tp.partition): t for t in targets}
    reader.assign(list(by_tp))
    for ktp, t in by_tp.items():
        reader.seek(ktp, t.start)
    remaining = set(by_tp)
    while remaining and clock() < deadline:
        fetched = await reader.getmany(*remaining, timeout_ms=500)
        for ktp, records in fetched.items():
            if records:
                by_tp[ktp].apply(records)
        for ktp in list(remaining):
            target = by_tp[ktp]
            if not target.finished:
                position = await reader.position(ktp)
                if position >= target.end:
                    target.reached(position)
            if target.finished:
                remaining.discard(ktp)
                # the restored partition leaves the memtable in the background: memory no
                # longer grows with the number of restored entities (P5)
                target.db.flush(wait=False)


def restorable(table: Any) -> RocksDBStore | None:
    """The table's store if the bulk restore can write it as Faust's recovery would."""
    store = getattr(table, "data", None)
    if not isinstance(store, RocksDBStore) or not store.use_rocksdict:
        return None
    if table.is_global or table.window is not None or table.info().get("on_changelog_event"):
        return None
    return store


class VigilRecovery(Recovery):
    """Faust's recovery service with the bulk restore between its start offsets and its seek."""

    def __init__(self, app: Any, tables: Any, *, bulk: bool = True, **kwargs: Any) -> None:
        super().__init__(app, tables, **kwargs)
        self.bulk = bulk
        #: what the last bulk restore did, for logs and tests
        self.last_restore: list[Target] = []

    async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if self.bulk and destination is self.active_offsets and tps:
            try:
                await self.bulk_restore(set(tps))
            except Exception:
                # what was written is consistent (data and offset in one batch); Faust reads the rest
                log.warning("bulk restore failed; Faust's recovery reads what is left", exc_info=True)

    async def bulk_restore(self, tps: Iterable[TP]) -> None:
        stores: dict[TP, Any] = {}
        for tp in tps:
            table = self.tp_to_table.get(tp)
            store = restorable(table) if table is not None else None
            if store is not None:
                stores[tp] = store
        targets = targets_of(self.active_offsets, self.active_highwaters, stores)
        self.last_restore = targets
        if not targets:
            return
        started = time.monotonic()
        reader = self.reader()
        try:
            await reader.start()
            await restore(reader, targets, started + self.app.conf.broker_request_timeout / 2)
        finally:
            await reader.stop()
            for t in targets:
                RESTORED_RECORDS.labels(t.table).inc(t.records)
            seconds = time.monotonic() - started
            RESTORE_SECONDS.inc(seconds)
        # Not on cancellation (a new rebalance): that one reads the persisted offsets afresh.
        for t in targets:
            self.active_offsets[t.tp] = max(t.done, t.start - 1)
        records = sum(t.records for t in targets)
        unfinished = [t.tp for t in targets if not t.finished]
        log.info(
            "bulk restore: %d records into %d changelog partitions in %.3fs (%.0f records/s)%s",
            records,
            len(targets),
            seconds,
            records / seconds if seconds > 0 else 0.0,
            f"; deadline reached, Faust's recovery reads the rest of {unfinished}" if unfinished else "",
        )

    def reader(self) -> aiokafka.AIOKafkaConsumer:
        app = self.app
        transport = cast(faust_aiokafka.Transport, app.transport)
        return aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            client_id=f"{app.conf.id}-restore",
            isolation_level="read_committed" if app.in_transaction else "read_uncommitted",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
            **faust_aiokafka.credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context),
        )


def install(app: Any, settings: RestoreSettings | None = None) -> VigilRecovery:
    """Give ``app``'s table manager a ``VigilRecovery`` (before the worker starts it)."""
    tables = app.tables
    if tables._recovery is not None:  # noqa: SLF001
        raise RuntimeError("install the bulk restore before the table recovery is first used")
    settings = settings or RestoreSettings()
    recovery = VigilRecovery(app, tables, bulk=settings.bulk_restore, beacon=tables.beacon, loop=tables.loop)
    tables._recovery = recovery  # noqa: SLF001 - TableManager.recovery builds one only when unset
    return recovery
