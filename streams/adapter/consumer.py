"""Faust's consumer and app, with the offset bookkeeping and rebalance drain Vigil owns.

Faust gets three things wrong for concurrent handlers, each checked in its source (0.15.3):

- ``Consumer._new_offset`` commits past an unacked record at the head of a partition once
  later ones are acked (#606). Here the committable offset comes from the agents'
  ``OffsetTracker``: the lowest unfinished offset, never beyond.
- ``Consumer._commit_offsets`` records an offset as committed even when the commit failed
  (#316), so an idle partition never retries it. Here a failed commit leaves the old value and
  the next commit tick tries again.
- ``stream_wait_empty`` waits without a deadline for in-flight work on every rebalance, which
  outlives the rebalance timeout when handlers are slow. Here the app drains each agent's
  scheduler with a deadline, cancels what is left (uncommitted, so redelivered), then commits.

A fourth loses records under rebalance: after a rebalance Faust resumes the stream
partitions, awaits a seek to the committed offsets, then clears the stream queues
(``flow_control.resume``). Records fetched while that seek is awaited are queued, cleared, and
never read again, since the fetch position is already past them; the commit then passes them
once later records finish. Here the stream partitions stay paused from the seek until the
clear (``perform_seek``/``resume_flow``).

The driver's ``_commit`` crashes the worker on any error but "already rebalanced"; a broker
restart must not kill workers, so retriable Kafka errors only skip this commit tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Protocol, cast

import aiokafka
import faust
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.adapter.transactions import VigilTransactions, mark_clean_stop
from streams.core.offsets import OffsetTracker

log = logging.getLogger(__name__)


class Drainable(Protocol):
    tracker: OffsetTracker

    async def drain(self, tps: Collection[TP] | None, grace: float) -> int: ...


class VigilConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self._ensure_consumer()
        assignment = self.assignment()
        committable = {
            faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
            for tp, offset in offsets.items()
            if tp in assignment
        }
        if not committable:
            return False
        try:
            app = self.consumer.app
            if getattr(app, "vigil_fail_commits", 0) > 0:
                app.vigil_fail_commits -= 1  # type: ignore[attr-defined]
                raise CommitFailedError("failpoint: commit fails as if the group already rebalanced")
            await consumer.commit(committable)
        except CommitFailedError as exc:
            log.warning("offset commit failed (%s); it is retried on the next tick", exc)
            return False
        except KafkaError as exc:
            if not exc.retriable and not isinstance(exc, ConnectionError):
                raise
            log.warning("offset commit failed (%r); it is retried on the next tick", exc)
            return False
        return True

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """In exactly_once mode Faust asks for the last stable offset the consumer has seen in
        a fetch, which is -1 before the first one (recovery then fails its consistency check),
        and it ends recovery at the highwater - 1, which in a transactional changelog is a
        commit marker no consumer ever receives (recovery then stalls). Here the highwater of a
        changelog partition is one past its last committed record, asked of the broker."""
        if not self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        consumer = self._ensure_consumer()
        ends: dict[TP, int] = dict(await consumer.end_offsets(partitions))  # read_committed: LSO
        changelogs = set(self.app.tables.changelog_topics)
        tail = [tp for tp in partitions if tp.topic in changelogs and ends[tp] > 0]
        if tail:
            transport = cast(faust_aiokafka.Transport, self.transport)
            reader = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
                isolation_level="read_committed",
                enable_auto_commit=False,
                **faust_aiokafka.credentials_to_aiokafka_auth(
                    self.app.conf.broker_credentials, self.app.conf.ssl_context
                ),
            )
            await reader.start()
            try:
                for tp in tail:
                    ends[tp] = await last_record_offset(reader, tp, ends[tp]) + 1
            finally:
                await reader.stop()
        return ends


async def last_record_offset(reader: aiokafka.AIOKafkaConsumer, tp: TP, end: int) -> int:
    """Offset of the last record a read_committed reader gets below ``end`` (-1 if none), read
    from a tail window that doubles until it holds one (aborted blocks can be long)."""
    ktp = faust_aiokafka.ensure_aiokafka_TP(tp)
    reader.assign([ktp])
    begin = (await reader.beginning_offsets([ktp]))[ktp]
    window = 64
    while True:
        start = max(begin, end - window)
        reader.seek(ktp, start)
        last = -1
        empty_fetches = 0
        while await reader.position(ktp) < end:
            batch = await reader.getmany(ktp, timeout_ms=500)
            if not batch:
                empty_fetches += 1
                if empty_fetches > 20:  # never seen; Faust's own rule is the fallback
                    log.warning(
                        "could not read the tail of %s; assuming its last record is at %d", tp, end - 1
                    )
                    return end - 1
            last = max([last, *(m.offset for m in batch.get(ktp, ()) if m.offset < end)])
        if last >= 0 or start == begin:
            return last
        window *= 4


class VigilConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, set[str]] = {}
        self._resume_after_clear: set[TP] = set()
        if self.in_transaction:
            # Faust's manager is built above but never started (it starts as a dependency).
            self.transactions = VigilTransactions(
                self.transport, consumer=self, producer=self.app.producer, beacon=self.beacon, loop=self.loop
            )

    @property
    def vigil_transactions(self) -> VigilTransactions:
        assert isinstance(self.transactions, VigilTransactions), "exactly_once is not enabled"
        return self.transactions

    def _new_consumer_thread(self) -> VigilConsumerThread:
        return VigilConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- offsets -------------------------------------------------------------------------
    def _trackers(self) -> list[OffsetTracker]:
        app = self.app
        return [d.tracker for d in app.drainables] if isinstance(app, VigilApp) else []

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen: set[TP] = set()
        for tracker in self._trackers():
            for tracked in tracker.partitions():
                tp = TP(tracked.topic, tracked.partition)
                if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                    seen.add(tp)
                    yield tp

    def _new_offset(self, tp: TP) -> int | None:
        trackers = [t for t in self._trackers() if t.topic == tp.topic]
        if not trackers:
            return super()._new_offset(tp)
        # Faust's own ack lists are not used for these topics; keep them from growing.
        self._acked.pop(tp, None)
        self._acked_index.pop(tp, None)
        lowest: int | None = None
        for tracker in trackers:
            offset = tracker.committable(tp)
            if offset is None:
                return None  # an agent that has not seen this partition yet may need everything
            lowest = offset if lowest is None else min(lowest, offset)
        return lowest

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        offsets = super()._filter_committable_offsets(tps)
        if self.in_transaction:
            # A transaction holding finished records above an unchanged offset must still
            # commit, or the broker aborts it after transaction.timeout.ms.
            for tp in self.vigil_transactions.dirty_partitions():
                if tp not in offsets:
                    offset = self._new_offset(tp)
                    if offset is None:
                        offset = self._committed_offset.get(tp)
                    if offset is not None:
                        offsets[tp] = offset
        return offsets

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        did_commit = False
        try:
            did_commit = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        finally:
            if not did_commit:
                for tp, old in before.items():
                    if old is None:
                        self._committed_offset.pop(tp, None)
                    else:
                        self._committed_offset[tp] = old
        return did_commit

    # -- seek, then clear, then fetch ----------------------------------------------------
    async def perform_seek(self) -> None:
        """Faust calls this with the stream partitions already resumed and clears the stream
        queues only after it returns (``Recovery.on_recovery_completed``, ``_resume_streams``).
        Whatever is fetched in between would be dropped by that clear with the position past
        it, so the stream partitions stop fetching here and resume in ``resume_flow``, which
        Faust calls right after the clear."""
        active = self._get_active_partitions()
        streams = {tp for tp in active if not self._is_changelog_tp(tp)}
        active.difference_update(streams)
        self._resume_after_clear.update(streams)
        await super().perform_seek()

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tpset = set(tps)
        super().pause_partitions(tpset)
        self._resume_after_clear.difference_update(tpset)

    def resume_flow(self) -> None:
        deferred, self._resume_after_clear = self._resume_after_clear, set()
        app = self.app
        if deferred and getattr(app, "vigil_fail_resumes", 0) > 0:
            app.vigil_fail_resumes -= 1  # type: ignore[attr-defined]
            log.warning("failpoint: the resume of %s is lost", sorted(deferred))
            deferred = set()
        if deferred:
            assigned = self.assignment()
            self._get_active_partitions().update(
                tp for tp in deferred if tp in assigned and tp not in self._paused_partitions
            )
        super().resume_flow()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tracker in self._trackers():
            tracker.forget(revoked)

    def fetch_state(self, tp: TP) -> tuple[bool, bool]:
        """(fetching, paused) of ``tp`` as Faust's fetcher sees it."""
        return tp in self._get_active_partitions(), tp in self._paused_partitions

    async def refetch(self, tp: TP, offset: int) -> None:
        """Make ``tp`` fetchable again from ``offset`` (its committed offset): the liveness
        guard's cure for a partition that no path resumed. Faust's read offset moves with the
        seek, so the records are read again."""
        self._resume_after_clear.discard(tp)
        self.resume_partitions({tp})
        if not self.flow_active:
            self.resume_flow()
        await self.seek(tp, max(offset, 0))

    # -- backpressure --------------------------------------------------------------------
    def hold(self, topic: str, reason: str = "in_flight") -> None:
        """Stop fetching ``topic`` while any reason holds it, without touching Faust's own
        pause state (table recovery pauses and resumes partitions itself; mixing the two
        would resume too early)."""
        self._held.setdefault(topic, set()).add(reason)

    def release(self, topic: str, reason: str = "in_flight") -> None:
        reasons = self._held.get(topic)
        if reasons is not None:
            reasons.discard(reason)
            if not reasons:
                del self._held[topic]

    def held_reasons(self, topic: str) -> frozenset[str]:
        return frozenset(self._held.get(topic, ()))

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109 - faust's signature
        """Faust hands its live set of active partitions to aiokafka's ``fetched_records``,
        which runs on the consumer thread and waits up to ``timeout``, re-reading the set on
        every wake-up. Two things then drop records silently: aiokafka reads an *empty* set as
        "every partition" (so a set emptied meanwhile, e.g. by ``perform_seek`` on a worker
        whose only active partitions are stream partitions, drains all prefetched records),
        and Faust discards what comes back for a partition no longer active. Those records are
        consumed (the fetch position is past them) but never reach a stream: the partition
        stalls below its highwater. Here aiokafka gets a snapshot that is never empty, and a
        partition whose records Faust would discard is rewound to the first of them."""
        wanted: set[TP] | None = None
        if active_partitions is not None:
            wanted = {tp for tp in active_partitions if tp.topic not in self._held}
            if not wanted:
                await asyncio.sleep(min(timeout, 0.05))
                return {}
        records = await super()._getmany(wanted, timeout)
        if records and getattr(self.app, "vigil_fail_changelog_fetches", 0) > 0:
            records = self._drop_changelog_fetch(records)
        if wanted is not None and records:
            await self._rewind_discarded(records)
        return records

    def _drop_changelog_fetch(self, records: Mapping[TP, Any]) -> dict[TP, Any]:
        """Failpoint: changelog records fetched and then lost before they reach recovery
        (what the recovery watchdog exists for)."""
        kept = dict(records)
        dropped = [tp for tp in kept if self._is_changelog_tp(tp) and kept[tp]]
        if dropped:
            self.app.vigil_fail_changelog_fetches -= 1  # type: ignore[attr-defined]
            for tp in dropped:
                log.warning("failpoint: %d fetched records of %s are lost", len(kept.pop(tp)), tp)
        return kept

    async def _rewind_discarded(self, records: Mapping[TP, Any]) -> None:
        live = self._get_active_partitions()
        assigned = self.assignment()
        for tp, batch in records.items():
            if not batch or tp in live or tp in self._buffered_partitions or tp not in assigned:
                continue
            first = min(r.offset for r in batch)
            log.info(
                "%s[%d] stopped fetching while %d records were in flight: rewinding to %d",
                *tp,
                len(batch),
                first,
            )
            await self.seek(TP(tp.topic, tp.partition), first)


class VigilApp(faust.App):
    """A Faust app whose consumer is ``VigilConsumer`` and whose rebalance/stop drain is
    bounded by ``drain_timeout``."""

    drain_timeout: float = 10.0
    #: failpoint for tests: the next N offset commits fail like a commit during a rebalance
    vigil_fail_commits: int = 0
    #: failpoint for tests: the next N post-rebalance resumes of stream partitions are lost
    vigil_fail_resumes: int = 0
    #: failpoint for tests: the next N fetches holding changelog records lose them
    vigil_fail_changelog_fetches: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drainables: list[Drainable] = []
        #: source topics the liveness guard watches (``streams.adapter.recovery.WatchedSource``)
        self.watched_sources: list[Any] = []

    #: set by the lag monitor: the highest lag of the groups consuming a topic, or None
    downstream_lag_reader: Callable[[str], float | None] | None = None

    def downstream_lag(self, topic: str) -> float | None:
        reader = self.downstream_lag_reader
        return reader(topic) if reader is not None else None

    def add_drainable(self, scheduler: Drainable) -> None:
        """Its tracker decides the committable offsets of its topic; it is drained on
        rebalance and stop."""
        self.drainables.append(scheduler)

    @property
    def vigil_consumer(self) -> VigilConsumer:
        consumer = self.consumer
        assert isinstance(consumer, VigilConsumer)
        return consumer

    def _new_consumer(self) -> VigilConsumer:
        return VigilConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """Called by Faust when partitions are revoked and when the app stops, after fetching
        stopped: finish or cancel in-flight records, commit what finished, start afresh."""
        cancelled = await asyncio.gather(*(d.drain(None, self.drain_timeout) for d in self.drainables))
        if any(cancelled):
            log.warning(
                "drain: cancelled %d in-flight records after %.1fs", sum(cancelled), self.drain_timeout
            )
        # A commit tick already running may have read its offsets before the drain finished.
        await consumer.maybe_wait_for_commit_to_finish()
        await consumer.commit()
        for d in self.drainables:
            d.tracker.forget(d.tracker.partitions())

    async def _stop_consumer(self) -> None:
        await super()._stop_consumer()  # drains, commits, closes the tables
        if (
            self.in_transaction
            and self._consumer is not None
            and self.vigil_consumer.vigil_transactions.clean
        ):
            mark_clean_stop(self.conf.tabledir)
