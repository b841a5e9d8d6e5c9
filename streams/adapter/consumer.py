"""Faust's consumer with the offset bookkeeping, fetch path and backpressure holds Vigil owns.

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

The commit itself and the highwaters run on the consumer thread (``streams.adapter.consumer_thread``);
the bounded drain is the app's (``streams.adapter.app``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Protocol

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.adapter.consumer_thread import VigilConsumerThread
from streams.adapter.transactions import VigilTransactions
from streams.core.offsets import OffsetTracker
from streams.observability import startup

log = logging.getLogger(__name__)

#: seconds one fetch may wait for records (Faust asks for 1 s)
FETCH_WAIT = 0.2


class Drainable(Protocol):
    tracker: OffsetTracker

    async def drain(self, tps: Collection[TP] | None, grace: float) -> int: ...


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
        return [d.tracker for d in getattr(app, "drainables", ())]

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
        startup.mark("recovery")  # first call: the first assignment's tables are recovered
        active = self._get_active_partitions()
        streams = {tp for tp in active if not self._is_changelog_tp(tp)}
        active.difference_update(streams)
        self._resume_after_clear.update(streams)
        await super().perform_seek()

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tpset = set(tps)
        if any(not self._is_changelog_tp(tp) for tp in tpset):  # tables pause changelogs at start
            startup.mark("group_join")  # first call: Faust pauses the partitions it was just assigned
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
        if reasons is not None and reason in reasons and getattr(self.app, "vigil_fail_releases", 0) > 0:
            self.app.vigil_fail_releases -= 1  # type: ignore[attr-defined]
            log.warning("failpoint: the release of hold %r of %s is lost", reason, topic)
            return
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
        generation = self.app.consumer_generation_id
        # The wait runs on a snapshot of the active partitions: a partition resumed meanwhile
        # (after recovery, ``resume_flow``) is fetched only by the next call. Faust waits up to
        # 1 s; a shorter wait brings the first record after a rebalance up to 0.8 s sooner.
        records = await super()._getmany(wanted, min(timeout, FETCH_WAIT))
        if records and getattr(self.app, "vigil_fail_changelog_fetches", 0) > 0:
            records = self._drop_changelog_fetch(records)
        if wanted is not None and records:
            await self._rewind_discarded(records)
        intakes = getattr(self.app, "direct_intakes", None)
        if records and intakes:
            records = self._deliver_direct(records, intakes, generation)
        return records

    def _deliver_direct(
        self, records: Mapping[TP, Any], intakes: Mapping[str, Any], generation: int
    ) -> dict[TP, Any]:
        """Hands the records of the agents' source topics to their intakes; the rest (table
        changelogs) goes on to Faust. Records fetched across a rebalance, or while Faust's
        flow is stopped, are dropped as Faust drops them: the seek to the committed offsets
        that follows every rebalance reads them again. Dropping them is also what keeps a
        stale batch from being tracked after its partition came back."""
        rest: dict[TP, Any] = {}
        deliver = self.flow_active and self.app.consumer_generation_id == generation
        live = self._get_active_partitions()
        for tp, batch in records.items():
            targets = intakes.get(tp.topic)
            if targets is None:
                rest[tp] = batch
            elif deliver and batch and tp in live:
                for intake in targets:
                    intake(tp, batch)
        return rest

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
        discarded = [
            (tp, batch)
            for tp, batch in records.items()
            if batch and tp not in live and tp not in self._buffered_partitions
        ]
        if not discarded:
            return  # every fetch on the hot path ends here
        assigned = self.assignment()
        for tp, batch in discarded:
            if tp not in assigned:
                continue  # revoked: its next owner reads from the committed offset
            first = min(r.offset for r in batch)
            log.info(
                "%s[%d] stopped fetching while %d records were in flight: rewinding to %d",
                *tp,
                len(batch),
                first,
            )
            await self.seek(TP(tp.topic, tp.partition), first)
