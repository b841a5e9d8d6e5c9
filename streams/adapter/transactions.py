"""Exactly-once processing: one Kafka transaction per input partition.

A batch's outputs and its changelog records are queued into the open transaction of the
partition it came from inside a per-partition lock (``unit``), so a commit never splits one
batch's writes; its acks are awaited after the lock is released. Each commit tick sends the partition's committable offset (its lowest
unfinished record, ``streams.core.offsets``) into the transaction and commits it. Records that
finished above that offset are committed too; after a crash they are redelivered and their
handled ids, committed in the same transaction as their outputs, make them no-ops. A
``read_committed`` reader therefore sees every output exactly once.

The transactional id is ``<group>-<topic>-<partition>``, the group being the agent's own
(``streams.core.groups``): the next owner of a partition fences the previous one (a zombie after
SIGKILL or a lost session) and aborts its open transaction.

Faust's own ``TransactionManager`` is replaced because, in faust-streaming 0.15.3, it (a)
picks the transaction of a send from the *output* topic's partition for the key, so emits keyed
by another entity land in another partition's transaction or fail; (b) commits everything sent
so far, including half of a record that is still running; (c) swallows commit errors. Its
``in_transaction`` mode is still used for the rest: read_committed fetching, last-stable-offset
highwaters during table recovery.

Local state: RocksDB is written as records finish, before their transaction commits. A process
that did not stop cleanly may hold writes of aborted transactions, so at start the tables are
rebuilt from the (read_committed) changelog unless the previous run left the clean-stop marker.
A transaction that cannot commit leaves the state unknown: the process exits with code 70 and,
on restart, rebuilds its tables and resumes from the committed offsets. Nothing is lost or
duplicated, at the price of a restart; run workers under a supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterable, Mapping, Set
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiokafka
from aiokafka.structs import RecordMetadata
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP

log = logging.getLogger(__name__)

EXIT_TRANSACTION_FAILED = 70


def group_of(app: Any) -> str:
    """The consumer group of ``app``: its agent's own (``VigilApp.vigil_group_id``), else the app id."""
    return str(getattr(app, "vigil_group_id", None) or app.conf.id)


def fatal(message: str, exc: BaseException | None = None) -> None:
    log.critical(
        "exactly-once: %s%s; exiting so the restart rebuilds state", message, f" ({exc!r})" if exc else ""
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_TRANSACTION_FAILED)


class PartitionTransaction:
    def __init__(self, tp: TP, producer: aiokafka.AIOKafkaProducer) -> None:
        self.tp = tp
        self.producer = producer
        self.lock = asyncio.Lock()
        #: writes since the last commit
        self.dirty = False
        #: a record's writes stopped part-way; the transaction must never commit
        self.broken = False
        self._persist: dict[TP, tuple[Any, int]] = {}

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record in the transaction; await the result for the broker's ack."""
        fut: asyncio.Future[RecordMetadata] = await self.producer.send(
            topic, value=value, key=key, partition=partition, headers=list(headers)
        )
        return fut

    def persist_on_commit(self, store: Any, changelog_tp: TP, offset: int) -> None:
        """Table recovery may start after ``offset`` only once it is committed."""
        self._persist[changelog_tp] = (store, offset)

    def committed(self) -> None:
        self.dirty = False
        for tp, (store, offset) in self._persist.items():
            store.set_persisted_offset(tp, offset)
        self._persist.clear()


class VigilTransactions(TransactionManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._txns: dict[TP, PartitionTransaction] = {}
        #: every transaction committed and none broken since the last commit
        self.clean = True

    # -- partitions ------------------------------------------------------------------------
    def _source_topics(self) -> set[str]:
        return {d.tracker.topic for d in getattr(self.app, "drainables", ())}

    def transactional_id(self, tp: TP) -> str:
        return f"{group_of(self.app)}-{tp.topic}-{tp.partition}"

    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        """The app drained and committed before this; nothing is left to flush."""

    async def on_rebalance(self, assigned: Set[TP], revoked: Set[TP], newly_assigned: Set[TP]) -> None:
        for tp in sorted(set(revoked) & self._txns.keys()):
            await self._close(tp)
        sources = self._source_topics()
        opening = sorted(tp for tp in assigned if tp.topic in sources and tp not in self._txns)
        await asyncio.gather(*(self._open(tp) for tp in opening))

    async def _open(self, tp: TP) -> None:
        settings = {
            **self.producer._settings_default(),  # type: ignore[attr-defined]  # noqa: SLF001
            **self.producer._settings_auth(),  # type: ignore[attr-defined]  # noqa: SLF001
            "acks": "all",
            "enable_idempotence": True,
            "transactional_id": self.transactional_id(tp),
        }
        producer = aiokafka.AIOKafkaProducer(**settings)
        await producer.start()  # InitProducerId: fences the previous owner, aborts its transaction
        await producer.begin_transaction()
        self._txns[tp] = PartitionTransaction(tp, producer)

    async def _close(self, tp: TP) -> None:
        txn = self._txns.pop(tp)
        async with txn.lock:
            if txn.dirty or txn.broken:
                fatal(f"{tp} was revoked with uncommitted writes")
            await txn.producer.stop()  # its transaction is empty; the next owner's init ends it

    async def on_stop(self) -> None:
        for tp in list(self._txns):
            txn = self._txns.pop(tp)
            await txn.producer.stop()

    # -- writing ---------------------------------------------------------------------------
    @asynccontextmanager
    async def unit(self, tp: TP) -> AsyncIterator[PartitionTransaction]:
        """One record's writes: never split by a commit; a failure part-way breaks the
        transaction."""
        txn = self._txns.get(tp)
        if txn is None:
            raise RuntimeError(f"no transaction is open for {tp}: the partition is not assigned here")
        async with txn.lock:
            try:
                yield txn
            except BaseException:
                txn.broken = True
                self.clean = False
                raise
            txn.dirty = True

    def break_transaction(self, txn: PartitionTransaction) -> None:
        """Writes queued in ``txn`` failed after its unit: it must never commit."""
        txn.broken = True
        self.clean = False

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "in exactly_once mode every write goes through streams.core.effects.TransactionalEffects"
        )

    # -- committing ------------------------------------------------------------------------
    def dirty_partitions(self) -> set[TP]:
        return {tp for tp, txn in self._txns.items() if txn.dirty or txn.broken}

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        group = group_of(self.app)
        for tp in sorted(set(offsets) | self.dirty_partitions()):
            txn = self._txns.get(tp)
            if txn is None:
                continue
            async with txn.lock:
                if txn.broken:
                    fatal(f"a record of {tp} stopped part-way through its writes")
                try:
                    if tp in offsets:
                        await txn.producer.send_offsets_to_transaction(
                            {ensure_aiokafka_TP(tp): offsets[tp]}, group
                        )
                    await txn.producer.commit_transaction()
                    if start_new_transaction:
                        await txn.producer.begin_transaction()
                except Exception as exc:  # noqa: BLE001 - any failure leaves the transaction's fate unknown
                    fatal(f"committing the transaction of {tp} failed", exc)
                txn.committed()
        self.clean = not self.dirty_partitions()
        return True


def clean_marker(tabledir: Path) -> Path:
    return tabledir.with_name(tabledir.name + ".clean-stop")


def prepare_local_state(tabledir: Path) -> None:
    """Keep RocksDB only if the previous run stopped cleanly; the marker is consumed here."""
    marker = clean_marker(tabledir)
    if marker.exists():
        marker.unlink()
        return
    if tabledir.exists():
        log.warning(
            "exactly-once: previous run did not stop cleanly; rebuilding %s from the changelog", tabledir
        )
        shutil.rmtree(tabledir)


def mark_clean_stop(tabledir: Path) -> None:
    clean_marker(tabledir).parent.mkdir(parents=True, exist_ok=True)
    clean_marker(tabledir).touch()
